"""torch2mlx.core.quant_fp (mxfp4, nvfp4, mxfp8) against mlx.core.quantize / dequantize, bit for bit."""

import numpy as np
import pytest

from torch2mlx.core import quant_fp

mx = pytest.importorskip("mlx.core")
from test_quant import FLOATS, adversarial_rows, as_dtype, from_mx, same_bits, to_mx  # noqa: E402

MODES = tuple(quant_fp.MODES)


def mlx_quantize(x: np.ndarray, dt: str, mode: str):
    p, s = mx.quantize(to_mx(x, dt), mode=mode)
    return np.array(p), np.array(s)


def assert_matches_mlx(x32: np.ndarray, dt: str, mode: str):
    x = as_dtype(x32, dt)
    ours = quant_fp.quantize(x, mode, dt)
    ref = mlx_quantize(x, dt, mode)
    assert same_bits(ours[1], ref[1]), f"scales differ: {dt} {mode}"
    assert same_bits(ours[0], ref[0]), f"codes differ: {dt} {mode}"
    for out in FLOATS:
        mdeq = mx.dequantize(mx.array(ref[0]), mx.array(ref[1]), mode=mode, dtype=getattr(mx, out))
        assert same_bits(quant_fp.dequantize(*ref, mode, out), from_mx(mdeq, out)), f"dequantize {mode} -> {out}"


def special_rows(k: int, seed: int) -> np.ndarray:
    """Ties of e2m1, values on e8m0/e4m3 edges, +-inf, NaN, subnormals, the largest floats."""
    rng = np.random.default_rng(seed)
    special = np.array(
        [0, -0.0, np.inf, -np.inf, np.nan, 1e-45, 3.4e38, -3.4e38, 0.25, -0.25, 0.75, 1.25, 5.0, 3.5, 448, 464, 6.0],
        np.float32,
    )
    rows = [
        (rng.integers(-24, 25, k) * 0.25).astype(np.float32),  # every e2m1 tie
        rng.standard_normal(k).astype(np.float32) * np.float32(2.0**-120),  # scale exponents that wrap
        rng.standard_normal(k).astype(np.float32) * np.float32(1e-40),
        rng.standard_normal(k).astype(np.float32) * np.float32(1e37),
        rng.choice(special, k),
    ]
    return np.stack(rows)


@pytest.mark.parametrize("dt", FLOATS)
@pytest.mark.parametrize("mode", MODES)
def test_matches_mlx_every_mode_dtype(dt, mode):
    for seed in range(3):
        assert_matches_mlx(np.concatenate([adversarial_rows(256, seed), special_rows(256, seed)]), dt, mode)


@pytest.mark.parametrize("dt", FLOATS)
@pytest.mark.parametrize("mode", MODES)
def test_random_bits_match_mlx(dt, mode):
    """Every bit pattern of the weight dtype, NaNs and infinities included."""
    rng = np.random.default_rng(7)
    if dt == "float32":
        x = rng.integers(0, 2**32, (64, 512), dtype=np.uint64).astype(np.uint32).view(np.float32)
        assert_matches_mlx(x, dt, mode)
    else:
        bits = rng.integers(0, 2**16, (64, 512), dtype=np.uint64).astype(np.uint16)
        x = bits if dt == "bfloat16" else bits.view(np.float16)
        ours = quant_fp.quantize(x, mode, dt)
        ref = mlx_quantize(x, dt, mode)
        assert same_bits(ours[0], ref[0]) and same_bits(ours[1], ref[1])


@pytest.mark.parametrize("mode", MODES)
def test_rows_in_blocks_and_leading_axes(mode):
    """Rows past the internal step and 3-D (stacked experts) tensors: one call equals MLX on the whole."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 700, 320)).astype(np.float32)
    ours = quant_fp.quantize(x, mode)
    ref = mlx_quantize(x, "float32", mode)
    assert ours[0].shape == ref[0].shape and same_bits(ours[0], ref[0]) and same_bits(ours[1], ref[1])


def test_out_dtype_casts_first():
    """float32 weights of a bfloat16 model: MLX quantizes the bfloat16 values."""
    x = np.random.default_rng(5).standard_normal((16, 128)).astype(np.float32)
    ours = quant_fp.quantize(x, "nvfp4", "float32", "bfloat16")
    ref = mlx_quantize(as_dtype(x, "bfloat16"), "bfloat16", "nvfp4")
    assert same_bits(ours[0], ref[0]) and same_bits(ours[1], ref[1])


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(mode="int4"), "mode must be one of"),
        (dict(mode="nvfp4", group_size=32), "groups of 16"),
        (dict(mode="mxfp8", bits=4), "8-bit codes"),
    ],
)
def test_check_mode_refuses_other_pairs(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        quant_fp.check_mode(**kwargs)


def test_rejects_indivisible_last_axis():
    with pytest.raises(ValueError, match="not divisible by group_size 32"):
        quant_fp.quantize(np.zeros((2, 48), np.float32), "mxfp4")
