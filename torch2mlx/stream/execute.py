"""Execute a plan: bytes on disk in bounded memory, several tensors in flight at once.

Every output's byte offset is known from the plan, so work is cut into
independent tasks (a byte range of a tensor that needs no change, or a block
of rows that is transformed) that worker threads run in any order with
positional writes. numpy and file I/O release the GIL, so reading, casting
and writing overlap. When the last task of a shard is done the shard is
fsynced, hashed and renamed into place by a separate finisher thread.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np

from .. import dtypes, rules
from ..errors import Torch2MLXError
from . import casts
from .data import DataReader
from .plan import Op, Plan, Shard
from .writers.files import copy_range, fsync_dir, os_error, pwrite_all, sha256_file, temp_name

CHUNK = 16 * 1024 * 1024


@dataclass
class ShardResult:
    file: str
    bytes: int
    sha256: str


@dataclass
class _Task:
    op: Op
    start: int      # rows (or bytes, for copies)
    stop: int
    copy: bool
    flat: bool = False


def _row_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    n = itemsize
    for d in shape[1:]:
        n *= d
    return n


def plan_tasks(op: Op, chunk: int) -> list[_Task]:
    if op.passthrough:
        total = op.outputs[0].nbytes
        step = max(chunk * 4, 1)  # kernel copies need no buffer; bigger pieces, fewer syscalls
        return [_Task(op, s, min(s + step, total), True) for s in range(0, total, step)] or [_Task(op, 0, 0, True)]
    out = op.outputs[0]
    rule = rules.get(op.rule)
    if not out.shape:
        return [_Task(op, 0, 1, False)]
    flat = rule.elementwise and all(e.contiguous for e in op.sources) and len(out.shape) > 1
    if flat:
        rows, row = out.nbytes // out.dtype.itemsize, max(e.dtype.itemsize for e in op.sources)
    else:
        rows = out.shape[0]
        row = max([_row_bytes(out.shape, 4)] + [_row_bytes(e.shape, e.dtype.itemsize) for e in op.sources])
    # Blocks widen to float32 on the way, so budget 4 bytes an element.
    per = max(1, chunk // max(row * 4 // max(out.dtype.itemsize, 1), 1))
    return [_Task(op, s, min(s + per, rows), False, flat) for s in range(0, rows, per)] or [_Task(op, 0, 0, False, flat)]


def compute_block(op: Op, reader: DataReader, start: int, stop: int, flat: bool = False) -> np.ndarray:
    """Output rows [start, stop) of ``op``'s first output, cast to its dtype."""
    rule = rules.get(op.rule)
    out = op.outputs[0]
    if flat:
        blocks = [reader.read_flat(e, start, stop) for e in op.sources]
    elif not out.shape:
        blocks = [reader.read_all(e).reshape(()) for e in op.sources]
        start, stop = 0, 1
    else:
        shapes = [e.shape for e in op.sources]
        blocks = [reader.read_rows(e, s, t, axis) if e.shape else reader.read_all(e)
                  for e, (axis, s, t) in zip(op.sources, rule.source_slices(start, stop, shapes, op.args))]
    src = op.source_dtype
    if rule.arithmetic and not src.exact_numpy:
        # Sums and norms need values: bfloat16/float8 blocks arrive as raw bits.
        blocks = [casts.to_f32(b, src) for b in blocks]
        src = dtypes.get("float32")
    block = rule.apply(blocks, op.args, start, stop)
    return casts.cast(block, src, out.dtype)


