"""`t2mlx stream` output is what mlx-lm loads and what its own converter writes.

Tiny random Llama, Qwen2 (tied embeddings) and Mixtral (MoE) models built with
transformers in float32, saved as sharded safetensors and as sharded
``pytorch_model-*.bin`` (+ index). Oracles: transformers' logits for float
output; mlx-lm's ``convert`` of the same weights for quantized output (its
tensors, its config block, its logits).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import llm_checkpoints as L
import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.convert import convert as mlx_lm_convert
from mlx_lm.utils import load_model

from torch2mlx.cli import main as t2mlx
from torch2mlx.stream.sidecar_config import _hoist_rope

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow

FORMATS = ("safetensors", "bin")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Per model kind: the safetensors dir, the .bin dir and transformers' float32 logits."""
    root = tmp_path_factory.mktemp("llm")
    out = {}
    for kind in L.MODELS:
        model = L.build_model(kind)
        st = L.save_safetensors(model, root / f"{kind}-st")
        extra, tie = {}, None
        if kind == "llama":  # transformers < 4.31 pickled the RoPE cache with the weights
            extra = L.rotary_buffers(model, 2)
        if kind == "qwen2":  # a tied lm_head pickled as the embedding's storage
            tie = ("lm_head.weight", "model.embed_tokens.weight")
        # Mixtral's .bin in torch's legacy (pre-1.6) pickle format, the others as zip.
        b = L.save_bin(st, root / f"{kind}-bin", legacy=kind == "mixtral", extra=extra, tie=tie)
        out[kind] = SimpleNamespace(safetensors=st, bin=b, logits=L.torch_logits(model))
    return out


@pytest.fixture(scope="module")
def mlx_ref(tmp_path_factory):
    """mlx-lm's own conversion of a safetensors dir (cached per options)."""
    root = tmp_path_factory.mktemp("mlx_lm")
    cache = {}

    def get(src: Path, **kw) -> Path:
        key = (str(src), tuple(sorted(kw.items())))
        if key not in cache:
            dst = root / f"ref{len(cache)}"
            mlx_lm_convert(str(src), str(dst), quantize=True, **kw)
            # mlx-lm's converter copies transformers 5's rope_parameters without the top-level
            # rope_theta its own loader reads; give its output the same RoPE base as ours so the
            # comparison is about the weights.
            cfg = json.loads((dst / "config.json").read_text())
            _hoist_rope(cfg)
            (dst / "config.json").write_text(json.dumps(cfg))
            cache[key] = dst
        return cache[key]

    return get


def stream(src: Path, out: Path, *args: str) -> Path:
    assert t2mlx(["stream", str(src), str(out), "--quiet", *args]) == 0
    return out


def logits_of(model) -> np.ndarray:
    return np.array(model(mx.array(L.PROMPT)).astype(mx.float32))


def params(path: Path) -> dict[str, np.ndarray]:
    model, _ = load_model(path)
    return {
        k: np.array(v.view(mx.uint16) if v.dtype == mx.bfloat16 else v) for k, v in tree_flatten(model.parameters())
    }


def config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def index_names(path: Path) -> set[str]:
    return set(json.loads((path / "model.safetensors.index.json").read_text())["weight_map"])


def assert_same_params(ours: Path, ref: Path):
    a, b = params(ours), params(ref)
    assert a.keys() == b.keys()
    differ = [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or a[k].tobytes() != b[k].tobytes()]
    assert not differ, f"{len(differ)} parameters differ from mlx-lm's, e.g. {differ[:3]}"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", L.MODELS)
def test_float32_loads_in_mlx_lm_with_transformers_logits(ckpts, kind, fmt, tmp_path):
    src = getattr(ckpts[kind], fmt)
    out = stream(src, tmp_path / "out")
    model, tokenizer = mlx_lm.load(str(out))  # weights, config and tokenizer as shipped
    got = logits_of(model)
    assert got.shape == ckpts[kind].logits.shape
    assert np.abs(got - ckpts[kind].logits).max() <= 1e-4
    names = index_names(out)
    assert not any("inv_freq" in n for n in names)
    if kind == "qwen2":
        assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    from transformers import AutoTokenizer

    text = "w5 w9 w200"
    assert tokenizer.encode(text) == AutoTokenizer.from_pretrained(str(src)).encode(text)
    assert t2mlx(["verify", str(src), str(out)]) == 0


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", L.MODELS)
def test_q4_equals_mlx_lm_convert(ckpts, mlx_ref, kind, fmt, tmp_path):
    out = stream(getattr(ckpts[kind], fmt), tmp_path / "out", "--q-bits", "4")
    ref = mlx_ref(ckpts[kind].safetensors, q_bits=4, q_group_size=64)
    ours_model, _ = load_model(out)
    ref_model, _ = load_model(ref)
    assert np.abs(logits_of(ours_model) - logits_of(ref_model)).max() <= 1e-3
    assert_same_params(out, ref)
    for key in ("quantization", "quantization_config"):
        assert config(out)[key] == config(ref)[key] == {"group_size": 64, "bits": 4, "mode": "affine"}


