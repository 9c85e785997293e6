"""torch2mlx.core.quant against mlx.core.quantize / dequantize, bit for bit."""

import numpy as np
import pytest

pytest.importorskip("hypothesis")  # a dev dependency; a bare environment skips these property tests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from torch2mlx.core import quant
from torch2mlx.core.casts import FLOAT8_TABLES, f32_to_bf16

mx = pytest.importorskip("mlx.core")

BITS = (1, 2, 3, 4, 5, 6, 8)
GROUPS = (32, 64, 128)
FLOATS = ("float32", "float16", "bfloat16")


def as_dtype(x32: np.ndarray, dt: str) -> np.ndarray:
    """float32 values -> values/bits of ``dt`` (bfloat16 as uint16, rounded like MLX/torch)."""
    if dt == "bfloat16":
        return f32_to_bf16(x32)
    with np.errstate(over="ignore"):  # out-of-range rows become inf groups: still compared
        return x32.astype(np.float16 if dt == "float16" else np.float32)


def to_mx(x: np.ndarray, dt: str):
    return mx.array(x).view(mx.bfloat16) if dt == "bfloat16" else mx.array(x)


def from_mx(a, dt: str) -> np.ndarray:
    return np.array(a.view(mx.uint16)) if dt == "bfloat16" else np.array(a)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return (
        a.shape == b.shape
        and a.dtype.itemsize == b.dtype.itemsize
        and bool((a.view(np.uint8) == b.view(np.uint8)).all())
    )


def mlx_quantize(x: np.ndarray, dt: str, bits: int, gs: int):
    p, s, b = mx.quantize(to_mx(x, dt), group_size=gs, bits=bits)
    return np.array(p), from_mx(s, dt), from_mx(b, dt)


def assert_matches_mlx(x: np.ndarray, dt: str, bits: int, gs: int):
    ours = quant.quantize(x, bits, gs, dt)
    ref = mlx_quantize(x, dt, bits, gs)
    for what, a, b in zip(("packed", "scales", "biases"), ours, ref, strict=True):
        assert same_bits(a, b), f"{what} differ: {dt} bits={bits} group={gs}"
    deq = quant.dequantize(*ref, bits, gs, dt)
    mdeq = from_mx(mx.dequantize(mx.array(ref[0]), to_mx(ref[1], dt), to_mx(ref[2], dt), group_size=gs, bits=bits), dt)
    assert same_bits(deq, mdeq), f"dequantize differs: {dt} bits={bits} group={gs}"


def adversarial_rows(k: int, seed: int) -> np.ndarray:
    """float32 rows, each a kind of group that has tripped affine quantizers."""
    rng = np.random.default_rng(seed)
    g = lambda: rng.standard_normal(k).astype(np.float32)  # noqa: E731
    rows = [
        g() * 0.02,  # typical weights
        g() * np.exp(rng.uniform(-12, 12, k)).astype(np.float32),  # huge dynamic range
        np.full(k, 0.7, np.float32),  # constant groups
        np.full(k, -3.25, np.float32),
        np.zeros(k, np.float32),
        -np.abs(g()),  # negative only
        np.abs(g()) + 5,  # positive, far from 0
        rng.integers(-8, 8, k).astype(np.float32),  # ties: rint half to even
        g() * 1e-8,  # below eps / subnormal in f16
        np.where(rng.random(k) < 0.5, -0.0, 0.0).astype(np.float32),  # signed zeros
        np.linspace(-1, 1, k, dtype=np.float32) ** 3,
        np.where(rng.random(k) < 0.9, 1.0, -1000.0).astype(np.float32),  # one big outlier
    ]
    return np.stack(rows)


@pytest.mark.parametrize("dt", FLOATS)
@pytest.mark.parametrize("bits", BITS)
def test_matches_mlx_every_bits_group_dtype(dt, bits):
    for gs in GROUPS:
        x = as_dtype(adversarial_rows(512, seed=bits * 7 + gs), dt)
        assert_matches_mlx(x, dt, bits, gs)


@pytest.mark.parametrize("dt", FLOATS)
def test_inf_nan_groups_match_mlx(dt):
    x = np.random.default_rng(3).standard_normal((8, 128)).astype(np.float32)
    x[0, 3] = np.inf
    x[1, 40] = -np.inf
    x[2, 5], x[2, 9] = np.inf, -np.inf  # inf - inf: NaN scale
    x[3, :] = 3e38  # all-equal, |w| > 1e31: 0/0 codes
    x[4, ::2], x[4, 1::2] = 3e38, -3e38  # range overflows float32
    x[5, 3] = np.nan  # MLX's min/max loop skips NaN
    x[6, :32] = np.nan  # all-NaN group
    x[7, :32] = -0.0
    x[7, 7] = 0.0
    for bits in BITS:
        with np.errstate(over="ignore"):
            assert_matches_mlx(as_dtype(x, dt), dt, bits, 32)


def test_large_rows_cross_internal_steps():
    # More rows than one internal step, and one row longer than a step.
    rng = np.random.default_rng(5)
    for shape in [(97, 4096), (2, quant._STEP_ELEMENTS * 2)]:
        x = as_dtype(rng.standard_normal(shape).astype(np.float32), "bfloat16")
        assert_matches_mlx(x, "bfloat16", 4, 64)


