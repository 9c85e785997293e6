"""``--variants``: one read of the source feeds several outputs, ``OUT/<variant>/`` each.

Every variant is planned on its own (its own ``Options``, its own shard layout) from the one opened
checkpoint, so each directory is the one a single run with those options writes. The runs then write
together: every variant's sidecars, index and manifest as ``convert`` writes them (one thread each), and
their shards from one pass over the source (``run_together``): each block of source rows is read once and
handed to every variant's transform and writer in turn. Memory: one block of source rows in flight per
task, as a single run, plus the block's outputs of the variant being written (at most one per worker).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, cast

import numpy as np

from ..core import dtypes
from ..core.sizes import human_bytes
from ..errors import Torch2MLXError, one_line
from ..formats import remote
from ..formats.data import DataReader
from .execute import CHUNK, Executor, _row_bytes, _yield_to_hasher, compute_outputs
from .options import OUT_DTYPES, Options
from .plan import Op
from .progress import progress_bar
from .result import Result
from .writers.files import check_free_space, fsync_dir, os_error, pwrite_all

DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "f16": "float16", "fp32": "float32", "f32": "float32"}
_QUANT_SETTINGS = ("q_bits", "q_recipe", "q_mode")


def parse_variants(variants, settings: dict) -> list[tuple[str, dict]]:
    """``variants`` ("bf16,q8,q4,mixed_3_6" or a list) -> ``[(name, settings of its single run)]``.

    ``settings`` are the run's other keyword settings; ``q_group_size`` applies to the ``qN`` and recipe
    variants. A name that is none of the kinds, a duplicate, or a quantization setting given beside
    (which variant would it belong to?) is refused.
    """
    from ..core import quant, quant_fp, quant_recipes

    names = [v.strip() for v in variants.split(",")] if isinstance(variants, str) else [str(v) for v in variants]
    if not names or any(not n for n in names):
        raise Torch2MLXError(f"variants: a comma-separated list of variant names expected, got {variants!r}")
    given = [k for k in _QUANT_SETTINGS if settings.get(k) is not None]
    if given:
        raise Torch2MLXError(
            f"variants name each output's quantization; {', '.join(given)} does not combine with variants "
            "(give it as a variant: q4, mixed_3_6, mxfp4)"
        )
    if settings.get("dequantize"):
        raise Torch2MLXError("variants: dequantize does not combine with variants")
    base = {k: v for k, v in settings.items() if k not in _QUANT_SETTINGS}
    group = base.pop("q_group_size", None)
    out: list[tuple[str, dict]] = []
    seen: dict[tuple, str] = {}
    for name in names:
        dtype = DTYPE_NAMES.get(name, name)
        if dtype in OUT_DTYPES and dtype != "keep":
            one = dict(base, dtype=dtype)
        elif name.startswith("q") and name[1:].isdigit() and int(name[1:]) in quant.BITS:
            one = dict(base, q_bits=int(name[1:]), q_group_size=group)
        elif name in quant_recipes.MIXED_RECIPES:
            one = dict(base, q_recipe=name, q_group_size=group)
        elif name in quant_fp.MODES:
            one = dict(base, q_mode=name)
        else:
            raise Torch2MLXError(
                f"variants: {name!r} is not a variant: an output dtype ({', '.join(OUT_DTYPES[1:])}, or bf16/fp16/"
                f"fp32), qN (N in {', '.join(map(str, quant.BITS))}), a recipe "
                f"({', '.join(sorted(quant_recipes.MIXED_RECIPES))}) or a mode ({', '.join(quant_fp.MODES)})"
            )
        same = tuple(sorted((k, repr(v)) for k, v in one.items()))
        if same in seen:
            raise Torch2MLXError(f"variants: {name!r} repeats {seen[same]!r} (the same output twice)")
        seen[same] = name
        if name in (".", "..") or os.sep in name:
            raise Torch2MLXError(f"variants: {name!r} cannot name a directory")
        out.append((name, one))
    return out


@dataclasses.dataclass
class VariantsResult:
    """What a ``--variants`` run did: one ``Result`` per variant, and the one read of the source."""

    source: str
    out: str | None
    names: list[str]
    results: list[Result]
    dry_run: bool = False
    seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def nbytes_in(self) -> int:
        """The source bytes read: once, whatever the number of variants."""
        return self.results[0].nbytes_in

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "out": self.out,
            "dry_run": self.dry_run,
            "bytes_in": self.nbytes_in,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
            "variants": {n: r.to_dict() for n, r in zip(self.names, self.results, strict=True)},
        }

    def report(self) -> str:
        verb = "would read" if self.dry_run else "read"
        lines = [
            f"{verb} {one_line(self.source)} once ({human_bytes(self.nbytes_in)}) for {len(self.names)} variants"
            + ("" if self.dry_run else f" in {self.seconds:.2f} s")
            + ":"
        ]
        width = max(len(n) for n in self.names)
        for n, r in zip(self.names, self.results, strict=True):
            p = r.plan
            where = "" if self.out is None else f"  -> {one_line(os.path.join(self.out, n))}"
            size = human_bytes(p.nbytes_out if self.dry_run else r.nbytes_out)
            lines.append(f"  {n.ljust(width)}  {size} in {len(p.shards)} shard(s){where}")
        lines += [f"note: {one_line(x)}" for x in self.notes]
        shown: set[str] = set()
        for r in self.results:
            for w in r.plan.warnings:
                if w not in shown:
                    shown.add(w)
                    lines.append(f"warning: {one_line(w)}")
        return "\n".join(lines)


class _OnceReader:
    """A task's view of the reader: each block of source rows is read once, then served to every variant."""

    def __init__(self, reader: DataReader):
        self._reader = reader
        self._blocks: dict = {}

    def __getattr__(self, name):
        return getattr(self._reader, name)

    def _once(self, kind: str, entry, args: tuple, read):
        key = (kind, _entry_key(entry), args)
        got = self._blocks.get(key)
        if got is None:
            got = self._blocks[key] = read()
            if isinstance(got, np.ndarray):
                got.flags.writeable = False  # shared by the variants: a transform must not change it
        return got

    def read_rows(self, entry, start, stop, axis=0):
        return self._once("rows", entry, (start, stop, axis), lambda: self._reader.read_rows(entry, start, stop, axis))

    def read_flat(self, entry, start, stop):
        return self._once("flat", entry, (start, stop), lambda: self._reader.read_flat(entry, start, stop))

    def read_all(self, entry):
        return self._once("all", entry, (), lambda: self._reader.read_all(entry))


