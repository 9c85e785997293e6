"""Our Q4_K / Q5_K / Q6_K quantizers (core/kquants.py), judged by gguf-py's dequantizers.

gguf-py 0.19 has dequantizers for the K-quants but no quantizer; its ``gguf.quants.dequantize`` of our
blocks is the oracle for the layout. The bound: every weight within 0.7 of its super-block's step
((max(0, hi) - min(0, lo)) / 15 or / 31 for Q4_K / Q5_K, max |w| / 31 for Q6_K) and a root mean square
error no worse than gguf-py's own block type of the same bits (Q4_1, Q5_1) on the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from torch2mlx.core import kquants

gguf = pytest.importorskip("gguf")


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "gauss": rng.standard_normal((32, 1024)) * 0.02,
        "uniform": rng.uniform(-3, 7, (32, 1024)),
        "positive": rng.uniform(1, 2, (32, 512)),
        "negative": -rng.uniform(1, 2, (32, 512)),
        "outliers": rng.standard_normal((32, 1024)) * np.where(rng.random((32, 1024)) < 0.002, 100, 1),
        "cauchy": rng.standard_cauchy((32, 1024)),
        "zeros": np.zeros((2, 256)),
        "constant": np.full((2, 256), 3.5),
        "large": rng.standard_normal((2, 256)) * 6e4,
    }


def _deq(blocks: np.ndarray, qtype: str, shape) -> np.ndarray:
    return gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[qtype]).reshape(shape)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_K", "Q6_K"])
def test_blocks_have_gguf_layout_and_bounded_error(qtype):
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    assert (block, size) == (256, kquants.BLOCK_BYTES[qtype])
    for name, x in _cases().items():
        x = x.astype(np.float32)
        b = kquants.quantize(x, qtype)
        assert b.dtype == np.uint8 and b.shape == (x.shape[0], x.shape[1] // 256 * size), name
        back = _deq(b, qtype, x.shape)
        assert np.isfinite(back).all(), name
        sb, err = x.reshape(-1, 256), np.abs(back - x).reshape(-1, 256).max(axis=1)
        if qtype == "Q6_K":
            step = np.abs(sb).max(axis=1) / 31
        else:
            step = (np.maximum(sb.max(axis=1), 0) - np.minimum(sb.min(axis=1), 0)) / (15 if qtype == "Q4_K" else 31)
        assert (err <= 0.7 * step + 1e-7 * np.abs(sb).max(axis=1)).all(), (name, float((err / step).max()))
        if name == "zeros":
            assert np.array_equal(back, x), name


@pytest.mark.parametrize(("qtype", "legacy"), [("Q4_K", "Q4_1"), ("Q5_K", "Q5_1"), ("Q6_K", "Q5_1")])
def test_error_no_worse_than_gguf_py_legacy_type(qtype, legacy):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((128, 2048)) * 0.02).astype(np.float32)
    ours = np.sqrt(np.mean((_deq(kquants.quantize(x, qtype), qtype, x.shape) - x) ** 2))
    lt = gguf.GGMLQuantizationType[legacy]
    theirs = np.sqrt(np.mean((gguf.quants.dequantize(gguf.quants.quantize(x, lt), lt).reshape(x.shape) - x) ** 2))
    print(f"MEASURED rms error {qtype} {ours / x.std():.4f} vs {legacy} {theirs / x.std():.4f} (of the weights' std)")
    assert ours <= theirs


def test_codes_use_the_whole_range_and_rows_are_independent():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 512)).astype(np.float32)
    for qtype in ("Q4_K", "Q5_K", "Q6_K"):
        whole = kquants.quantize(x, qtype)
        assert np.array_equal(np.concatenate([kquants.quantize(x[i : i + 1], qtype) for i in range(6)]), whole)
        back = _deq(whole, qtype, x.shape)
        levels = {"Q4_K": 16, "Q5_K": 32, "Q6_K": 64}[qtype]
        # a 256-block of Gaussian weights uses most of its codes (a wrong packing collapses or scrambles them)
        assert len(np.unique(back[0, :32])) >= min(24, levels // 2), qtype


def test_bad_rows_and_values_are_refused():
    with pytest.raises(ValueError, match="not whole blocks of 256"):
        kquants.quantize(np.zeros((2, 288), np.float32), "Q4_K")
    with pytest.raises(ValueError, match="non-finite"):
        kquants.quantize(np.full((1, 256), np.nan, np.float32), "Q6_K")
