"""Code generation for the HuggingFace architectures of the analyzer tests, built tiny: every generated
module loads the converted weights strictly; those whose __call__ is traced end to end compute the
model's first output (logits / last hidden state) as torch does (fp32)."""

from __future__ import annotations

import functools
import json
import warnings

import mlx.core as mx
import numpy as np
import pytest
import torch
from codegen_helpers import TOL, load
from codegen_models import ARCHS, tiny_config, tiny_model

import torch2mlx
from torch2mlx.codegen.examples import transformers_inputs

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow

# The architectures whose whole __call__ traces and translates today (the rest get stubs with TODOs, see
# docs/codegen.md); a regression in tracing or translation shows here.
TRACED = {
    "bert",
    "roberta",
    "distilbert",
    "albert",
    "deberta",
    "deberta-v2",
    "electra",
    "mpnet",
    "camembert",
    "data2vec-text",
    "gpt2",
    "gpt_neo",
    "opt",
    "bloom",
    "qwen2",
    "gpt_neox",
    "codegen",
    "falcon",
    "t5",
    "bart",
    "pegasus",
    "vit",
    "clip",
    "swin",
    "convnext",
    "dinov2",
    "beit",
    "mobilenet_v2",
    "resnet",
    "whisper",
    "wav2vec2",
    "hubert",
    "xlnet",
    "llama",
    "mistral",
    "gemma2",
    "gemma3_text",
    "phi3",
    "qwen3",
}


@functools.lru_cache(maxsize=None)
def _generated(model_type):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tiny_model(model_type)
        return model, torch2mlx.generate(model)


def _first(out):
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out[0] if isinstance(out, (tuple, list)) else out


@pytest.mark.parametrize("model_type", list(ARCHS))
def test_generated_module_loads_converted_weights_strictly(tmp_path, model_type):
    model, result = _generated(model_type)
    assert result.mismatches == [] and result.coverage == 1.0
    mlx_model = load(result, model, tmp_path)  # load_weights(..., strict=True)
    assert (model_type in TRACED) == result.traced, [c.todo for c in result.classes if c.status != "traced"]
    if not result.traced:
        return
    # other sizes than the example inputs the trace ran on: batch 2, a longer sequence, padding
    inputs = _inputs(model, batch=2, length=11)
    with torch.no_grad():
        want = _first(model(**inputs)).numpy()
    got = np.array(_first(mlx_model(**{k: mx.array(v.numpy()) for k, v in inputs.items() if k != "use_cache"})))
    assert got.shape == want.shape
    assert float(np.max(np.abs(got - want))) <= TOL * max(1.0, float(np.abs(want).max()))


def _inputs(model, batch: int, length: int) -> dict:
    """The example inputs' kinds at other sizes: ids of ``length``, the last two positions of row 1 padded."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, v in transformers_inputs(model).items():
        if not isinstance(v, torch.Tensor):
            out[k] = v
            continue
        shape = [batch] + list(v.shape[1:])
        if k in ("input_ids", "attention_mask"):
            shape[1] = length
        if k.endswith("input_ids"):
            out[k] = torch.randint(1, 100, shape, generator=g)
        elif k == "attention_mask":
            out[k] = torch.ones(shape, dtype=v.dtype)
            out[k][1, -2:] = 0
        else:
            out[k] = torch.randn(shape, generator=g)
    return out


def test_most_architectures_trace_end_to_end():
    assert len(TRACED) >= 39 and TRACED <= set(ARCHS)


@pytest.mark.parametrize("model_type", ["llama", "bert"])
def test_a_config_directory_is_built_on_meta_and_generates_the_same_model(tmp_path, model_type):
    """``t2mlx codegen DIR``: the model comes from config.json on the meta device (no weights allocated);
    buffers transformers computes (rotary frequencies, position ids) are written out all the same."""
    from torch2mlx.cli import main

    config = tiny_config(model_type)
    config.to_json_file(str(tmp_path / "config.json"))
    out = tmp_path / "model_mlx.py"
    assert main(["codegen", str(tmp_path), "-o", str(out)]) == 0
    ns: dict = {}
    exec(out.read_text(), ns)
    name = json.loads((tmp_path / "config.json").read_text())["architectures"][0]
    assert "TODO" not in out.read_text()
    model = tiny_model(model_type)
    torch2mlx.convert(model, tmp_path / "w.safetensors")
    mlx_model = ns[name]()
    mlx_model.load_weights(list(torch2mlx.load_converted(tmp_path / "w.safetensors").items()), strict=True)
    mlx_model.eval()
    inputs = _inputs(model, batch=2, length=6)
    with torch.no_grad():
        want = _first(model(**inputs)).numpy()
    got = np.array(_first(mlx_model(**{k: mx.array(v.numpy()) for k, v in inputs.items() if k != "use_cache"})))
    assert float(np.max(np.abs(got - want))) <= TOL
