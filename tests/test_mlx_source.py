"""A source that is already MLX (ours or mlx-lm's, quantized or not) is recognised up front: no torch, no
model, no 'rules not from the model' warnings; --q-bits on quantized weights is one error line saying what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import llm_checkpoints as L
import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from helpers import assert_one_error, run_main
from mlx_lm.convert import convert as mlx_lm_convert

# t2mlx in a fresh process that reports whether torch got imported
PROBE = textwrap.dedent("""\
    import sys
    from torch2mlx.cli import main
    rc = main(sys.argv[1:])
    print("TORCH IMPORTED" if "torch" in sys.modules else "torch not imported", file=sys.stderr)
    sys.exit(rc)
    """)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlxsrc")
    hf = root / "hf"
    L.build_model("llama").save_pretrained(str(hf))
    L.save_tokenizer(hf)
    mlx_lm_convert(str(hf), str(root / "mlx-lm-q4"), quantize=True, q_bits=4, q_group_size=64)
    mlx_lm_convert(str(hf), str(root / "mlx-lm-f32"), quantize=False)
    assert run_main("stream", hf, root / "ours-q4", "--q-bits", "4", "--q-group-size", "32").returncode == 0
    assert run_main("stream", hf, root / "ours-f32").returncode == 0
    return root


def t2mlx_probe(*args, cwd=None):
    env = dict(os.environ)
    env.pop("T2MLX_DEBUG", None)
    env["T2MLX_NO_CACHE"] = "1"  # a cached analysis would hide a torch import on a first run
    return subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def tensors(d) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            out.update(
                {
                    k: np.array(v.view(mx.uint16) if v.dtype == mx.bfloat16 else v)
                    for k, v in mx.load(os.path.join(d, f)).items()
                }
            )
    return out


@pytest.mark.parametrize(
    "name, what",
    [
        ("mlx-lm-q4", "already MLX (quantized: 4-bit, group 64)"),
        ("mlx-lm-f32", "already MLX (not quantized)"),
        ("ours-q4", "already MLX (quantized: 4-bit, group 32)"),
        ("ours-f32", "already MLX (not quantized)"),
    ],
)
@pytest.mark.slow
def test_mlx_source_is_copied_without_torch_or_a_model(sources, tmp_path, name, what):
    src = sources / name
    proc = t2mlx_probe("stream", src, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "torch not imported" in proc.stderr
    assert f"note: source is {what}: names and layouts kept, no model analysis" in proc.stdout
    assert "rules not from the model" not in proc.stdout and "warning:" not in proc.stdout, proc.stdout
    got, exp = tensors(tmp_path / "out"), tensors(src)
    assert got.keys() == exp.keys()
    assert all(got[k].dtype == exp[k].dtype and got[k].tobytes() == exp[k].tobytes() for k in exp)
    mlx_lm.load(str(tmp_path / "out"))


@pytest.mark.parametrize("name, what", [("mlx-lm-q4", "4-bit, group 64"), ("ours-q4", "4-bit, group 32")])
@pytest.mark.parametrize("opt", [("--q-bits", "4"), ("--q-recipe", "mixed_3_6")])
@pytest.mark.slow
def test_quantizing_a_quantized_mlx_source_is_one_error(sources, tmp_path, name, what, opt):
    proc = t2mlx_probe("stream", sources / name, tmp_path / "out", *opt)
    assert "torch not imported" in proc.stderr
    proc.stderr = proc.stderr.replace("torch not imported", "").strip() + "\n"
    assert_one_error(proc, f"already MLX (quantized: {what})", "OUT --dequantize`")
    assert not (tmp_path / "out").exists()


def test_quantizing_a_float_mlx_source_matches_mlx_lm(sources, tmp_path):
    """Unquantized MLX weights quantize as mlx-lm quantizes the original model."""
    proc = t2mlx_probe("stream", sources / "mlx-lm-f32", tmp_path / "out", "--q-bits", "4")
    assert proc.returncode == 0 and "torch not imported" in proc.stderr, proc.stderr
    got, exp = tensors(tmp_path / "out"), tensors(sources / "mlx-lm-q4")
    assert got.keys() == exp.keys()
    assert all(got[k].tobytes() == exp[k].tobytes() for k in exp)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["quantization"]["bits"] == 4


def test_library_api_detects_mlx_too(sources, tmp_path):
    import torch2mlx

    res = torch2mlx.stream.convert(sources / "mlx-lm-q4", tmp_path / "out")
    assert (
        "source is already MLX (quantized: 4-bit, group 64): names and layouts kept, no model analysis"
        in res.plan.notes
    )
    with pytest.raises(torch2mlx.Torch2MLXError, match="OUT --dequantize"):
        torch2mlx.convert(sources / "ours-q4", tmp_path / "o2", q_bits=4)


def test_copy_of_an_mlx_source_goes_back_to_torch(sources, tmp_path):
    """The manifest of an MLX -> MLX copy maps tensors to themselves; --to torch must not take its shapes for
    torch's (it refused lm_head.weight: [256, 64] vs [256, 8]) and gives what the original's way back gives."""
    copy = tmp_path / "copy"
    assert run_main("stream", sources / "mlx-lm-q4", copy).returncode == 0
    proc = run_main("stream", copy, tmp_path / "back", "--to", "torch")
    assert proc.returncode == 0, proc.stderr
    assert "the forward run read a source that was already MLX; its records are not used" in proc.stdout
    assert run_main("stream", sources / "mlx-lm-q4", tmp_path / "ref", "--to", "torch").returncode == 0
    got, exp = tensors(tmp_path / "back"), tensors(tmp_path / "ref")
    assert got.keys() == exp.keys() and all(got[k].tobytes() == exp[k].tobytes() for k in exp)
    assert run_main("verify", copy, tmp_path / "back").returncode == 0
