"""One GGUF file from a ``to_gguf`` plan, written front to back, tensor by tensor, block by block.

gguf-py's ``GGUFWriter`` writes the header, the metadata and every tensor's info (name, shape, type,
offset: all known from the plan before any data is read); the data then goes straight to its file, a
block of rows at a time, padded to the file's alignment exactly as ``GGUFWriter.write_tensor_data``
pads it. Memory: one block (about ``CHUNK`` bytes of float32 input and what it becomes) plus the
metadata (the tokenizer's tokens and merges), never a whole tensor. The file is written under a
temporary name beside OUT and renamed when whole.
"""

from __future__ import annotations

import os

import numpy as np

from ...core import kquants, quant
from ...core.casts import to_f32
from ...core.dtypes import load_numpy
from ...errors import Torch2MLXError
from ...formats.data import DataReader
from ..execute import CHUNK
from ..to_gguf_plan import LOSSLESS, GGUFPlan, Item, gguf_module
from ..to_gguf_vocab import gguf_warnings
from .files import os_error

_BLOCK = 32  # Q8_0 and Q4_0 blocks, and the only MLX group size they take whole


def temp_path(path: str) -> str:
    d, base = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{base}.t2mlx-{os.getpid()}.tmp")


def _rows_per_block(it: Item, chunk: int) -> int:
    row = 4 * max(1, int(np.prod(it.shape[1:], dtype=np.int64))) if it.shape else 4
    per = max(1, chunk // (4 * row))  # float32 input, its transform and its quantized/dequantized copies
    if it.heads:  # the rotary permutation moves rows within a head: blocks hold whole heads
        head = it.shape[0] // it.heads
        per = max(head, per // head * head)
    return per


def _permute(x: np.ndarray, rows_per_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute on whole heads: each head's two rotary halves interleaved."""
    n = x.shape[0] // rows_per_head
    return x.reshape(n, 2, rows_per_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def _symmetric(it: Item, reader: DataReader, per: int) -> bool:
    """Every group of the packed triple is d * (code - 2^(bits-1)) with d exact in float16."""
    q = it.quant
    assert q is not None
    if LOSSLESS.get(q.bits) != it.qtype or q.group_size != _BLOCK or q.biases is None:  # fp modes have no biases
        return False
    mid = np.float32(1 << (q.bits - 1))
    for s in range(0, it.shape[0], per):
        t = min(s + per, it.shape[0])
        sc = to_f32(reader.read_rows(q.scales, s, t, 0), q.scales.dtype)
        bi = to_f32(reader.read_rows(q.biases, s, t, 0), q.biases.dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            d = sc.astype(np.float16)
            if not (np.isfinite(sc).all() and (d.astype(np.float32) == sc).all() and (bi == -mid * sc).all()):
                return False
    return True


def _repack(it: Item, reader: DataReader, s: int, t: int) -> np.ndarray:
    """Rows [s, t) of a symmetric MLX triple as Q8_0/Q4_0 blocks: codes and scales moved, nothing rounded."""
    q = it.quant
    assert q is not None
    codes = quant.unpack_codes(reader.read_rows(q.weight, s, t, 0), q.bits)
    d = to_f32(reader.read_rows(q.scales, s, t, 0), q.scales.dtype).astype(np.float16)
    codes, d = codes.reshape(t - s, -1), d.reshape(t - s, -1)
    if it.heads:
        head = it.shape[0] // it.heads
        codes, d = _permute(codes, head), _permute(d, head)
    groups = codes.reshape(t - s, -1, _BLOCK)
    if q.bits == 8:  # Q8_0: int8 qs, value d * qs; MLX's code c is qs + 128
        qs = (groups.astype(np.int16) - 128).astype(np.int8).view(np.uint8)
    else:  # Q4_0: byte j holds elements j (low nibble) and j + 16; value d * (nibble - 8), MLX's code is the nibble
        qs = groups[..., :16] | (groups[..., 16:] << np.uint8(4))
    out = np.concatenate([np.ascontiguousarray(d).view(np.uint8).reshape(t - s, -1, 2), qs], axis=-1)
    return out.reshape(t - s, -1)


def _values(it: Item, reader: DataReader, s: int, t: int) -> np.ndarray:
    """Rows [s, t) as float32 with llama.cpp's conventions applied."""
    x = to_f32(reader.read_rows(it.entry, s, t, 0), it.entry.dtype) if it.shape else reader.read_all(it.entry)
    x = np.array(x, np.float32, copy=True).reshape((t - s,) + it.shape[1:] if it.shape else ())
    if it.heads:
        x = _permute(x, it.shape[0] // it.heads)
    if it.plus_one:
        x += np.float32(1)
    return x


def _quantize(flat: np.ndarray, it: Item, qtype, gguf) -> np.ndarray:
    """gguf-py's quantizer, or ours for the K-quants it has none for."""
    if it.qtype not in kquants.BLOCK_BYTES:
        return gguf.quants.quantize(flat, qtype)
    try:
        return kquants.quantize(flat, it.qtype)
    except ValueError as e:
        raise Torch2MLXError(f"{it.source}: {e}") from None


def _write_item(it: Item, fout, reader: DataReader, gguf, chunk: int) -> int:
    qtype = gguf.GGMLQuantizationType[it.qtype]
    rows = it.shape[0] if it.shape else 1
    per = _rows_per_block(it, chunk)
    lossless = it.quant is not None and _symmetric(it, reader, per)
    if lossless:
        it.how = "repack"
    elif it.qtype not in ("F32", "F16", "BF16"):
        it.how = "requantize"
    else:
        it.how = "dequantize" if it.quant is not None else "cast"
    written, worst, top = 0, 0.0, 0.0
    for s in range(0, rows, per):
        t = min(s + per, rows)
        if lossless:
            data = _repack(it, reader, s, t)
        else:
            x = _values(it, reader, s, t)
            flat = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
            data = _quantize(flat, it, qtype, gguf)
            back = gguf.quants.dequantize(data, qtype).reshape(flat.shape)
            with np.errstate(invalid="ignore"):
                err = np.abs(back - flat)
                worst = max(worst, float(np.nanmax(err)) if err.size else 0.0)
                top = max(top, float(np.nanmax(np.abs(flat))) if flat.size else 0.0)
        buf = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        fout.write(buf.data)
        written += buf.nbytes
    if not lossless:
        it.max_abs = worst
        it.max_rel = worst / top if top else 0.0
    if written != it.nbytes:
        raise Torch2MLXError(f"{it.name}: wrote {written} bytes, the plan says {it.nbytes} (a bug)")
    return written


def write(plan: GGUFPlan, path: str, reader: DataReader, progress=None, chunk: int = CHUNK) -> int:
    """Write ``plan`` as the GGUF file ``path``; its size in bytes."""
    gguf = gguf_module()
    load_numpy()
    tmp = temp_path(path)
    folder = os.path.dirname(tmp)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise os_error(folder, e) from None
    w = gguf.GGUFWriter(tmp, plan.arch)
    try:
        with gguf_warnings(plan.warnings):
            for method, args in plan.metadata:
                if method == "special_vocab":
                    args[0].add_to_gguf(w, quiet=True)
                else:
                    getattr(w, method)(*args)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for it in plan.items:
            raw = gguf.GGMLQuantizationType[it.qtype]
            w.add_tensor_info(it.name, it.shape, np.dtype(np.float32), it.nbytes, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        fout = w.fout[0]
        for it in plan.items:
            w.write_padding(fout, fout.tell())
            n = _write_item(it, fout, reader, gguf, chunk)
            w.write_padding(fout, n)
            if progress:
                progress(n)
        fout.flush()
        os.fsync(fout.fileno())
        size = fout.tell()
        w.close()
        os.replace(tmp, path)
    except OSError as e:
        _discard(w, tmp)
        raise os_error(getattr(e, "filename", None) or path, e) from None
    except BaseException:
        _discard(w, tmp)
        raise
    return size


def _discard(w, tmp: str) -> None:
    try:
        w.close()
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