@pytest.mark.parametrize("bits", (3, 4, 6))
def test_row_blocks_equal_whole(bits):
    rng = np.random.default_rng(bits)
    x = as_dtype(rng.standard_normal((6, 37, 256)).astype(np.float32), "bfloat16")
    whole = quant.quantize(x, bits, 64, "bfloat16")
    flat = x.reshape(-1, 256)
    cuts = [0, 1, 2, 17, 100, 101, 150, flat.shape[0]]
    parts = [quant.quantize(flat[a:b], bits, 64, "bfloat16") for a, b in zip(cuts, cuts[1:], strict=False)]
    for i in range(3):
        assert same_bits(np.concatenate([p[i] for p in parts]), whole[i].reshape(flat.shape[0], -1))
    assert whole[0].shape == (6, 37, 256 * bits // 32) and whole[1].shape == (6, 37, 4)


def test_empty_rows():
    packed, scales, biases = quant.quantize(np.zeros((2, 0, 128), np.float32), 3, 64)
    assert packed.shape == (2, 0, 12) and scales.shape == biases.shape == (2, 0, 2)
    assert quant.dequantize(packed, scales, biases, 3, 64).shape == (2, 0, 128)


@pytest.mark.parametrize(
    "src,out", [("bfloat16", "float16"), ("float32", "bfloat16"), ("float16", "float32"), ("float8_e4m3fn", "bfloat16")]
)
def test_out_dtype_casts_first(src, out):
    rng = np.random.default_rng(9)
    if src.startswith("float8"):
        x = rng.integers(0, 256, (16, 128), dtype=np.uint8)
        x[(x & 0x7F) == 0x7F] = 0  # no NaN codes
        x32 = FLOAT8_TABLES[src][x]
    else:
        x32 = rng.standard_normal((16, 128)).astype(np.float32)
        x = as_dtype(x32, src)
        x32 = from_mx(to_mx(x, src).astype(mx.float32), "float32")
    ours = quant.quantize(x, 4, 32, src, out)
    ref = mlx_quantize(from_mx(mx.array(x32).astype(getattr(mx, out)), out), out, 4, 32)
    assert all(same_bits(a, b) for a, b in zip(ours, ref, strict=True))


def test_pack_layout_is_lsb_first_bit_stream():
    codes = np.arange(32, dtype=np.uint8)[None] % 8
    words = quant.pack_codes(codes, 3)
    stream = sum(int(c) << (3 * i) for i, c in enumerate(codes[0]))
    assert [int(w) for w in words[0]] == [(stream >> (32 * j)) & 0xFFFFFFFF for j in range(3)]


@settings(max_examples=40, deadline=None)
@given(bits=st.sampled_from(BITS), data=st.data())
def test_pack_unpack_roundtrip(bits, data):
    n = data.draw(st.integers(1, 4)) * 32
    codes = data.draw(hnp.arrays(np.uint8, (3, n), elements=st.integers(0, (1 << bits) - 1)))
    packed = quant.pack_codes(codes, bits)
    assert packed.shape == (3, n * bits // 32)
    assert (quant.unpack_codes(packed, bits) == codes).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bits=st.sampled_from(BITS), gs=st.sampled_from(GROUPS), dt=st.sampled_from(FLOATS), data=st.data())
def test_property_matches_mlx(bits, gs, dt, data):
    # Any finite input of the dtype; bfloat16 comes from float32 (may round to inf).
    np_dt = np.float16 if dt == "float16" else np.float32
    elements = st.floats(width=16 if dt == "float16" else 32, allow_nan=False, allow_infinity=False)
    x = data.draw(hnp.arrays(np_dt, (2, gs), elements=elements))
    with np.errstate(over="ignore", invalid="ignore"):
        if dt == "bfloat16":
            x = f32_to_bf16(x)
        assert_matches_mlx(x, dt, bits, gs)


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(bits=7), "bits"),
        (dict(group_size=16), "group_size"),
        (dict(out_dtype="float64"), "quantizes only"),
    ],
)
def test_rejects_what_mlx_cannot_do(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        quant.quantize(np.zeros((2, 128), np.float32), **kwargs)


def test_src_dtype_from_numpy_or_named():
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float16)
    assert all(
        same_bits(a, b) for a, b in zip(quant.quantize(x, 4, 32), quant.quantize(x, 4, 32, "float16"), strict=True)
    )
    with pytest.raises(ValueError, match="raw bits"):
        quant.quantize(x.view(np.uint16), 4, 32)


def test_rejects_indivisible_last_axis():
    with pytest.raises(ValueError, match="divisible"):
        quant.quantize(np.zeros((2, 96), np.float32), 4, 64)


@pytest.mark.parametrize("dt", FLOATS)
def test_random_bits_match_mlx(dt):
    # Every bit pattern of the dtype: NaNs (quiet and signalling), infinities,
    # subnormals and values whose range overflows float32, all mixed in groups.
    rng = np.random.default_rng(11)
    if dt == "float32":
        x = rng.integers(0, 2**32, (64, 256), dtype=np.uint64).astype(np.uint32).view(np.float32)
    else:
        x = rng.integers(0, 2**16, (64, 256), dtype=np.uint64).astype(np.uint16)
        x = x.view(np.float16) if dt == "float16" else x
    for bits in BITS:
        for gs in GROUPS:
            assert_matches_mlx(x, dt, bits, gs)


def test_signalling_nan_is_skipped_like_mlx():
    # numpy's fmin/fmax reductions restart after a signalling NaN; MLX's min/max loop skips it.
    x = np.linspace(-3, 2, 64, dtype=np.float32).reshape(2, 32)
    x.view(np.uint32)[0, 20] = 0x7F800001  # signalling NaN after the group's minimum
    x.view(np.uint32)[1, 31] = 0xFF800002  # negative signalling NaN, last in its group
    for bits in BITS:
        assert_matches_mlx(x, "float32", bits, 32)
