"""`--q-mode mxfp4|nvfp4|mxfp8`: what mlx-lm's `convert --q-mode` writes, byte for byte, and what mlx-lm loads.

Oracle: mlx-lm's own converter of the same safetensors (its tensors, its config
block, its logits), and ``mx.quantize(..., mode=...)`` of our float output.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.utils import load_model
from test_mlx_lm import assert_same_params, ckpts, config, logits_of, mlx_ref, stream  # noqa: F401

from torch2mlx.cli import main as t2mlx
from torch2mlx.stream import Options

pytestmark = pytest.mark.slow

FP_MODES = {"mxfp4": (32, 4), "nvfp4": (16, 4), "mxfp8": (32, 8)}


@pytest.mark.parametrize("mode", FP_MODES)
@pytest.mark.parametrize("kind,fmt", [("llama", "bin"), ("mixtral", "safetensors")])
def test_q_mode_equals_mlx_lm_convert(ckpts, mlx_ref, kind, fmt, mode, tmp_path):  # noqa: F811
    out = stream(getattr(ckpts[kind], fmt), tmp_path / "out", "--q-mode", mode)
    ref = mlx_ref(ckpts[kind].safetensors, q_mode=mode)
    gs, bits = FP_MODES[mode]
    for key in ("quantization", "quantization_config"):
        assert config(out)[key] == config(ref)[key] == {"group_size": gs, "bits": bits, "mode": mode}
    assert_same_params(out, ref)
    ours, _ = load_model(out)
    theirs, _ = load_model(ref)
    assert np.abs(logits_of(ours) - logits_of(theirs)).max() <= 1e-3
    assert t2mlx(["verify", str(getattr(ckpts[kind], fmt)), str(out)]) == 0


@pytest.mark.parametrize("mode", FP_MODES)
def test_q_mode_tensors_are_mx_quantize_of_the_float_output(ckpts, mode, tmp_path):  # noqa: F811
    src = ckpts["llama"].safetensors
    flt = stream(src, tmp_path / "bf16", "--dtype", "bfloat16")
    q = stream(src, tmp_path / "q", "--dtype", "bfloat16", "--q-mode", mode)
    fw, qw = {}, {}
    for f in flt.glob("model*.safetensors"):
        fw.update(mx.load(str(f)))
    for f in q.glob("model*.safetensors"):
        qw.update(mx.load(str(f)))
    quantized = sorted(n[: -len(".scales")] for n in qw if n.endswith(".scales"))
    assert quantized == sorted(n[: -len(".weight")] for n, a in fw.items() if a.ndim == 2)
    assert not any(n.endswith(".biases") for n in qw)
    for base in quantized:
        p, s = mx.quantize(fw[base + ".weight"], mode=mode)
        assert qw[base + ".weight"].dtype == mx.uint32 and qw[base + ".scales"].dtype == mx.uint8
        assert np.array(qw[base + ".weight"]).tobytes() == np.array(p).tobytes(), base
        assert np.array(qw[base + ".scales"]).tobytes() == np.array(s).tobytes(), base


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(q_mode="mxfp4", q_recipe="mixed_3_6"), "q_recipe mixed_3_6 mixes affine bit widths"),
        (
            dict(q_mode="nvfp4", q_group_size=32),
            "nvfp4 quantizes 4-bit codes in groups of 16; q_group_size 32 does not fit",
        ),
        (dict(q_mode="mxfp8", q_bits=4), "mxfp8 quantizes 8-bit codes in groups of 32; q_bits 4 does not fit"),
        (dict(q_mode="affine"), "q_mode affine has no effect without q_bits"),
        (dict(q_mode="int4"), "q_mode must be one of affine, mxfp4, nvfp4, mxfp8"),
        (dict(q_mode="mxfp4", dequantize=True), "dequantize writes float weights"),
    ],
)
def test_q_mode_refusals(kwargs, msg):
    with pytest.raises(Exception, match=msg):
        Options.make(**kwargs)


def test_q_mode_options_round_trip():
    opts = Options.make(q_mode="nvfp4")
    assert (opts.q_bits, opts.q_group_size, opts.q_mode) == (4, 16, "nvfp4")
    assert Options.make(**opts.to_dict()) == opts
    assert Options.make(q_bits=4).q_mode == "affine"
    assert Options.make(q_bits=8, q_mode="affine", q_group_size=32).to_dict()["q_mode"] == "affine"


def test_cli_q_mode_with_recipe_is_one_line_error(ckpts, tmp_path, capsys):  # noqa: F811
    src, out = str(ckpts["llama"].safetensors), str(tmp_path / "o")
    rc = t2mlx(["stream", src, out, "--q-mode", "mxfp4", "--q-recipe", "mixed_3_6"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("error: ")
    assert "--q-recipe mixed_3_6" in err[0] and "--q-mode mxfp4" in err[0]
    assert not (tmp_path / "o").exists()
