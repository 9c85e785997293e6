"""What the format modules share: the records of a detected checkpoint and its packed modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...core import quant
from ...core.casts import to_f32
from ...core.entry import TensorEntry
from ...errors import CheckpointError, Torch2MLXError

SUFFIXES = (".qweight", ".qzeros", ".scales", ".g_idx")


@dataclass
class Packed:
    """One quantized Linear as stored: its tensors and how to read them (``fmt``: gptq or awq)."""

    base: str  # module path, "model.layers.0.self_attn.q_proj"
    qweight: TensorEntry
    scales: TensorEntry
    qzeros: TensorEntry | None  # None: symmetric, the format's fixed zero point
    g_idx: TensorEntry | None
    bits: int
    group_size: int  # of the source, resolved (-1 -> in_features)
    in_features: int
    out_features: int
    fmt: Any = field(repr=False, default=None)  # the format module: group_index, words, zeros
    zero_offset: int = 0  # GPTQ v1 stores zero - 1
    shape: TensorEntry | None = None  # compressed-tensors' weight_shape
    extra: dict = field(default_factory=dict)  # what else a format needs to read it (bitsandbytes' quant state)

    @property
    def groups(self) -> int:
        return self.scales.shape[0]

    def fail(self, entry: TensorEntry, problem: str):
        raise CheckpointError(entry.origin or entry.path or "checkpoint", f"{entry.name}: {problem}")


@dataclass
class Found:
    """A detected pre-quantized checkpoint: what its config says and its packed modules."""

    method: str
    bits: int
    group_size: int
    sym: bool | None = None
    desc_act: bool | None = None
    checkpoint_format: str | None = None
    version: str | None = None
    zero_point: bool | None = None
    strategy: str | None = None  # compressed-tensors: group / channel / tensor
    modules: dict[str, Packed] = field(default_factory=dict)
    hidden: set[str] = field(default_factory=set)  # source tensors the view replaces

    def describe(self) -> str:
        parts = [f"bits={self.bits}", f"group_size={self.group_size}"]
        for k in ("strategy", "sym", "desc_act", "zero_point", "checkpoint_format", "version"):
            v = getattr(self, k)
            if v is not None:
                parts.append(f"{k}={v}")
        return f"{self.method.upper()} ({', '.join(parts)}), {len(self.modules)} packed module(s)"


def modules_of(entries: list[TensorEntry]) -> dict[str, dict[str, TensorEntry]]:
    """Module path -> {".qweight": entry, ...} for every module with a ``.qweight``."""
    by_name = {e.name: e for e in entries}
    out = {}
    for e in entries:
        if e.name.endswith(".qweight"):
            base = e.name[: -len(".qweight")]
            out[base] = {s: by_name[base + s] for s in SUFFIXES if base + s in by_name}
    return out


def config_int(qc: dict, key: str, default: int, path: str) -> int:
    v = qc.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise Torch2MLXError(f"{path}: config.json quantization_config.{key} must be an integer, got {v!r}")
    return v


def need(base: str, parts: dict[str, TensorEntry], suffix: str, qweight: TensorEntry) -> TensorEntry:
    e = parts.get(suffix)
    if e is None:
        raise CheckpointError(
            qweight.origin or qweight.path or "checkpoint", f"{qweight.name} is packed but {base}{suffix} is missing"
        )
    return e


def check_int32(m: Packed, *entries: TensorEntry) -> None:
    for e in entries:
        if e.dtype.name not in ("int32", "uint32") or len(e.shape) != 2:
            m.fail(e, f"expected a 2-D int32 tensor, got {e.dtype.name}{list(e.shape)}")
    if m.scales.dtype.name not in quant.SCALE_DTYPES or len(m.scales.shape) != 2:
        m.fail(
            m.scales, f"expected 2-D float16/bfloat16/float32 scales, got {m.scales.dtype.name}{list(m.scales.shape)}"
        )


def read_scales(m: Packed, reader, start: int, stop: int) -> np.ndarray:
    """float32 scales of output rows [start, stop): (rows, groups)."""
    own = getattr(m.fmt, "read_scales", None)  # a format storing them (out, groups)
    if own is not None:
        return own(m, reader, start, stop)
    s = reader.read_rows(m.scales, start, stop, 1)
    return np.ascontiguousarray(to_f32(s, m.scales.dtype).T)


def codes_along_out(entry: TensorEntry, bits: int, reader, start: int, stop: int) -> np.ndarray:
    """Codes [start, stop) of the last axis of an int32 tensor packed along it, LSB first: (rows, stop-start)."""
    words = entry.shape[1]
    w0, w1 = start // 32 * bits, min(-(-stop // 32) * bits, words)  # whole runs of 32 codes (3-bit straddles words)
    packed = reader.read_rows(entry, w0, w1, 1).view(np.uint32)
    codes = quant.unpack_codes(np.ascontiguousarray(packed), bits)
    lo = start - w0 * 32 // bits
    return codes[:, lo : lo + stop - start]
