"""Execute a plan: bytes on disk in bounded memory, several tensors in flight at once.

Every output's byte offset is known from the plan, so work is cut into
independent tasks — a byte range of a tensor that needs no change (copied by
the kernel), or a block of rows that is transformed — which worker threads
run with positional writes. numpy and file I/O release the GIL, so reading,
casting and writing overlap. Tasks run in output order, so a hasher thread
can follow the written prefix of each shard (a hash reads its input in order)
while the workers move on; a shard is fsynced and renamed into place as soon
as its last byte is hashed. A remote source is read in its own order within
each shard instead (its windows are shared by neighbouring tensors).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np

from ..core import casts, dtypes, rules
from ..errors import Torch2MLXError
from ..formats import remote
from ..formats.data import DataReader
from .hashing import HASH, update_from
from .hashing import new as new_hash
from .plan import Op, Plan
from .writers.files import check_free_space, copy_range, fsync_dir, memory_backed, os_error, pwrite_all, temp_name

CHUNK = 16 * 1024 * 1024


@dataclass
class ShardResult:
    file: str
    bytes: int
    digest: str
    hash: str = HASH  # the algorithm of ``digest``


@dataclass
class _Task:
    op: Op
    start: int  # rows (elements when flat, bytes when copying)
    stop: int
    copy: bool
    flat: bool = False


@dataclass
class _Copy:
    """Bytes copied file to file unchanged; adjacent tensors merge into one run."""

    path: str
    src: int
    shard: int
    dst: int  # absolute offset in the shard file
    n: int

    def follows(self, other: "_Copy") -> bool:
        return (
            other.path == self.path
            and other.shard == self.shard
            and other.src + other.n == self.src
            and other.dst + other.n == self.dst
        )


def _row_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    n = itemsize
    for d in shape[1:]:
        n *= d
    return n


def plan_tasks(op: Op, chunk: int) -> list[_Task]:
    if op.passthrough:
        total = op.outputs[0].nbytes
        step = max(chunk * 4, 1)  # kernel copies need no buffer: bigger pieces, fewer syscalls
        return [_Task(op, s, min(s + step, total), True) for s in range(0, total, step)] or [_Task(op, 0, 0, True)]
    out = op.outputs[0]
    if not out.shape:
        return [_Task(op, 0, 1, False)]
    flat = (
        rules.get(op.rule).elementwise
        and op.transform is None
        and len(out.shape) > 1
        and all(e.contiguous and e.loader is None for e in op.sources)
    )
    if flat:
        rows, row = out.nbytes // out.dtype.itemsize, 1
    else:
        rows = out.shape[0]
        row = max([1, _row_bytes(out.shape, 1)] + [_row_bytes(e.shape, 1) for e in op.sources])
    # Blocks pass through float32 on the way: budget 4 bytes an element, twice.
    per = max(1, chunk // (row * 8))
    return [_Task(op, s, min(s + per, rows), False, flat) for s in range(0, rows, per)] or [
        _Task(op, 0, 0, False, flat)
    ]


def batches(plan: Plan, ops: list[Op], chunk: int) -> list[list]:
    """Units of work grouped so each batch moves about ``chunk`` bytes.

    Thousands of small tensors would otherwise cost a thread hand-off each;
    kernel copies of tensors that sit back to back in both files become one copy.
    """
    units: list = []
    heads = [len(s.header) for s in plan.shards]
    last = None  # the copy the next tensor's bytes may extend
    for op in ops:
        src = op.sources[0]
        if src.array is not None or not op.passthrough:
            units += plan_tasks(op, chunk)
            last = None
            continue
        assert src.path is not None  # a passthrough source without an array is bytes in a file
        # plan_tasks' pieces of a kernel copy, made here without a _Task each (100,000 tensors a plan)
        dst = op.outputs[0]
        # A remote file's bytes are hashed as they arrive, in file order (formats/integrity.py): copies of
        # one batch each keep the workers on neighbouring windows, not four 64 MiB stretches apart.
        far = _is_remote(src.path)
        total, step = dst.nbytes, max(chunk if far else chunk * 4, 1)
        at = heads[dst.shard] + dst.offset
        for s in range(0, total, step) or (0,):
            c = _Copy(src.path, src.offset + s, dst.shard, at + s, min(s + step, total) - s)
            if last is not None and c.follows(last) and last.n + c.n <= step:
                last.n += c.n
                continue
            units.append(c)
            last = c
    out: list[list] = []  # batches of units
    cur: list = []
    size = 0
    for u in units:
        if type(u) is _Copy:
            n = u.n
        else:  # a remote source's batches by the bytes they read, about a window each (see above)
            of = u.op.nbytes_in if _is_remote(u.op.sources[0].path) else u.op.nbytes_out
            n = of * (u.stop - u.start) // max(_rows_of(u), 1)
        if cur and size + n > chunk:
            out.append(cur)
            cur, size = [], 0
        cur.append(u)
        size += n
    if cur:
        out.append(cur)
    return out


def _is_remote(path: str | None) -> bool:
    return path is not None and "://" in path and remote.lookup_file(path) is not None


def _rows_of(t: _Task) -> int:
    out = t.op.outputs[0]
    if t.copy:
        return out.nbytes
    if t.flat:
        return out.nbytes // out.dtype.itemsize
    return out.shape[0] if out.shape else 1


def compute_block(op: Op, reader: DataReader, start: int, stop: int, flat: bool = False) -> np.ndarray:
    """Output rows [start, stop) of ``op``'s first output, cast to its dtype."""
    return compute_outputs(op, reader, start, stop, flat)[0]