@pytest.mark.parametrize("kind,fmt", [("llama", "bin"), ("qwen2", "safetensors"), ("mixtral", "bin")])
def test_mixed_recipe_equals_mlx_lm_convert(ckpts, mlx_ref, kind, fmt, tmp_path):
    out = stream(getattr(ckpts[kind], fmt), tmp_path / "out", "--q-recipe", "mixed_3_6")
    ref = mlx_ref(ckpts[kind].safetensors, quant_predicate="mixed_3_6", q_group_size=64)
    assert config(out)["quantization"] == config(ref)["quantization"]
    assert config(out)["quantization_config"] == config(ref)["quantization_config"]
    bits = {v["bits"] for k, v in config(out)["quantization"].items() if isinstance(v, dict)}
    assert bits == {3, 6}
    ours_model, _ = load_model(out)
    ref_model, _ = load_model(ref)
    assert np.abs(logits_of(ours_model) - logits_of(ref_model)).max() <= 1e-3
    assert_same_params(out, ref)


def test_quantized_tensors_are_mx_quantize_of_the_float_output(ckpts, mlx_ref, tmp_path):
    src = ckpts["llama"].bin
    flt = stream(src, tmp_path / "bf16", "--dtype", "bfloat16")
    q = stream(src, tmp_path / "q3", "--dtype", "bfloat16", "--q-bits", "3", "--q-group-size", "32")
    fw, qw = {}, {}
    for f in flt.glob("model*.safetensors"):
        fw.update(mx.load(str(f)))
    for f in q.glob("model*.safetensors"):
        qw.update(mx.load(str(f)))
    quantized = sorted(n[: -len(".scales")] for n in qw if n.endswith(".scales"))
    # Every Linear and the embedding (all 2-D weights here), nothing else.
    assert quantized == sorted(n[: -len(".weight")] for n, a in fw.items() if a.ndim == 2)
    bits_of = lambda a: np.array(a.view(mx.uint16) if a.dtype == mx.bfloat16 else a)  # noqa: E731
    for base in quantized:
        w = fw[base + ".weight"]
        assert w.dtype == mx.bfloat16 and mx.isfinite(w).all().item()
        ref = mx.quantize(w, group_size=32, bits=3)
        for got, want in zip((qw[base + ".weight"], qw[base + ".scales"], qw[base + ".biases"]), ref, strict=True):
            assert got.dtype == want.dtype and bits_of(got).tobytes() == bits_of(want).tobytes(), base
    for n, a in qw.items():
        if not n.endswith((".scales", ".biases")) and n[: -len(".weight")] not in quantized:
            assert bits_of(a).tobytes() == bits_of(fw[n]).tobytes(), n
    cfg = config(q)
    assert cfg["torch_dtype"] == cfg["dtype"] == "bfloat16"
    assert cfg["quantization"] == {"group_size": 32, "bits": 3, "mode": "affine"}
    # And the same tensors as mlx-lm's converter casting to bfloat16 itself.
    assert_same_params(q, mlx_ref(ckpts["llama"].safetensors, q_bits=3, q_group_size=32, dtype="bfloat16"))


def test_dtype_change_updates_config_and_loads(ckpts, tmp_path):
    src = ckpts["qwen2"].safetensors
    out = stream(src, tmp_path / "out", "--dtype", "float16")
    cfg, orig = config(out), config(src)
    assert orig["dtype"] == "float32" and cfg["dtype"] == cfg["torch_dtype"] == "float16"
    assert cfg["rope_theta"] == orig["rope_parameters"]["rope_theta"]
    assert {k: v for k, v in cfg.items() if k not in ("dtype", "torch_dtype", "rope_theta")} == {
        k: v for k, v in orig.items() if k not in ("dtype", "torch_dtype")
    }
    model, _ = mlx_lm.load(str(out))
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {mx.float16}
    ref = ckpts["qwen2"].logits
    assert np.abs(logits_of(model) - ref).max() < 0.05 * np.abs(ref).max()


def test_rope_base_hoisted_for_mlx_lm(ckpts, tmp_path):
    """transformers 5 keeps rope_theta in rope_parameters; mlx-lm reads it only at the top level."""
    src = ckpts["llama"].safetensors
    assert "rope_theta" not in config(src) and config(src)["rope_parameters"]["rope_theta"] == 50000.0
    out = stream(src, tmp_path / "out")
    assert config(out)["rope_theta"] == 50000.0
    model, _ = load_model(out)
    assert model.args.rope_theta == 50000.0


def test_sidecars_copied_and_config_kept(ckpts, tmp_path):
    src = ckpts["mixtral"].bin
    out = stream(src, tmp_path / "out", "--q-bits", "4")
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    cfg, orig = config(out), config(src)
    assert cfg["rope_theta"] == orig["rope_parameters"]["rope_theta"]  # hoisted for mlx-lm
    assert {k: v for k, v in cfg.items() if not k.startswith("quantization") and k != "rope_theta"} == orig
    assert not (out / "pytorch_model.bin.index.json").exists()


def test_cli_q4_then_mlx_lm_generate(ckpts, mlx_ref, tmp_path):
    """The walkthrough of docs/llm.md: `python -m torch2mlx stream --q-bits 4`, then mlx_lm.load + generate."""
    out = tmp_path / "llama-4bit"
    run = subprocess.run(
        [sys.executable, "-m", "torch2mlx", "stream", str(ckpts["llama"].bin), str(out), "--q-bits", "4"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "model.safetensors" in run.stdout or "shard" in run.stdout
    prompt = "w5 w9 w33 w100"
    texts = []
    for path in (out, mlx_ref(ckpts["llama"].safetensors, q_bits=4, q_group_size=64)):
        model, tokenizer = mlx_lm.load(str(path))
        texts.append(mlx_lm.generate(model, tokenizer, prompt=prompt, max_tokens=8))
    assert texts[0] == texts[1] and len(texts[0].split()) >= 4
