"""GGUF (llama.cpp) files: tensor entries with the HF model's names, read through gguf-py's reader.

gguf-py's ``GGUFReader`` memory-maps the file and parses the header (metadata and
tensor records); no tensor byte is touched here. Each tensor becomes an entry:

- F32/F16/BF16 (and the integer types): bytes in place, read like any file tensor;
- a block-quantized type: its raw blocks as a ``uint8`` entry of shape
  ``(..., rows, bytes per row)`` (rows are independent in every GGML type), for
  ``stream/gguf_plan.py`` to repack or dequantize a block of rows at a time.

llama.cpp's conventions are undone on the way: names go back to the HF names
(gguf-py's ``TensorNameMap`` for the file's ``general.architecture``, read in
reverse), the rotary permutation ``convert_hf_to_gguf.py`` applies to Q and K of
``llama`` models is inverted (a row permutation, so it applies to quantized rows
as well: lossless), and Gemma's norm weights lose the 1 the converter added.
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass, field

import numpy as np

from ..core import dtypes
from ..core.entry import TensorEntry
from ..errors import CheckpointError, Torch2MLXError
from .data import DataReader

MAGIC = b"GGUF"
VERSIONS = (2, 3)
# Architectures whose Q/K rows convert_hf_to_gguf.py permutes (LlamaModel.permute): transformers' GGUF
# loader undoes it for these too (its LlamaTensorProcessor).
PERMUTED_QK = ("llama",)
# Architectures whose RMSNorm weights convert_hf_to_gguf.py stores as w + 1 (HF computes x * (1 + w)).
NORM_PLUS_ONE = ("gemma", "gemma2", "gemma3")
_SPLIT = re.compile(r"^(.*)-(\d{5})-of-(\d{5})\.gguf$")


def is_gguf(path: str) -> bool:
    if path.endswith(".gguf"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


@dataclass
class GGUFSource:
    """What the planner needs to know about a GGUF source beyond its entries."""

    arch: str
    first: str  # the file holding the metadata (the first of a split set)
    qtypes: dict[str, str] = field(default_factory=dict)  # entry name -> GGML type name (quantized tensors)
    metadata: dict = field(default_factory=dict)  # a few scalar keys, for the report


def split_names(name: str) -> list[str]:
    """The file names of the split set whose file is ``name`` (``[name]`` for a single file)."""
    m = _SPLIT.match(name)
    if not m:
        return [name]
    n = int(m.group(3))
    return [f"{m.group(1)}-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1)]


def _split_files(path: str) -> list[str]:
    d = os.path.dirname(path)
    files = [os.path.join(d, n) for n in split_names(os.path.basename(path))]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise CheckpointError(path, f"split GGUF set of {len(files)} files: {os.path.basename(missing[0])} is missing")
    return files


def one_model(d: str, names: list[str]) -> str:
    """The GGUF file to read in directory ``d``: its only one, or the first of its only split set.

    Hub repos often hold one file per quantization (``-Q4_K_M``, ``-Q8_0``): which one is the user's choice."""
    firsts: dict[str, str | None] = {}
    for n in names:
        m = _SPLIT.match(n)
        key = m.group(1) if m else n
        if m is None or int(m.group(2)) == 1:
            firsts[key] = n
        else:
            firsts.setdefault(key, None)
    only = next(iter(firsts.values())) if len(firsts) == 1 else None
    if only is not None:
        return os.path.join(d, only)
    shown = ", ".join(sorted(v or k for k, v in firsts.items())[:6])
    raise Torch2MLXError(f"{d}: holds {len(firsts)} GGUF models ({shown}); name the file to convert")