def compute_outputs(op: Op, reader: DataReader, start: int, stop: int, flat: bool = False) -> list[np.ndarray]:
    """Rows [start, stop) of every output of ``op`` (several when a tensor is quantized)."""
    rule = rules.get(op.rule)
    out = op.outputs[0]
    if flat:
        blocks = [reader.read_flat(e, start, stop) for e in op.sources]
    elif not out.shape:
        blocks = [reader.read_all(e).reshape(()) for e in op.sources]
        start, stop = 0, 1
    else:
        shapes = [e.shape for e in op.sources]
        blocks = [
            reader.read_rows(e, s, t, axis) if e.shape else reader.read_all(e)
            for e, (axis, s, t) in zip(op.sources, rule.source_slices(start, stop, shapes, op.args), strict=True)
        ]
    src = op.source_dtype
    if rule.arithmetic and not src.exact_numpy:
        # Sums and norms need values: bfloat16/float8 blocks arrive as raw bits.
        blocks = [casts.to_f32(b, src) for b in blocks]
        src = dtypes.get("float32")
    block = rule.apply(blocks, op.args, start, stop)
    if op.transform is not None:
        return op.transform(block, op, start, reader, src)
    return [casts.cast(block, src, out.dtype)]


class _ShardState:
    """Which bytes of a shard are written, so the hasher can follow the contiguous prefix."""

    def __init__(self, index: int, size: int, header_len: int):
        self.index, self.size = index, size
        self.done: dict[int, int] = {}
        self.watermark = header_len

    def add(self, lo: int, hi: int) -> None:
        if hi > lo:
            self.done[lo] = hi
            while self.watermark in self.done:
                self.watermark = self.done.pop(self.watermark)