def _entry_key(e):
    """The same source tensor in every variant's plan (bytes in a file by place; anything else by object)."""
    if e.in_file:
        return (e.name, e.path, e.offset, e.shape, e.dtype.name)
    return id(e.loader if e.loader is not None else e.array if e.array is not None else e)


def _groups(plans) -> list[list[tuple[int, Op]]]:
    """The ops that read the same source tensors the same way, one from each plan (in the first plan's order)."""
    by_key: dict = {}
    order: list = []
    for i, plan in enumerate(plans):
        for op in plan.ops:
            key: tuple[Any, ...] = (
                op.rule,
                tuple(_entry_key(e) for e in op.sources),
                op.outputs[0].name,
                op.outputs[0].shape[:1],
            )
            while key in by_key and i in by_key[key]:  # the same source read twice by one plan: its own group
                key = (*key, "again")
            if key not in by_key:
                by_key[key] = {}
                order.append(key)
            by_key[key][i] = op
    return [list(by_key[k].items()) for k in order]


def _blocks(group, chunk: int) -> list[tuple[int, int]]:
    """Row ranges of a group's ops, cut as a single run cuts them (about ``chunk`` bytes of float32 each)."""
    out = group[0][1].outputs[0]
    if not out.shape:
        return [(0, 1)]
    row = 1
    for _, op in group:
        row = max([row, _row_bytes(op.outputs[0].shape, 1)] + [_row_bytes(e.shape, 1) for e in op.sources])
    per = max(1, chunk // (row * 8))
    rows = out.shape[0]
    return [(s, min(s + per, rows)) for s in range(0, rows, per)] or [(0, 0)]


def run_together(
    execs: list[Executor], reader: DataReader, workers: int, progress=None, chunk: int = CHUNK, stop=None
) -> None:
    """Write every executor's shards (all of them) from one pass over the source; ``stop`` (an Event) set:
    stop at the next block (Ctrl-C in the thread that waits for the variants)."""
    groups = _groups([ex.plan for ex in execs])
    if any(reader.remote_file(g[0][1].sources[0].path or "") for g in groups):
        # as Executor.run: a remote source in its own order, so its windows are fetched once
        groups.sort(key=lambda g: (g[0][1].sources[0].path or "", g[0][1].sources[0].offset or 0))
    tasks = [(g, s, t) for g in groups for s, t in _blocks(g, chunk)]
    work: list[list] = []
    size = 0
    for task in tasks:
        g, s, t = task
        op = g[0][1]
        rows = op.outputs[0].shape[0] if op.outputs[0].shape else 1
        n = op.nbytes_in * (t - s) // max(rows, 1)
        if not work or size + n > chunk:
            work.append([])
            size = 0
        work[-1].append(task)
        size += n
    dtypes.load_numpy()  # before the workers that compute with it

    def run(batch) -> int:
        ranges: list[list] = [[] for _ in execs]
        done_in = 0
        for g, s, t in batch:
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            once = _OnceReader(reader)
            for i, op in g:
                ex = execs[i]
                for o, block in zip(op.outputs, compute_outputs(op, cast(DataReader, once), s, t), strict=True):
                    block = np.ascontiguousarray(block)
                    unit = _row_bytes(o.shape, o.dtype.itemsize) if o.shape else 0
                    at = len(ex.plan.shards[o.shard].header) + o.offset + s * unit
                    try:
                        pwrite_all(ex._fds[o.shard], block.reshape(-1).view(np.uint8), at)
                    except OSError as e:
                        raise os_error(os.path.join(ex.out_dir, ex.plan.shards[o.shard].file), e) from None
                    ranges[i].append((o.shard, at, at + block.nbytes))
            op = g[0][1]
            rows = op.outputs[0].shape[0] if op.outputs[0].shape else 1
            done_in += op.nbytes_in * (t - s) // max(rows, 1)
        for ex, rs in zip(execs, ranges, strict=True):
            with ex._cond:
                for shard, lo, hi in rs:
                    ex._states[shard].add(lo, hi)
                ex._cond.notify_all()
        return done_in

    hasher = ThreadPoolExecutor(len(execs), thread_name_prefix="t2mlx-hash")
    pool = ThreadPoolExecutor(workers, thread_name_prefix="t2mlx-work", initializer=_yield_to_hasher)
    try:
        for ex in execs:
            if ex._in_memory:
                try:
                    check_free_space(ex.out_dir, sum(s.size for s in ex.plan.shards))
                except OSError as e:
                    raise os_error(ex.out_dir, e) from None
            for i in range(len(ex.plan.shards)):
                ex._open_shard(i)
        hashing = [hasher.submit(ex._hash_and_finish, list(range(len(ex.plan.shards)))) for ex in execs]
        for f in as_completed([pool.submit(run, b) for b in work]):
            n = f.result()  # re-raises a worker's error
            if progress:
                progress(n)
        for h in hashing:
            h.result()
        for ex in execs:
            fsync_dir(ex.out_dir)
    except BaseException:
        for ex in execs:
            with ex._cond:
                ex._failed = True
                ex._cond.notify_all()
        pool.shutdown(wait=True, cancel_futures=True)
        hasher.shutdown(wait=True, cancel_futures=True)
        for ex in execs:
            ex.abort()
        raise
    pool.shutdown()
    hasher.shutdown()


class _Together:
    """Meets every variant's writing thread at its shards, writes them all in one pass, lets each go on."""

    def __init__(self, n: int, workers: int | None, drop_cache: bool, update):
        self.barrier = threading.Barrier(n)
        self.execs: list[Executor | None] = [None] * n
        self.workers = workers or min(4, (os.cpu_count() or 2) + 1)
        self.drop_cache, self.update = drop_cache, update
        self.finished = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def cancel(self) -> None:
        """Stop every variant: those not at the meeting point yet, and the shared pass at its next block."""
        self.stop.set()
        self.barrier.abort()

    def execute(self, i: int):
        def run(plan, out, _update, on_shard, todo) -> None:
            assert len(todo) == len(plan.shards)  # no resume with variants: every shard is written
            self.execs[i] = Executor(plan, out, reader=None, drop_cache=self.drop_cache, on_shard=on_shard)  # type: ignore[arg-type]
            try:
                first = self.barrier.wait() == 0
            except threading.BrokenBarrierError:
                raise _OtherFailed() from None
            if first:
                try:
                    with DataReader(drop_cache=self.drop_cache) as reader:
                        run_together(self.execs, reader, self.workers, self.update, stop=self.stop)  # type: ignore[arg-type]
                except BaseException as e:
                    self.error = e
                    raise
                finally:
                    self.finished.set()
            else:
                self.finished.wait()
                if self.error is not None:
                    raise _OtherFailed()

        return run


class _OtherFailed(Torch2MLXError):
    """This variant stopped because another one failed (that one's error is the one raised)."""

    def __init__(self):
        super().__init__("stopped: another variant failed")


def write_all(
    names: list[str],
    results: list[Result],
    opts_list: list[Options],
    out: str,
    write_dir,
    *,
    overwrite: bool,
    workers,
    progress: bool,
) -> None:
    """Every variant's directory, their shards from one read (``write_dir``: ``convert._write_dir``)."""
    plan0 = results[0].plan
    fetched = (lambda: remote.STATS.bytes) if results[0].checkpoint.remote else None
    bar, update = progress_bar(plan0.nbytes_in, progress, desc=f"{len(names)} variants", fetched=fetched)
    together = _Together(len(names), workers, opts_list[0].drop_cache, update)
    errors: list[BaseException | None] = [None] * len(names)

    def one(i: int) -> None:
        try:
            write_dir(
                results[i],
                results[i].checkpoint,
                opts_list[i],
                os.path.join(out, names[i]),
                overwrite=overwrite,
                workers=workers,
                execute=together.execute(i),
            )
        except BaseException as e:
            errors[i] = e
            together.barrier.abort()  # the others stop at the meeting point instead of waiting for this one

    threads = [threading.Thread(target=one, args=(i,), name=f"t2mlx-variant-{n}") for i, n in enumerate(names)]
    try:
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        except BaseException as e:  # Ctrl-C or SIGTERM while the variants write: every one stops and cleans up
            together.cancel()
            for t in threads:
                if t.is_alive() or t.ident is not None:
                    t.join()
            done = all(x is None for x in errors)  # it came as the last variant finished
            e.__dict__["left"] = (
                "every variant had been written whole"
                if done
                else "no shard kept: each OUT/<variant> of this run removed or emptied again"
            )
            raise
    finally:
        if bar is not None:
            bar.close()
    first = next((e for e in errors if e is not None and not isinstance(e, _OtherFailed)), None)
    first = first or next((e for e in errors if e is not None), None)
    if first is not None:
        raise first


def settings_of(options: Options) -> dict:
    """An ``Options`` as the keyword settings ``Options.make`` takes (the variants then add their own)."""
    s = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    if not options.quantizing:  # the defaults a run without quantization holds
        s.update(q_group_size=None, q_mode=None)
    if options.adapter is None:
        s.update(adapter_scale=None, adapter_sha256=None)
    return s