def _check_head(path: str) -> None:
    """Magic and version before gguf-py maps the file (its messages name neither file nor fix)."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror or e}") from None
    if len(head) < 24:
        raise CheckpointError(path, f"truncated GGUF file ({len(head)} bytes, no complete header)")
    if head[:4] != MAGIC:
        raise CheckpointError(path, f"not a GGUF file (magic {head[:4]!r}, expected b'GGUF')")
    (version,) = struct.unpack("<I", head[4:8])
    if version not in VERSIONS:
        raise CheckpointError(path, f"GGUF version {version} is not supported (reads versions 2 and 3)")


def _reader(path: str):
    import gguf

    _check_head(path)
    try:
        return gguf.GGUFReader(path, "r")
    except ValueError as e:
        msg = str(e)
        m = re.match(r"(?:np\.uint32\()?(\d+)\)? is not a valid GGMLQuantizationType", msg)
        if m:
            raise CheckpointError(path, f"unknown GGML tensor type {m.group(1)} (not in gguf-py's table)") from None
        if "reshape" in msg or "buffer is smaller" in msg:
            raise CheckpointError(path, "tensor data runs past the end of the file (truncated?)") from None
        raise CheckpointError(path, f"unreadable GGUF header ({msg})") from None
    except (IndexError, KeyError, OverflowError, TypeError, UnicodeDecodeError, MemoryError) as e:
        raise CheckpointError(path, f"unreadable GGUF header, truncated or corrupt ({type(e).__name__}: {e})") from None


def field_value(reader, key: str):
    """A scalar or string metadata value (``None`` when absent or an array); read from the field's parts,
    which every gguf-py version has."""
    from gguf import GGUFValueType

    f = reader.fields.get(key)
    if f is None or len(f.types) != 1 or not f.data:
        return None
    part = f.parts[f.data[0]]
    try:
        if f.types[0] == GGUFValueType.STRING:
            return bytes(part).decode("utf-8")
        return part[0].item()
    except (IndexError, UnicodeDecodeError, AttributeError):
        return None


def name_map(arch: str, n_blocks: int, known: set[str] | None) -> dict[str, str]:
    """GGUF base name (``blk.0.attn_q``) -> HF base name (``model.layers.0.self_attn.q_proj``).

    gguf-py lists, per tensor kind, the names every supported HF model gives it; the one of this
    architecture is the one its model holds (``known``: the HF model's parameter names, when
    transformers could build it), else the first of gguf-py's list in the ``model.``/``lm_head`` form
    (llama-style models).
    """
    import gguf

    archs = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in archs:
        raise Torch2MLXError(f"GGUF architecture {arch!r} is not in gguf-py's MODEL_ARCH table")
    tmap = gguf.get_tensor_name_map(archs[arch], n_blocks)
    candidates: dict[str, list[str]] = {}
    for hf, (_, g) in tmap.mapping.items():
        if hf != g:
            candidates.setdefault(g, []).append(hf)
    out = {}
    for g, names in candidates.items():
        chosen = None
        if known:
            chosen = next((n for n in names if n in known), None)
        if chosen is None:
            chosen = next(
                (
                    n
                    for n in names
                    if (n.startswith("model.") or n == "lm_head")
                    and not n.startswith("model.layers.layers.")
                    and not n.endswith("_no_perm")
                ),
                None,
            )
        if chosen is not None:
            out[g] = chosen
    return out


def _hf_name(gname: str, names: dict[str, str]) -> str | None:
    base, dot, suffix = gname.rpartition(".")
    if dot and base in names:
        return f"{names[base]}.{suffix}"
    return names.get(gname)


class _Permuted:
    """Rows of ``base`` in HF order: undoes ``LlamaModel.permute`` (per head, rows (2, d/2) <- (d/2, 2))."""

    def __init__(self, base: TensorEntry, heads: int, reader: DataReader):
        self.base, self.heads, self.reader = base, heads, reader
        self.head_rows = base.shape[0] // heads
        self.nbytes_read = base.nbytes

    def _rows(self, h0: int, h1: int) -> np.ndarray:
        hd = self.head_rows
        raw = self.reader.read_rows(self.base, h0 * hd, h1 * hd)
        rest = raw.shape[1:]
        return raw.reshape((h1 - h0, hd // 2, 2) + rest).swapaxes(1, 2).reshape((-1,) + rest)

    def read(self, axis: int, start: int, stop: int) -> np.ndarray:
        hd = self.head_rows
        if axis % len(self.base.shape) != 0:
            whole = self._rows(0, self.heads)
            idx = [slice(None)] * whole.ndim
            idx[axis] = slice(start, stop)
            return np.ascontiguousarray(whole[tuple(idx)])
        h0, h1 = start // hd, -(-stop // hd)
        rows = self._rows(h0, h1)
        return np.ascontiguousarray(rows[start - h0 * hd : stop - h0 * hd])


class _MinusOne:
    """Gemma's norm weight as HF holds it: the stored ``w + 1`` minus 1, in float32 (as transformers does)."""

    def __init__(self, base: TensorEntry, reader: DataReader):
        self.base, self.reader = base, reader
        self.nbytes_read = base.nbytes

    def read(self, axis: int, start: int, stop: int) -> np.ndarray:
        from ..core.casts import to_f32

        block = to_f32(self.reader.read_rows(self.base, start, stop, axis), self.base.dtype)
        return (block - np.float32(1)).astype(np.float32)


_FLOAT_TYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
_INT_TYPES = {"I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64"}