def _yield_to_hasher() -> None:
    """Run a worker thread at lower priority than the hasher.

    The hasher is the one thread that must see every byte in order; with more
    workers than cores, an equal share of the CPU would make it the bottleneck.
    Linux lets a thread change its own nice value; elsewhere this does nothing.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 5)
    except (AttributeError, OSError):
        pass


class Executor:
    def __init__(
        self,
        plan: Plan,
        out_dir: str,
        *,
        reader: DataReader,
        workers: int | None = None,
        chunk: int = CHUNK,
        progress=None,
        drop_cache: bool = False,
        on_shard=None,
    ):
        self.plan, self.out_dir, self.reader = plan, out_dir, reader
        self.on_shard = on_shard  # called with each ShardResult once the shard is in place
        self.workers = workers or min(4, (os.cpu_count() or 2) + 1)
        self.chunk, self.progress, self.drop_cache = chunk, progress, drop_cache
        self._fds: dict[int, int] = {}
        self._states: dict[int, _ShardState] = {}
        self._cond = threading.Condition()
        self._failed = False
        self._unplaced: set[int] = set()  # shards of this run whose temporary is not yet renamed
        self.results: dict[int, ShardResult] = {}
        self._in_memory = memory_backed(out_dir)  # tmpfs: check free space instead of fallocate

    def _open_shard(self, i: int) -> None:
        sh = self.plan.shards[i]
        tmp = temp_name(os.path.join(self.out_dir, sh.file))
        self._unplaced.add(i)
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds[i] = fd
            pwrite_all(fd, sh.header, 0)
            if hasattr(os, "posix_fallocate") and sh.size and not self._in_memory:
                try:
                    os.posix_fallocate(fd, 0, sh.size)  # claim the space now: ENOSPC before hours of work
                except OSError as e:
                    if e.errno not in (95, 22):  # EOPNOTSUPP / EINVAL: the filesystem cannot; writes will tell
                        raise
            os.ftruncate(fd, sh.size)
        except OSError as e:
            raise os_error(tmp, e) from None
        self._states[i] = _ShardState(i, sh.size, len(sh.header))

    def _run(self, batch: list) -> int:
        ranges: list[tuple[int, int, int]] = []  # (shard, start, end) written
        done_in = 0
        for u in batch:
            try:
                done_in += self._copy(u, ranges) if isinstance(u, _Copy) else self._unit(u, ranges)
            except OSError as e:
                shard = u.shard if isinstance(u, _Copy) else u.op.outputs[0].shard
                raise os_error(os.path.join(self.out_dir, self.plan.shards[shard].file), e) from None
        with self._cond:
            for shard, lo, hi in ranges:
                self._states[shard].add(lo, hi)
            self._cond.notify_all()
        return done_in

    def _copy(self, c: _Copy, ranges: list) -> int:
        rf = self.reader.remote_file(c.path)
        if rf is not None:  # through the reader's windows (large range requests), written as they arrive
            fd = self._fds[c.shard]
            remote.copy_remote_range(rf, c.src, c.n, lambda piece, at: pwrite_all(fd, piece, c.dst + at))
        else:
            copy_range(self.reader.fd(c.path), self._fds[c.shard], c.src, c.dst, c.n, src_name=c.path)
            self.reader.done_with_range(c.path, c.src, c.n)
        ranges.append((c.shard, c.dst, c.dst + c.n))
        return c.n

    def _unit(self, t: _Task, ranges: list) -> int:
        op = t.op
        if t.copy:  # an in-memory source: its bytes are already here
            out = op.outputs[0]
            at = len(self.plan.shards[out.shard].header) + out.offset + t.start
            data = np.ascontiguousarray(op.sources[0].array).reshape(-1).view(np.uint8)[t.start : t.stop]
            pwrite_all(self._fds[out.shard], data, at)
            ranges.append((out.shard, at, at + data.nbytes))
            return data.nbytes
        for o, block in zip(op.outputs, compute_outputs(op, self.reader, t.start, t.stop, t.flat), strict=True):
            block = np.ascontiguousarray(block)
            unit = o.dtype.itemsize if t.flat else (_row_bytes(o.shape, o.dtype.itemsize) if o.shape else 0)
            at = len(self.plan.shards[o.shard].header) + o.offset + t.start * unit
            pwrite_all(self._fds[o.shard], block.reshape(-1).view(np.uint8), at)
            ranges.append((o.shard, at, at + block.nbytes))
        return op.nbytes_in * (t.stop - t.start) // max(_rows_of(t), 1)

    def _hash_and_finish(self, indices: list[int]) -> None:
        """Follow each shard's written prefix with the manifest's hash; fsync and rename the shard once complete."""
        for i in indices:
            st, fd = self._states[i], self._fds[i]
            h, pos = new_hash(HASH), 0
            while pos < st.size:
                with self._cond:
                    while st.watermark <= pos and not self._failed:
                        self._cond.wait()
                    # After a failure, shards already written whole are still hashed and placed (what
                    # --resume keeps: a remote run that dies should not fetch them again); the rest are not.
                    if self._failed and st.watermark < st.size:
                        return
                    limit = st.watermark
                if os.fstat(fd).st_size < limit:
                    raise Torch2MLXError(f"{self.plan.shards[i].file}: shard shorter than planned")
                # through mmap: the written pages themselves, not a copy of them read back
                update_from((h,), fd, pos, limit)
                if self.drop_cache and hasattr(os, "posix_fadvise"):
                    # Hashed bytes are final: start their writeback now (DONTNEED on dirty pages
                    # queues it) so the closing fsync waits for the tail only, not the whole shard.
                    os.posix_fadvise(fd, pos, limit - pos, os.POSIX_FADV_DONTNEED)
                pos = limit
            self._finish(i, h.hexdigest())

    def _finish(self, i: int, digest: str) -> None:
        sh = self.plan.shards[i]
        fd = self._fds[i]
        final = os.path.join(self.out_dir, sh.file)
        try:
            os.fsync(fd)
            if self.drop_cache and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            del self._fds[i]
        except OSError as e:
            raise os_error(final, e) from None
        self.results[i] = ShardResult(sh.file, sh.size, digest)
        # Record the shard before it gets its final name: a shard under a final name is
        # then always in the manifest, and --resume never rewrites a finished shard.
        if self.on_shard:
            self.on_shard(self.results[i])
        try:
            os.replace(temp_name(final), final)
        except OSError as e:
            raise os_error(final, e) from None
        self._unplaced.discard(i)

    def run(self, shard_indices=None) -> list[ShardResult]:
        """Write the given shards (default: all); returns their results in shard order."""
        indices = sorted(range(len(self.plan.shards)) if shard_indices is None else shard_indices)
        wanted = set(indices)
        ops = [op for op in self.plan.ops if op.outputs[0].shard in wanted]
        if any(self.reader.remote_file(op.sources[0].path or "") for op in ops):
            # A remote source is read through windows shared by neighbouring tensors, and few are kept: read
            # it in its own order (a shard holds a stretch of it), or a window left partly used until a
            # distant tensor's turn is evicted and fetched again. The hasher then catches up per shard.
            ops.sort(key=lambda op: (op.outputs[0].shard, op.sources[0].path or "", op.sources[0].offset or 0))
        else:  # output order: the hasher follows the workers
            ops.sort(key=lambda op: (op.outputs[0].shard, op.outputs[0].offset))
        work = batches(self.plan, ops, self.chunk)
        if any(op.sources[0].array is not None or not op.passthrough for op in self.plan.ops):
            dtypes.load_numpy()  # before the workers that compute with it
        hasher = ThreadPoolExecutor(1, thread_name_prefix="t2mlx-hash")
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="t2mlx-work", initializer=_yield_to_hasher)
        try:
            if self._in_memory:
                try:
                    check_free_space(self.out_dir, sum(self.plan.shards[i].size for i in indices))
                except OSError as e:
                    raise os_error(self.out_dir, e) from None
            for i in indices:
                self._open_shard(i)
            hashing = hasher.submit(self._hash_and_finish, indices)
            futures = [pool.submit(self._run, b) for b in work]
            for f in as_completed(futures):
                n = f.result()  # re-raises a worker's error
                if self.progress:
                    self.progress(n)
            hashing.result()
            fsync_dir(self.out_dir)
        except BaseException:
            with self._cond:
                self._failed = True
                self._cond.notify_all()
            pool.shutdown(wait=True, cancel_futures=True)
            hasher.shutdown(wait=True, cancel_futures=True)
            self.abort()
            raise
        pool.shutdown()
        hasher.shutdown()
        return [self.results[i] for i in indices]

    def abort(self):
        """Remove every temporary this run created (never a finished shard of an earlier run).

        A shard whose fd is closed may still be a temporary: recording it (``on_shard``)
        or renaming it failed.
        """
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        for i in sorted(self._unplaced):
            try:
                os.unlink(temp_name(os.path.join(self.out_dir, self.plan.shards[i].file)))
            except OSError:
                pass
        self._unplaced.clear()
