"""torch2mlx.core.fp8 against a torch reference: (w.float() * scale_expanded).to(bfloat16)."""

import numpy as np
import pytest

pytest.importorskip("hypothesis")  # a dev dependency; a bare environment skips these property tests
from hypothesis import given, settings
from hypothesis import strategies as st

from torch2mlx.core import fp8

torch = pytest.importorskip("torch")

TORCH_FP8 = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}


def random_fp8(shape, dtype, seed, *, nan=False):
    """Raw float8 bits covering the format (NaN codes only when asked)."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    if not nan:
        w = bits.view(TORCH_FP8[dtype]).float()
        bits[~torch.isfinite(w)] = 0x38
    return bits


def torch_reference(bits, dtype, scale, blocks, out=torch.bfloat16):
    """The definition: expand each scale over its block, multiply in float32, round once."""
    w = bits.view(TORCH_FP8[dtype]).to(torch.float32)
    s = scale.to(torch.float32)
    s = s.reshape((1,) * (w.dim() - s.dim()) + tuple(s.shape))
    for ax, b in enumerate(blocks):
        if s.shape[ax] != 1:
            s = s.repeat_interleave(b, dim=ax).narrow(ax, 0, w.shape[ax])
    return (w * s).to(out)


def bits_of(t):
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


CASES = [  # (weight shape, scale shape, dtype)
    ((300, 200), (3, 2), "float8_e4m3fn"),  # 128x128 blocks, partial edges
    ((256, 384), (2, 3), "float8_e4m3fn"),  # exact blocks
    ((4, 200, 130), (4, 2, 2), "float8_e4m3fn"),  # stacked experts
    ((64, 96), (), "float8_e4m3fn"),  # per-tensor scalar
    ((64, 96), (1,), "float8_e5m2"),  # per-tensor, shape [1]
    ((64, 96), (64, 1), "float8_e5m2"),  # per-row (compressed-tensors "channel")
    ((130, 260), (2, 3), "float8_e5m2"),
]


@pytest.mark.parametrize("shape,sshape,dtype", CASES)
def test_block_and_tensor_scales_match_torch(shape, sshape, dtype):
    bits = random_fp8(shape, dtype, seed=len(shape) * 1000 + shape[-1])
    scale = torch.rand(sshape, generator=torch.Generator().manual_seed(1)) * 1e-2 + 1e-4
    blocks = fp8.block_shape(shape, sshape)
    ref = torch_reference(bits, dtype, scale, blocks)
    got = fp8.dequantize(bits.numpy(), dtype, scale.numpy())
    assert got.dtype == np.uint16 and (got == bits_of(ref)).all()


def test_every_code_including_nan_and_inf():
    for dtype in TORCH_FP8:
        bits = torch.arange(256, dtype=torch.uint8).reshape(2, 128)
        scale = torch.tensor([[0.37], [3.0e38]])  # huge scale: products overflow to inf
        ref = torch_reference(bits, dtype, scale, (1, 128))
        got = fp8.dequantize(bits.numpy(), dtype, scale.numpy())
        # NaN payloads are not compared: torch's vectorized float32->bfloat16 path
        # writes 0xFFFF for every NaN, its scalar path 0x7FC0 (see casts.f32_to_bf16).
        nan = torch.isnan(ref).numpy()
        assert (nan == ((got & 0x7F80) == 0x7F80) & ((got & 0x7F) != 0)).all()
        assert (got[~nan] == bits_of(ref)[~nan]).all()


@pytest.mark.parametrize("scale_dtype", [torch.bfloat16, torch.float16, torch.float8_e8m0fnu])
def test_narrow_scale_dtypes(scale_dtype):
    bits = random_fp8((300, 260), "float8_e4m3fn", seed=7)
    scale = (torch.rand((3, 3), generator=torch.Generator().manual_seed(2)) * 4).to(scale_dtype)
    ref = torch_reference(bits, "float8_e4m3fn", scale, (128, 128))
    # numpy carriers: float16 as itself, bfloat16 as uint16 bits, float8 as uint8 bits.
    raw = (
        scale.numpy()
        if scale_dtype == torch.float16
        else scale.view(torch.uint8 if scale.element_size() == 1 else torch.int16).numpy()
    )
    raw = raw.view(np.uint16) if raw.dtype == np.int16 else raw
    got = fp8.dequantize(bits.numpy(), "float8_e4m3fn", raw, str(scale_dtype).split(".")[-1])
    assert (got == bits_of(ref)).all()


@pytest.mark.parametrize("out", [torch.float16, torch.float32])
def test_other_output_dtypes(out):
    bits = random_fp8((130, 140), "float8_e4m3fn", seed=3)
    scale = torch.rand((2, 2), generator=torch.Generator().manual_seed(3))
    ref = torch_reference(bits, "float8_e4m3fn", scale, (128, 128), out)
    got = fp8.dequantize(bits.numpy(), "float8_e4m3fn", scale.numpy(), out_dtype=str(out).split(".")[-1])
    assert (got.view(np.uint8) == ref.numpy().view(np.uint8)).all()


def test_without_scale_is_the_exact_cast():
    bits = random_fp8((16, 16), "float8_e5m2", seed=4)
    ref = bits.view(torch.float8_e5m2).to(torch.bfloat16)
    assert (fp8.dequantize(bits.numpy(), "F8_E5M2") == bits_of(ref)).all()


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(1, 299), max_size=5, unique=True), experts=st.booleans())
def test_row_blocks_equal_whole(cuts, experts):
    shape, sshape = ((5, 300, 200), (5, 3, 2)) if experts else ((300, 200), (3, 2))
    bits = random_fp8(shape, "float8_e4m3fn", seed=11).numpy()
    scale = np.random.default_rng(0).random(sshape, dtype=np.float32)
    whole = fp8.dequantize(bits, "float8_e4m3fn", scale)
    edges = [0, *sorted(c for c in cuts if c < shape[0]), shape[0]]
    parts = [
        fp8.dequantize(bits[a:b], "float8_e4m3fn", scale, weight_shape=shape, start=a)
        for a, b in zip(edges, edges[1:], strict=False)
    ]
    assert (np.concatenate(parts) == whole).all()


def test_block_shape_inference_and_errors():
    assert fp8.block_shape((7168, 18432), (56, 144)) == (128, 128)
    assert fp8.block_shape((1000, 1000), (8, 8)) == (128, 128)  # partial edge blocks
    assert fp8.block_shape((1000, 1000), (8, 8), 125) == (125, 125)  # the config says otherwise
    assert fp8.block_shape((96, 64), (3, 2)) == (32, 32)  # exact quotient
    assert fp8.block_shape((4, 256, 256), (4, 2, 2)) == (1, 128, 128)
    assert fp8.block_shape((4, 256, 256), ()) == (4, 256, 256)
    for w, s in [((100, 100), (3, 3)), ((4, 256, 256), (2, 2, 2)), ((10,), (3, 3))]:
        with pytest.raises(ValueError, match="scale of shape"):
            fp8.block_shape(w, s)
    with pytest.raises(ValueError, match="do not fit"):
        fp8.dequantize(
            np.zeros((4, 8), np.uint8), "float8_e4m3fn", np.ones(1, np.float32), weight_shape=(4, 8), start=2
        )


def test_pairing_by_names_shapes_dtypes():
    entries = [
        ("model.layers.0.mlp.down_proj.weight", (7168, 18432), "F8_E4M3"),  # DeepSeek-V3
        ("model.layers.0.mlp.down_proj.weight_scale_inv", (56, 144), "F32"),
        ("model.layers.0.self_attn.o_proj.weight", (64, 96), "F8_E4M3"),  # compressed-tensors
        ("model.layers.0.self_attn.o_proj.weight_scale", (1,), "F32"),
        ("model.layers.0.self_attn.o_proj.input_scale", (1,), "F32"),
        ("model.layers.0.self_attn.k_scale", (), "F32"),
        ("model.layers.1.mlp.experts.down_proj", (8, 256, 512), "F8_E4M3"),  # fused experts
        ("model.layers.1.mlp.experts.down_proj_scale_inv", (8, 2, 4), "F32"),
        ("model.layers.1.mlp.gate.weight", (8, 256), "F8_E5M2"),  # fp8 without a scale
        ("model.layers.1.mlp.bad.weight", (300, 300), "F8_E4M3"),
        ("model.layers.1.mlp.bad.weight_scale_inv", (7, 7), "F32"),
        ("model.embed_tokens.weight", (1000, 7168), "BF16"),
        ("model.norm.weight_scale", (7168,), "BF16"),  # not an fp8 weight's
    ]
    r = fp8.pair_scales(entries)
    w = r.weights
    assert set(w) == {e[0] for e in entries if e[2].startswith("F8")}
    assert w["model.layers.0.mlp.down_proj.weight"] == fp8.FP8Weight(
        "model.layers.0.mlp.down_proj.weight",
        "float8_e4m3fn",
        "model.layers.0.mlp.down_proj.weight_scale_inv",
        "float32",
        (128, 128),
    )
    assert w["model.layers.0.self_attn.o_proj.weight"].blocks == (64, 96)
    assert w["model.layers.1.mlp.experts.down_proj"].blocks == (1, 128, 128)
    assert w["model.layers.1.mlp.gate.weight"].scale is None
    assert w["model.layers.1.mlp.bad.weight"].scale is None and len(r.errors) == 1
    assert "bad.weight" in r.errors[0]
    assert r.drop == {
        "model.layers.0.mlp.down_proj.weight_scale_inv",
        "model.layers.0.self_attn.o_proj.weight_scale",
        "model.layers.0.self_attn.o_proj.input_scale",
        "model.layers.0.self_attn.k_scale",
        "model.layers.1.mlp.experts.down_proj_scale_inv",
    }
    assert fp8.pair_scales([("a.weight", (4, 4), "BF16"), ("a.k_scale", (), "F32")]).drop == set()
