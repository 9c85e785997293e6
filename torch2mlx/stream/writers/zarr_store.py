"""zarr sink: one array per output tensor, chunked along axis 0 in blocks the stream writes whole.

Every block a worker writes covers whole chunks, so blocks never
read-modify-write each other and arrays fill in parallel. Compression is
optional (zarr's codecs); bfloat16 is stored as uint16 with the attribute
``torch2mlx_dtype`` (zarr has no bfloat16). The manifest ``torch2mlx.json``
is written last, as the safetensors index is for the shard format.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ... import __version__
from ...errors import Torch2MLXError
from ..data import DataReader
from ..execute import CHUNK, compute_outputs
from ..plan import Op, Plan
from ..readers.zarr_store import DTYPE_ATTR, _zarr
from . import output_dir

COMPRESSORS = ("none", "zstd", "blosc", "gzip")


def _codec(name: str):
    if name == "none":
        return None
    from zarr import codecs
    return {"zstd": lambda: codecs.ZstdCodec(level=3), "blosc": lambda: codecs.BloscCodec(cname="zstd", clevel=3),
            "gzip": lambda: codecs.GzipCodec(level=5)}[name]()


def _rows_per_block(op: Op, chunk: int) -> int:
    out = op.outputs[0]
    row = max(1, max(o.nbytes // max(o.shape[0], 1) for o in op.outputs) if out.shape else 1)
    src_row = max(e.nbytes // max(e.shape[0], 1) if e.shape else e.nbytes for e in op.sources)
    return max(1, chunk // max(row * 4, src_row * 2, 1))


def write(plan: Plan, out: str, *, compressor: str = "none", workers: int | None = None,
          progress=None, chunk: int = CHUNK) -> list[dict]:
    zarr = _zarr(f"--format zarr ({out})")
    if compressor not in COMPRESSORS:
        raise Torch2MLXError(f"--zarr-compressor must be one of {', '.join(COMPRESSORS)}")
    root = zarr.open_group(out, mode="a")
    root.attrs["format"] = "mlx"   # tensors are in MLX layout: a later read must not transpose again
    codec = _codec(compressor)

    def one(op: Op) -> int:
        per = _rows_per_block(op, chunk)
        arrays = []
        for o in op.outputs:
            a = root.create_array(o.name.replace(".", "/"), shape=o.shape, dtype=o.dtype.np_dtype,
                                  chunks=(min(per, o.shape[0]) or 1,) + o.shape[1:] if o.shape else (),
                                  compressors=[codec] if codec else None, overwrite=True)
            if not o.dtype.exact_numpy:
                a.attrs[DTYPE_ATTR] = o.dtype.name
            arrays.append(a)
        rows = op.outputs[0].shape[0] if op.outputs[0].shape else 1
        with DataReader() as reader:
            for s in range(0, rows, per):
                t = min(s + per, rows)
                for a, block in zip(arrays, compute_outputs(op, reader, s, t)):
                    if a.ndim == 0:
                        a[()] = np.asarray(block).reshape(())
                    else:
                        a[s:t] = block
        if progress:
            progress(op.nbytes_in)
        return op.nbytes_in

    with ThreadPoolExecutor(workers or min(4, (os.cpu_count() or 2) + 1)) as pool:
        for f in [pool.submit(one, op) for op in plan.ops]:
            f.result()
    return []


def manifest(plan: Plan, source: str, options: dict, compressor: str) -> dict:
    return {"torch2mlx": __version__, "source": source, "options": options, "format": "zarr",
            "compressor": compressor,
            "tensors": {n: {k: v for k, v in r.items() if k != "shard"} | {"array": n.replace(".", "/")}
                        for n, r in plan.tensor_records().items()},
            "dropped": [{"source": n, "why": w} for n, w in plan.dropped], "warnings": plan.warnings,
            "complete": True}


def finish(out: str, m: dict) -> None:
    output_dir.write_manifest(out, m)