def open_readers(path: str) -> tuple[list[str], list]:
    """The files of a GGUF file or split set (``*-00001-of-0000N.gguf``) and gguf-py's reader of each,
    checked: magic, version, tensor types, every tensor's data inside its file."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise Torch2MLXError(f"{path}: reading GGUF needs gguf-py: pip install 'torch2mlx[gguf]'") from None

    files = _split_files(path)
    return files, check_readers(files, [_reader(f) for f in files])


def check_readers(files: list[str], readers: list, shown: list[str] | None = None) -> list:
    """``readers`` (of ``files``, named ``shown`` in errors), checked: every tensor's data inside its file,
    an architecture named."""
    import gguf

    for path, fpath, reader in zip(files, shown or files, readers, strict=True):
        size = os.path.getsize(path)
        for t in reader.tensors:
            block, tsize = gguf.GGML_QUANT_SIZES[t.tensor_type]
            nbytes = math.prod(int(x) for x in t.shape) * tsize // block
            if t.data_offset + nbytes > size:
                raise CheckpointError(
                    fpath,
                    f"tensor {t.name!r}: data [{t.data_offset}, {t.data_offset + nbytes}) runs past the end "
                    f"of the file ({size} bytes; truncated?)",
                )
    if not isinstance(field_value(readers[0], "general.architecture"), str):
        raise CheckpointError((shown or files)[0], "GGUF metadata has no general.architecture")
    return readers


def read_gguf(files: list[str], readers: list, hf_names: set[str] | None = None):
    """``(entries, GGUFSource, notes)`` of checked readers (``open_readers``); ``hf_names``: the HF
    model's parameter names, to choose among gguf-py's spellings."""
    import gguf

    first = readers[0]
    arch = field_value(first, "general.architecture")
    n_blocks = field_value(first, f"{arch}.block_count")
    n_blocks = n_blocks if isinstance(n_blocks, int) else 0
    names = name_map(arch, max(n_blocks, 1), hf_names)
    heads = field_value(first, f"{arch}.attention.head_count")
    kv_heads = field_value(first, f"{arch}.attention.head_count_kv")
    kv_heads = kv_heads if kv_heads is not None else heads
    if arch in PERMUTED_QK and not (isinstance(heads, int) and isinstance(kv_heads, int) and heads > 0 < kv_heads):
        raise CheckpointError(
            files[0],
            f"{arch}.attention.head_count(_kv) is missing or not one number: the Q/K rotary permutation "
            "cannot be undone",
        )
    info = GGUFSource(arch, files[0])
    info.metadata = {
        k: field_value(first, k) for k in ("general.name", "general.file_type") if field_value(first, k) is not None
    }
    notes: list[str] = []
    entries: list[TensorEntry] = []
    skipped: list[str] = []
    shared = DataReader(drop_cache=False)  # the loaders' own reads (entries outlive any run's reader)
    for fpath, reader in zip(files, readers, strict=True):
        for t in reader.tensors:
            qtype = t.tensor_type.name
            shape = tuple(reversed([int(x) for x in t.shape]))
            block, tsize = gguf.GGML_QUANT_SIZES[t.tensor_type]
            hf = _hf_name(t.name, names)
            if hf is None:
                skipped.append(t.name)
                continue
            if qtype in _FLOAT_TYPES or qtype in _INT_TYPES:
                dt = dtypes.get(_FLOAT_TYPES.get(qtype) or _INT_TYPES[qtype])
                e = TensorEntry(hf, dt, shape, path=fpath, offset=t.data_offset, origin=fpath)
            else:
                if not shape or shape[-1] % block:
                    raise CheckpointError(fpath, f"tensor {t.name!r}: row of {shape} is not whole {qtype} blocks")
                raw_shape = shape[:-1] + (shape[-1] // block * tsize,)
                e = TensorEntry(hf, dtypes.get("uint8"), raw_shape, path=fpath, offset=t.data_offset, origin=fpath)
                info.qtypes[hf] = qtype
            base = t.name.rpartition(".")[0]
            if arch in PERMUTED_QK and base.endswith((".attn_q", ".attn_k")):
                n = heads if base.endswith(".attn_q") else kv_heads
                if not e.shape or e.shape[0] % (2 * n):
                    raise CheckpointError(fpath, f"tensor {t.name!r}: {e.shape[:1]} rows are not {n} heads of pairs")
                e = TensorEntry(
                    hf, e.dtype, e.shape, path=fpath, offset=e.offset, loader=_Permuted(e, n, shared), origin=fpath
                )
            if arch in NORM_PLUS_ONE and t.name.endswith("norm.weight") and hf not in info.qtypes:
                e = TensorEntry(
                    hf,
                    dtypes.get("float32"),
                    e.shape,
                    path=fpath,
                    offset=e.offset,
                    loader=_MinusOne(e, shared),
                    origin=fpath,
                )
            entries.append(e)
    if skipped:
        notes.append(
            f"{len(skipped)} GGUF tensor(s) with no HF name for {arch} in gguf-py's map, not converted "
            f"(llama.cpp-only data): {', '.join(skipped[:4])}{' ...' if len(skipped) > 4 else ''}"
        )
    if arch in PERMUTED_QK:
        notes.append(
            f"{arch}: rotary permutation of attn_q/attn_k rows undone (convert_hf_to_gguf's LlamaModel.permute)"
        )
    if arch in NORM_PLUS_ONE:
        notes.append(f"{arch}: norm weights stored as w + 1 by llama.cpp's converter; 1 subtracted (float32)")
    return entries, info, notes
