"""PyTorch ``.bin`` shards from a plan: zip checkpoints ``torch.load(weights_only=True)`` reads.

A zip member is written front to back, so each shard is written sequentially by
``TorchZipWriter``, tensor after tensor. The bytes of each tensor are computed
block by block (``execute.compute_outputs``: read, rule, dequantize, cast) by
worker threads that run a few blocks ahead of the writer, so computing overlaps
writing while memory stays bounded by those few blocks, never by a tensor.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ...core.dtypes import load_numpy
from ...formats.data import DataReader, pread_into
from .. import execute
from ..execute import CHUNK, ShardResult, compute_outputs
from ..hashing import file_digest
from ..plan import Op, Plan
from .files import os_error
from .torch_zip import TorchZipWriter


def shard_name(i: int, n: int) -> str:
    """transformers' names for pickled weights."""
    return "pytorch_model.bin" if n == 1 else f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin"


def _raw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _jobs(op: Op, reader: DataReader, chunk: int):
    """Callables returning the little-endian bytes of ``op``'s only output, in order."""
    src, out = op.sources[0], op.outputs[0]
    for t in execute.plan_tasks(op, chunk):
        if not t.copy:
            yield lambda t=t: _raw(compute_outputs(op, reader, t.start, t.stop, t.flat)[0])
            continue
        # Unchanged bytes; kernel-copy tasks are cut large, so cut them again to bound the read-ahead.
        for s in range(t.start, t.stop, chunk):
            e = min(s + chunk, t.stop)
            if src.array is not None:
                yield lambda s=s, e=e: _raw(src.array)[s:e]
            else:

                def read(s=s, e=e):
                    buf = bytearray(e - s)
                    pread_into(reader.fd(src.path), buf, src.offset + s, src.path)
                    reader.done_with_range(src.path, src.offset + s, e - s)
                    return buf

                yield read
        if t.start == t.stop == 0 and out.nbytes == 0:
            yield lambda: b""


def _ahead(pool: ThreadPoolExecutor, jobs, depth: int):
    """Run ``(key, job)`` pairs on ``pool`` at most ``depth`` ahead; yield ``(key, result)`` in order."""
    window: deque = deque()
    jobs = iter(jobs)
    try:
        for key, job in jobs:
            window.append((key, pool.submit(job)))
            if len(window) > depth:
                k, f = window.popleft()
                yield k, f.result()
        while window:
            k, f = window.popleft()
            yield k, f.result()
    finally:
        for _, f in window:
            f.cancel()


def write(
    plan: Plan,
    out_dir: str,
    *,
    reader: DataReader,
    workers: int | None = None,
    progress=None,
    on_shard=None,
    chunk: int = CHUNK,
) -> list[ShardResult]:
    """Write every shard of ``plan`` (its ops have one output each) as a torch zip checkpoint."""
    workers = workers or min(4, (os.cpu_count() or 2) + 1)
    results = []
    load_numpy()  # before the workers that compute with it
    with ThreadPoolExecutor(workers, thread_name_prefix="t2mlx-bin") as pool:
        for i, sh in enumerate(plan.shards):
            ops = [op for op in plan.ops if op.outputs[0].shard == i]
            path = os.path.join(out_dir, sh.file)
            writer = TorchZipWriter(path)
            try:
                blocks = _ahead(
                    pool, ((k, job) for k, op in enumerate(ops) for job in _jobs(op, reader, chunk)), workers + 1
                )
                for k, group in itertools.groupby(blocks, key=lambda kb: kb[0]):
                    o = ops[k].outputs[0]
                    writer.add(o.name, o.dtype, o.shape, (b for _, b in group))
                    if progress:
                        progress(ops[k].nbytes_in)
                writer.close()
            except BaseException:
                writer.abort()
                raise
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    size = os.fstat(fd).st_size
                    result = ShardResult(sh.file, size, file_digest(fd, size))
                finally:
                    os.close(fd)
            except OSError as e:
                raise os_error(path, e) from None
            results.append(result)
            if on_shard:
                on_shard(result)
    return results
