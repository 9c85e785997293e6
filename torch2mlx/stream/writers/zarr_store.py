"""zarr sink: one array per output tensor, chunked along axis 0 in blocks the stream writes whole.

Every block a worker writes covers whole chunks, so blocks never
read-modify-write each other and arrays fill in parallel. Compression is
optional (zarr's codecs); bfloat16 is stored as uint16 with the attribute
``torch2mlx_dtype`` (zarr has no bfloat16). Names are escaped part by part
(``array_path``), and names no file system can hold apart are refused before
anything is written. The root says ``torch2mlx_complete: false`` until the
manifest ``torch2mlx.json`` is written; a failed run removes its arrays and
leaves the mark, so reading the store back refuses.
"""

from __future__ import annotations

import errno
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ...core.dtypes import load_numpy
from ...core.version import __version__
from ...errors import Torch2MLXError
from ...formats.data import DataReader
from ...formats.zarr_store import COMPLETE_ATTR, DTYPE_ATTR, NAMES_ATTR, _zarr, array_path
from .. import manifest as manifest_mod
from ..execute import CHUNK, compute_outputs
from ..plan import Op, Plan

COMPRESSORS = ("none", "zstd", "blosc", "gzip")
NAME_MAX = 255  # bytes in one file name on common file systems (ext4, APFS, NTFS)


def _short(name: str) -> str:
    return repr(name if len(name) <= 60 else name[:57] + "...")


def check_names(plan: Plan) -> None:
    """Refuse, before writing anything, names whose arrays could not be told apart on disk."""
    paths: dict[str, str] = {}
    folded: dict[str, str] = {}
    for name in (o.name for op in plan.ops for o in op.outputs):
        p = array_path(name)
        long = max(p.split("/"), key=len)
        if len(long.encode()) > NAME_MAX:
            raise Torch2MLXError(
                f"tensor {_short(name)}: a part of its name is {len(long.encode())} bytes as a zarr "
                f"node, over the {NAME_MAX}-byte file-name limit; use --format safetensors"
            )
        # macOS and Windows file systems ignore case: x.Norm and x.norm would share one directory there
        other = folded.get(p.casefold())
        if other is not None:
            raise Torch2MLXError(
                f"tensors {_short(other)} and {_short(name)} differ only in case: one zarr "
                "array on case-insensitive file systems; use --format safetensors"
            )
        folded[p.casefold()] = paths[p] = name
    for p, name in paths.items():
        parts = p.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in paths:
                raise Torch2MLXError(
                    f"tensors {_short(paths['/'.join(parts[:i])])} and {_short(name)}: a zarr store "
                    "cannot hold an array where the other needs a group; use --format safetensors"
                )


def failed(out: str, e: OSError | Torch2MLXError, created: list[str]) -> Torch2MLXError:
    """Remove the arrays a failed run wrote (the root stays marked incomplete) and say so in one line."""
    for top in created:
        shutil.rmtree(os.path.join(out, top), ignore_errors=True)
    try:
        os.unlink(manifest_mod.path(out))
    except OSError:
        pass
    if isinstance(e, OSError):
        what = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        what += f" ({e.filename})" if e.filename else ""
    else:  # the manifest's writer names its file and the OS error itself
        what = str(e).replace(" (partial output removed)", "")
    # What stays of OUT is the Target's to say; a store left behind (SIGKILL) stays marked incomplete.
    return Torch2MLXError(f"{out}: writing the zarr store failed: {what}")


def _codec(name: str):
    if name == "none":
        return None
    from zarr import codecs

    return {
        "zstd": lambda: codecs.ZstdCodec(level=3),
        "blosc": lambda: codecs.BloscCodec(cname="zstd", clevel=3),
        "gzip": lambda: codecs.GzipCodec(level=5),
    }[name]()


def _rows_per_block(op: Op, chunk: int) -> int:
    out = op.outputs[0]
    row = max(1, max(o.nbytes // max(o.shape[0], 1) for o in op.outputs) if out.shape else 1)
    src_row = max(e.nbytes // max(e.shape[0], 1) if e.shape else e.nbytes for e in op.sources)
    return max(1, chunk // max(row * 4, src_row * 2, 1))


_NODE_FILES = ("zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata")


def clear_old_store(out: str) -> None:
    """--overwrite over a store: its arrays go, or they would read back beside the new ones."""
    if not os.path.isdir(out):
        return
    for name in os.listdir(out):
        if name.startswith(".t2mlx-new-"):  # an --overwrite's new store, staged inside OUT
            continue
        p = os.path.join(out, name)
        if name in _NODE_FILES:
            os.unlink(p)
        elif (
            os.path.isdir(p) and not os.path.islink(p) and any(os.path.exists(os.path.join(p, f)) for f in _NODE_FILES)
        ):
            shutil.rmtree(p)


def write(
    plan: Plan,
    out: str,
    *,
    compressor: str = "none",
    workers: int | None = None,
    progress=None,
    chunk: int = CHUNK,
    created: list[str] | None = None,
) -> list[dict]:
    """Write every array; ``created`` collects the top-level entries made, for ``failed`` to remove."""
    zarr = _zarr(f"--format zarr ({out})")
    if compressor not in COMPRESSORS:
        raise Torch2MLXError(f"zarr_compressor must be one of {', '.join(COMPRESSORS)}")
    check_names(plan)
    clear_old_store(out)
    created = [] if created is None else created
    created += sorted(
        {array_path(o.name).split("/")[0] for op in plan.ops for o in op.outputs}
        - set(os.listdir(out) if os.path.isdir(out) else ())
    )
    root = zarr.open_group(out, mode="a")
    # MLX layout (a later read must not transpose again); escaped names; incomplete until finish()
    root.attrs.update({"format": "mlx", NAMES_ATTR: "escaped", COMPLETE_ATTR: False})
    codec = _codec(compressor)

    def one(op: Op) -> int:
        per = _rows_per_block(op, chunk)
        arrays = []
        for o in op.outputs:
            a = root.create_array(
                array_path(o.name),
                shape=o.shape,
                dtype=o.dtype.np_dtype,
                chunks=(min(per, o.shape[0]) or 1,) + o.shape[1:] if o.shape else (),
                compressors=[codec] if codec else None,
                overwrite=True,
            )
            if not o.dtype.exact_numpy:
                a.attrs[DTYPE_ATTR] = o.dtype.name
            arrays.append(a)
        rows = op.outputs[0].shape[0] if op.outputs[0].shape else 1
        with DataReader() as reader:
            for s in range(0, rows, per):
                t = min(s + per, rows)
                for a, block in zip(arrays, compute_outputs(op, reader, s, t), strict=True):
                    if a.ndim == 0:
                        a[()] = np.asarray(block).reshape(())
                    else:
                        a[s:t] = block
        if progress:
            progress(op.nbytes_in)
        return op.nbytes_in

    load_numpy()  # before the workers that compute with it
    with ThreadPoolExecutor(workers or min(4, (os.cpu_count() or 2) + 1)) as pool:
        for f in [pool.submit(one, op) for op in plan.ops]:
            f.result()
    return []


def manifest(plan: Plan, source: str, options: dict, compressor: str, source_key: str | None = None):
    return manifest_mod.for_zarr(
        version=__version__,
        source=source,
        options=options,
        source_key=source_key,
        compressor=compressor,
        records=plan.tensor_records(),
        array_path=array_path,
        dropped=plan.dropped,
        warnings=plan.warnings,
    )


def finish(out: str, m) -> None:
    manifest_mod.write(out, m)
    _zarr(f"--format zarr ({out})").open_group(out, mode="a").attrs[COMPLETE_ATTR] = True
