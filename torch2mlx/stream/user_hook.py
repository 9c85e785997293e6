"""The user hook of ``stream.convert(..., hook=fn)``: each planned tensor is computed, handed to ``fn``,
and whatever it returns is written by ``ShardWriter`` (sizes are no longer known in advance).

Not to be confused with ``transforms`` (fp8 and quantization transforms the plan applies to an op).
The manifest calls such a run ``transform`` (its on-disk key, kept for readers of older outputs)."""

from __future__ import annotations

import numpy as np

from ..core.values import from_user, to_mx
from ..errors import Torch2MLXError
from ..formats.data import DataReader
from . import manifest
from .execute import ShardResult, compute_block
from .hashing import HASH
from .options import Options
from .plan import Plan
from .writers.incremental import ShardWriter


def _bytes(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _results(value, name, dtype):
    if value is None:
        return []
    if isinstance(value, list):
        out = []
        for v in value:
            out += _results(v, name, dtype)
        return out
    if isinstance(value, tuple) and len(value) in (2, 3) and isinstance(value[0], str):
        return [value if len(value) == 3 else (value[0], value[1], None)]
    raise Torch2MLXError(
        f"hook returned {type(value).__name__} for {name!r}; "
        "expected None, (name, array), (name, array, dtype) or a list of those"
    )


def run_hook(
    plan: Plan,
    out: str,
    hook,
    opts: Options,
    progress=None,
    source: str = "",
    source_files: dict | None = None,
    before_index=None,
) -> tuple[list[ShardResult], int, int]:
    """Shard results, tensors written and their bytes (what the hook returned, not what was planned);
    ``before_index(shard bytes, tensors)`` is called once the shards are whole, before the index."""
    writer = ShardWriter(
        out,
        opts.max_shard_size,
        overwrite=True,
        manifest_extra=manifest.for_transform(
            source=source,
            source_files=source_files,
            options=opts.to_dict(),
            dropped=plan.dropped,
            warnings=plan.warnings,
        ),
    )
    try:
        with DataReader() as reader:
            for op in plan.ops:
                o = op.outputs[0]
                rows = o.shape[0] if o.shape else 1
                arr = compute_block(op, reader, 0, rows).reshape(o.shape)
                value = to_mx(arr, o.dtype)  # typed: user code never sees bfloat16 as raw bits
                for name, array, dt in _results(hook(o.name, value, o.dtype.name), o.name, o.dtype):
                    bits, dt = from_user(array, dt, name)
                    # Values equal to the plan's (handed back, renamed, or recomputed alike): verify can
                    # recompute them from the source with the plan's rule; the rest only the transform knows.
                    same = (
                        dt == o.dtype
                        and op.transform is None
                        and bits.shape == arr.shape
                        and np.array_equal(_bytes(bits), _bytes(arr))
                    )
                    writer.add_bits(name, bits, dt, record=manifest.transform_record(op, transformed=not same))
                if progress:
                    progress(op.nbytes_in)
        last = (
            None if before_index is None else (lambda rs: before_index([r["bytes"] for r in rs], len(writer.records)))
        )
        results = writer.close(before_index=last)
    except BaseException:
        writer.abort()
        raise
    return [ShardResult(r["file"], r["bytes"], r[HASH]) for r in results], len(writer.records), writer.nbytes