class Executor:
    def __init__(self, plan: Plan, out_dir: str, *, reader: DataReader, workers: int | None = None,
                 chunk: int = CHUNK, progress=None, drop_cache: bool = False):
        self.plan, self.out_dir, self.reader = plan, out_dir, reader
        self.workers = workers or min(4, (os.cpu_count() or 2) + 1)
        self.chunk, self.progress, self.drop_cache = chunk, progress, drop_cache
        self._fds: dict[int, int] = {}
        self._pending: dict[int, int] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self.results: dict[int, ShardResult] = {}

    def _open_shards(self, indices):
        for i in indices:
            sh = self.plan.shards[i]
            tmp = temp_name(os.path.join(self.out_dir, sh.file))
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                self._fds[i] = fd
                pwrite_all(fd, sh.header, 0)
                if hasattr(os, "posix_fallocate") and sh.size:
                    try:
                        os.posix_fallocate(fd, 0, sh.size)  # claim the space now: ENOSPC before hours of work
                    except OSError as e:
                        if e.errno not in (95, 22):  # EOPNOTSUPP / EINVAL: filesystem cannot; write will tell
                            raise
                os.ftruncate(fd, sh.size)
            except OSError as e:
                raise os_error(tmp, e) from None

    def _buf(self) -> bytearray:
        b = getattr(self._local, "buf", None)
        if b is None:
            b = self._local.buf = bytearray(8 << 20)
        return b

    def _run(self, t: _Task) -> int:
        op = t.op
        out = op.outputs[0]
        fd = self._fds[out.shard]
        base = len(self.plan.shards[out.shard].header) + out.offset
        try:
            if t.copy:
                src = op.sources[0]
                if src.array is not None:
                    data = np.ascontiguousarray(src.array).reshape(-1).view(np.uint8)[t.start:t.stop]
                    pwrite_all(fd, data, base + t.start)
                else:
                    copy_range(self.reader.fd(src.path), fd, src.offset + t.start, base + t.start, t.stop - t.start, self._buf())
                    self.reader.done_with(src, t.start, t.stop - t.start)
                return t.stop - t.start
            block = compute_block(op, self.reader, t.start, t.stop, t.flat)
            if t.flat:
                pos = t.start * out.dtype.itemsize
            else:
                pos = t.start * _row_bytes(out.shape, out.dtype.itemsize) if out.shape else 0
            pwrite_all(fd, np.ascontiguousarray(block).reshape(-1).view(np.uint8), base + pos)
        except OSError as e:
            raise os_error(os.path.join(self.out_dir, self.plan.shards[out.shard].file), e) from None
        return sum(e.nbytes for e in op.sources) * (t.stop - t.start) // max(self._rows(t), 1)

    @staticmethod
    def _rows(t: _Task) -> int:
        out = t.op.outputs[0]
        if t.flat:
            return out.nbytes // out.dtype.itemsize
        return out.shape[0] if out.shape else 1

    def _finish(self, i: int) -> ShardResult:
        sh: Shard = self.plan.shards[i]
        fd = self._fds[i]
        final = os.path.join(self.out_dir, sh.file)
        try:
            os.fsync(fd)
            digest = sha256_file(fd, sh.size)
            if self.drop_cache and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            del self._fds[i]
            os.replace(temp_name(final), final)
        except OSError as e:
            raise os_error(final, e) from None
        res = ShardResult(sh.file, sh.size, digest)
        self.results[i] = res
        return res

    def run(self, shard_indices=None) -> list[ShardResult]:
        """Write the given shards (default: all); returns their results in shard order."""
        indices = list(range(len(self.plan.shards))) if shard_indices is None else list(shard_indices)
        wanted = set(indices)
        tasks = [t for op in self.plan.ops if op.outputs[0].shard in wanted for t in plan_tasks(op, self.chunk)]
        for t in tasks:
            self._pending[t.op.outputs[0].shard] = self._pending.get(t.op.outputs[0].shard, 0) + 1
        finisher = ThreadPoolExecutor(1, thread_name_prefix="t2mlx-finish")
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="t2mlx-work")
        try:
            self._open_shards(indices)
            finishing = [finisher.submit(self._finish, i) for i in indices if not self._pending.get(i)]
            futures = {pool.submit(self._run, t): t for t in tasks}
            for f in as_completed(futures):
                t = futures[f]
                n = f.result()  # re-raises the worker's error
                if self.progress:
                    self.progress(n)
                s = t.op.outputs[0].shard
                self._pending[s] -= 1
                if self._pending[s] == 0:
                    finishing.append(finisher.submit(self._finish, s))
            for f in finishing:
                f.result()
            fsync_dir(self.out_dir)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            finisher.shutdown(wait=True, cancel_futures=True)
            self.abort()
            raise
        pool.shutdown()
        finisher.shutdown()
        return [self.results[i] for i in indices]

    def abort(self):
        """Remove every temporary this run created (never a finished shard of an earlier run)."""
        for i, fd in list(self._fds.items()):
            try:
                os.close(fd)
            except OSError:
                pass
            try:
                os.unlink(temp_name(os.path.join(self.out_dir, self.plan.shards[i].file)))
            except OSError:
                pass
        self._fds.clear()
