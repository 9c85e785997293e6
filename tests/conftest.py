"""Sample checkpoints built with torch (the oracle), shared by the test files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import FLOAT8, torch_save

SEED = 20240601

# Every test analyzes afresh (and leaves the user's cache alone); test_analysis_cache.py turns it on.
os.environ["T2MLX_NO_CACHE"] = "1"


def _rows(t: torch.Tensor, width: int = 16) -> torch.Tensor:
    """Pad a 1-D tensor with zeros to a multiple of ``width`` and make it 2-D (rows, width)."""
    pad = -t.numel() % width
    if pad:
        t = torch.cat([t, torch.zeros(pad, dtype=t.dtype)])
    return t.reshape(-1, width)


def _special_f64() -> list[float]:
    tiny32, tiny16 = 2.0**-149, 2.0**-24
    vals = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        float("inf"),
        float("-inf"),
        float("nan"),
        -float("nan"),
        tiny32,
        -tiny32,
        tiny32 * 3,
        2.0**-126,
        2.0**-127,
        tiny16,
        tiny16 * 1.5,
        tiny16 / 2,
        6.1e-5,
        65504.0,
        65520.0,
        65519.99,
        1e5,
        3.4028234663852886e38,
        3.39e38,
        1e300,
        -1e300,
        1e-300,
        # ties and near-ties for float16 (1 + 2^-11) and bfloat16 (1 + 2^-8), and their neighbours
        1 + 2.0**-11,
        1 + 3 * 2.0**-11,
        1 + 2.0**-8,
        1 + 3 * 2.0**-8,
        1 + 2.0**-8 + 2.0**-23,
        # a float64 -> float32 -> float16/bfloat16 double rounding: torch rounds twice
        1 + 2.0**-11 + 2.0**-40,
        1 + 2.0**-8 + 2.0**-40,
        -(1 + 2.0**-8 + 2.0**-40),
    ]
    return vals


def float_sweep(dtype: torch.dtype, n_random: int = 8192) -> torch.Tensor:
    """A 2-D tensor of ``dtype`` covering its special values: every bit pattern for 8/16-bit floats."""
    g = torch.Generator().manual_seed(SEED)
    if dtype in FLOAT8:
        return _rows(torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype))
    if dtype in (torch.float16, torch.bfloat16):
        return _rows(torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype))
    rng = np.random.default_rng(SEED)
    if dtype == torch.float32:
        rand_bits = torch.from_numpy(rng.integers(0, 2**32, n_random, dtype=np.uint64).astype(np.uint32).view(np.int32))
        special = torch.tensor(_special_f64(), dtype=torch.float64).to(torch.float32)
        # float32 ties for bfloat16 (lower 16 bits exactly 0x8000) and their neighbours
        ties = (
            torch.tensor([0x3F808000, 0x3F818000, 0x3F808001, 0xBF818000, 0x7F7F8000, 0x00008000], dtype=torch.int64)
            .to(torch.int32)
            .view(torch.float32)
        )
        parts = [special, ties, rand_bits.view(torch.float32), torch.randn(n_random, generator=g) * 1e3]
    else:
        rand_bits = torch.from_numpy(
            rng.integers(0, 2**63, n_random, dtype=np.int64) * rng.choice([-1, 1], n_random)
        ).view(torch.float64)
        parts = [
            torch.tensor(_special_f64(), dtype=torch.float64),
            rand_bits,
            torch.randn(n_random, generator=g, dtype=torch.float64) * 1e-3,
        ]
    return _rows(torch.cat([p.to(dtype) for p in parts]))


def int_sweep(dtype: torch.dtype, n: int = 512) -> torch.Tensor:
    info = torch.iinfo(dtype)
    g = torch.Generator().manual_seed(SEED)
    lo, hi = max(info.min, -(2**62)), min(info.max, 2**62)
    ends = (
        torch.tensor([info.min, info.max, 0, 1], dtype=dtype)
        if dtype != torch.uint64
        else torch.tensor([0, 1, 2**63 - 1], dtype=torch.int64).to(dtype)
    )
    return _rows(torch.cat([ends, torch.randint(lo, hi, (n,), generator=g, dtype=torch.int64).to(dtype)]))


FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64) + FLOAT8
INTS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64)
# The dtypes torch's legacy (non-zip) loader can read back: those with a typed storage class.
LEGACY_LOADABLE = (
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
    torch.complex64,
    torch.complex128,
)


def all_dtypes_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    sd = {f"sweep.{str(d)[6:]}": float_sweep(d) for d in FLOATS}
    sd.update({f"ints.{str(d)[6:]}": int_sweep(d) for d in INTS})
    sd["mask.bool"] = torch.rand(40, 3, generator=g) > 0.5
    for d in (torch.complex64, torch.complex128):
        c = torch.randn(64, 4, generator=g, dtype=d)
        c[0, 0] = complex(float("nan"), 1.0)
        c[0, 1] = complex(float("inf"), -0.0)
        sd[f"cplx.{str(d)[6:]}"] = c
    # conv-shaped float weights of several dtypes: the inferred conv rules apply
    for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.float8_e4m3fn):
        sd[f"conv.{str(d)[6:]}.weight"] = torch.randn(6, 3, 3, 5, generator=g).to(d)
    sd["conv1.weight"] = torch.randn(4, 3, 5, generator=g, dtype=torch.float16)
    sd["conv3.weight"] = torch.randn(2, 3, 2, 3, 4, generator=g)
    return sd


def views_state_dict() -> dict[str, torch.Tensor]:
    """Views with storage offsets, non-contiguous tensors, shared storages, 0-d and empty tensors."""
    g = torch.Generator().manual_seed(SEED)
    base = torch.randn(6, 10, generator=g)
    half = torch.randn(5, 8, generator=g).to(torch.bfloat16)
    ints = torch.arange(60, dtype=torch.int64).reshape(3, 4, 5)
    w = torch.randn(8, 3, 3, 4, generator=g)
    emb = torch.randn(7, 5, generator=g)
    return {
        "base": base,
        "base_alias": base,  # two names, one storage (tied weights)
        "transposed": base.t(),  # non-contiguous
        "rows_offset": base[2:5],  # contiguous view with a storage offset
        "row": base[3],
        "cols_step": base[1:, 1::3],  # slices with steps
        "expanded": torch.arange(4.0).expand(3, 4),  # zero stride
        "scalar_view": base[4, 7],  # 0-d view with an offset
        "bf16.t": half.t(),
        "bf16.step": half[::2, 1::2],
        "ints.permuted": ints.permute(2, 0, 1),
        "ints.narrow": ints[1:, :, 3],
        "conv.weight": w.permute(0, 3, 1, 2),  # a non-contiguous conv weight (conv2d applies)
        "embed.weight": emb,
        "lm_head.weight": emb,  # tied to embed.weight
        "scalar.f32": torch.tensor(3.25),
        "scalar.i64": torch.tensor(-7),
        "scalar.bf16": torch.tensor(1.5, dtype=torch.bfloat16),
        "scalar.bool": torch.tensor(True),
        "empty.1d": torch.empty(0),
        "empty.2d": torch.empty(0, 5, dtype=torch.float16),
        "empty.cols": torch.empty(3, 0, dtype=torch.int32),
        "empty.conv.weight": torch.empty(0, 3, 3, 3),
        "empty.view": base[:, 10:],
    }


@pytest.fixture(scope="session")
def dtype_files(tmp_path_factory):
    """The every-dtype state dict saved as a zip archive and as a legacy pickle."""
    d = tmp_path_factory.mktemp("dtypes")
    sd = all_dtypes_state_dict()
    return {fmt: torch_save(sd, d / f"all_dtypes_{fmt}.pt", fmt) for fmt in ("zip", "legacy")}


@pytest.fixture(scope="session")
def views_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("views")
    sd = views_state_dict()
    return {fmt: torch_save(sd, d / f"views_{fmt}.pt", fmt) for fmt in ("zip", "legacy")}


@pytest.fixture
def out(tmp_path):
    """An output directory that does not exist yet."""
    return tmp_path / "out"
