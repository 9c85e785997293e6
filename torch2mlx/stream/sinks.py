"""The output formats, as one table: each a writer with the same signature, ``write(run)``, and what it can do.

``convert`` and ``to_torch`` look the format up here instead of branching on its name: which direction
writes it, whether a failed run can be resumed, whether a user hook can feed it, what it refuses before
OUT is touched, what its shards are called. Error messages and ``--format``'s choices list the
formats from this table.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import Torch2MLXError
from ..formats import remote
from ..formats.data import DataReader
from ..formats.integrity import IntegrityError
from . import card
from . import manifest as manifest_mod
from .execute import Executor, ShardResult
from .options import Options
from .plan import Plan, shard_name
from .progress import progress_bar
from .result import Result, manifest
from .writers import output_dir

FORWARD, REVERSE, GGUF = "mlx", "torch", "gguf"  # the directions, as --to names them


@dataclass
class Run:
    """Everything a sink's writer needs: the plan and checkpoint (in ``res``, where it records what it wrote),
    the settings, the directory to write into, and how to work."""

    res: Result
    opts: Options
    out: str  # the directory written into (the Target's: OUT itself or a staging directory inside it); gguf: the file
    progress: bool = False
    workers: int | None = None
    rewrite: dict[str, dict] | None = None  # sidecar files whose JSON content is replaced
    hook: Callable | None = None  # the user hook: tensors go through ShardWriter one at a time
    done: dict[int, ShardResult] = field(default_factory=dict)  # shards a resumed run keeps
    fresh: bool = True  # nothing of an earlier run is reused
    resumable: bool = False  # a failure may keep finished shards: the manifest says so from the start
    reader: DataReader | None = None  # the reverse plan's reader, serving its dequantized sources
    to_torch: dict | None = None  # what a run back to PyTorch records in its manifest
    card: str | None = None  # the command the model card names; None: no card (the source's README.md copied)
    # writes the shards instead of an own Executor: ``execute(plan, out, progress, on_shard, todo)``
    # (--variants: one read of the source feeds every variant's shards)
    execute: Callable | None = None

    @property
    def plan(self) -> Plan:
        return self.res.plan

    def manifest(self, complete: bool = True) -> manifest_mod.Manifest:
        return manifest(self.res, self.opts, complete=complete, to_torch=self.to_torch)

    def bar(self):
        fetched = (lambda: remote.STATS.bytes) if self.res.checkpoint.remote else None  # network bytes beside
        return progress_bar(
            self.res.nbytes_in, self.progress, desc="to torch" if self.to_torch else "converting", fetched=fetched
        )


@dataclass(frozen=True)
class Sink:
    name: str  # as --format and ``format=`` name it
    write: Callable[[Run], None]
    directions: tuple[str, ...]  # FORWARD, REVERSE: which runs write it
    resumable: bool = False  # a failed run keeps its finished shards for resume
    takes_hook: bool = False  # a user hook can feed it
    check: Callable[[Plan], None] | None = None  # refuses a plan before OUT is touched
    shard_name: Callable[[int, int], str] | None = None  # shard ``i`` of ``n``, when not the plan's name


def _write_shards(run: Run, index: str, write: Callable[[Callable, Callable], None]) -> None:
    """Sidecars, the shards not ``done`` yet (``write(progress, on_shard)``), the index, then the manifest
    that says complete."""
    res, plan, out = run.res, run.plan, run.out
    # Sidecars first: a ShardWriter (hook) writes its index when it closes, and nothing follows an index
    # but the manifest that says complete.
    sidecars = res.checkpoint.sidecars
    if run.card is not None:  # the card is built on the source's README.md instead
        sidecars = [p for p in sidecars if os.path.basename(p) != card.NAME]
    res.sidecars = output_dir.copy_sidecars(sidecars, out, rewrite=run.rewrite)
    if run.resumable and run.fresh:
        # Before any shard: an interrupted run is known as one (and resumable) from the start.
        manifest_mod.write(out, run.manifest(complete=False))
    t0 = time.perf_counter()
    done = run.done
    lock = threading.Lock()
    index_of = {s.file: i for i, s in enumerate(plan.shards)}

    def shard_done(r: ShardResult):
        # Record each finished shard at once: a crash later loses only unfinished shards.
        with lock:
            done[index_of[r.file]] = r
            res.shards = [done[i] for i in sorted(done)]
            manifest_mod.write(out, run.manifest(complete=False))

    bar, update = run.bar()
    try:
        if run.hook is not None:
            from .user_hook import run_hook

            card_now = None if run.card is None else (lambda sizes, n: _write_card(run, sizes, n))
            res.shards, res.written, res.bytes_out = run_hook(
                plan, out, run.hook, run.opts, update, res.source, res.source_files, before_index=card_now
            )
        else:
            try:
                write(update, shard_done)
            except IntegrityError as e:
                _drop_shards_from(run, e.label, done)
                raise
            res.shards = [done[i] for i in sorted(done)]
    finally:
        if bar is not None:
            bar.close()
    if res.checkpoint.remote:  # what the bytes read were checked against, per source file
        for name, how in remote.checked(res.checkpoint.files).items():
            if isinstance(res.source_files.get(name), dict):
                res.source_files[name]["checked"] = how
    if run.hook is None:  # the ShardWriter behind a hook wrote its own manifest, card and index
        if run.card is not None:  # before the index: nothing follows it but the manifest
            _write_card(run, [s.bytes for s in res.shards], res.tensors_out)
        weight_map = {o.name: plan.shards[o.shard].file for op in plan.ops for o in op.outputs}
        output_dir.write_index(out, weight_map, plan.nbytes_out, index)
        # complete only once the index exists (a failure here removes the index again)
        manifest_mod.write(out, run.manifest())
    res.seconds = time.perf_counter() - t0


def _write_card(run: Run, sizes: list[int], tensors: int) -> None:
    """The model card of a finished output (``sizes``: its shards' bytes; ``tensors``: how many)."""
    res = run.res
    assert run.card is not None  # called only when a card is asked for
    config = (run.rewrite or {}).get("config.json", res.checkpoint.config)
    facts = card.facts_for_run(res, run.opts, run.card, config, sizes, tensors)
    res.card = card.write(run.out, facts)
    res.plan.notes += facts.notes


def _drop_shards_from(run: Run, label: str, done: dict[int, ShardResult]) -> None:
    """Unrecord and remove the finished shards made from a source file whose bytes failed their check:
    they were written before its last byte arrived, and --resume must not keep them."""
    plan = run.plan
    bad = {o.shard for op in plan.ops if any(e.path == label for e in op.sources) for o in op.outputs}
    for i in sorted(bad & done.keys()):
        del done[i]
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(run.out, plan.shards[i].file))
    run.res.shards = [done[i] for i in sorted(done)]
    if run.resumable:
        manifest_mod.write(run.out, run.manifest(complete=False))


def write_safetensors(run: Run) -> None:
    """Shards at known offsets by the threaded executor (``execute.py``), ``model.safetensors.index.json``."""

    def write(update, shard_done):
        todo = [i for i in range(len(run.plan.shards)) if i not in run.done]
        if run.execute is not None:
            run.execute(run.plan, run.out, update, shard_done, todo)
            return
        drop_cache = run.opts.drop_cache
        with DataReader(drop_cache=drop_cache) as reader:
            Executor(
                run.plan,
                run.out,
                reader=reader,
                workers=run.workers,
                progress=update,
                drop_cache=drop_cache,
                on_shard=shard_done,
            ).run(todo)

    _write_shards(run, output_dir.INDEX, write)


def write_bin(run: Run) -> None:
    """PyTorch zip pickles written front to back (``writers/torch_bin.py``), ``pytorch_model.bin.index.json``."""
    from .writers import torch_bin

    def write(update, shard_done):
        own = DataReader(drop_cache=run.opts.drop_cache) if run.reader is None else contextlib.nullcontext(run.reader)
        with own as reader:
            torch_bin.write(run.plan, run.out, reader=reader, workers=run.workers, progress=update, on_shard=shard_done)

    _write_shards(run, output_dir.BIN_INDEX, write)


def write_zarr(run: Run) -> None:
    """One array per tensor (``writers/zarr_store.py``); a failure removes the arrays it made."""
    from .writers import zarr_store

    res, plan, out, opts = run.res, run.plan, run.out, run.opts
    res.sidecars = output_dir.copy_sidecars(res.checkpoint.sidecars, out, rewrite=run.rewrite)
    t0 = time.perf_counter()
    bar, update = run.bar()
    created: list[str] = []
    try:
        zarr_store.write(
            plan, out, compressor=opts.zarr_compressor, workers=run.workers, progress=update, created=created
        )
        zarr_store.finish(
            out,
            zarr_store.manifest(plan, res.source, opts.to_dict(), opts.zarr_compressor, source_key=res.checkpoint.key),
        )
    except (OSError, Torch2MLXError) as e:
        if isinstance(e, Torch2MLXError) and not created:
            raise  # refused before anything was written (names, options)
        raise zarr_store.failed(out, e, created) from None
    finally:
        if bar is not None:
            bar.close()
    res.seconds = time.perf_counter() - t0
    res.format = "zarr"


def write_gguf(run: Run) -> None:
    """One llama.cpp GGUF file (``writers/gguf_file.py``): ``run.out`` is the file, ``run.res`` a
    ``to_gguf.GGUFResult`` whose plan names each GGUF tensor."""
    from .progress import progress_bar
    from .writers import gguf_file

    plan: Any = run.res.plan  # a to_gguf_plan.GGUFPlan
    bar, update = progress_bar(plan.nbytes_out, run.progress, desc="to gguf")
    try:
        assert run.reader is not None  # the one serving the plan's dequantized views
        run.res.bytes_out = gguf_file.write(plan, run.out, run.reader, progress=update)
    finally:
        if bar is not None:
            bar.close()


def _check_zarr_names(plan: Plan) -> None:
    from .writers import zarr_store

    zarr_store.check_names(plan)


def _bin_shard_name(i: int, n: int) -> str:
    from .writers import torch_bin

    return torch_bin.shard_name(i, n)


SINKS: dict[str, Sink] = {
    s.name: s
    for s in (
        Sink("safetensors", write_safetensors, (FORWARD, REVERSE), resumable=True, takes_hook=True),
        Sink("zarr", write_zarr, (FORWARD,), check=_check_zarr_names),
        Sink("bin", write_bin, (REVERSE,), shard_name=_bin_shard_name),
        Sink("gguf", write_gguf, (GGUF,)),
    )
}


def directions() -> tuple[str, ...]:
    """Every direction some format is written in (``--to``'s choices), in the table's order."""
    return tuple(dict.fromkeys(d for s in SINKS.values() for d in s.directions))


def refuse_settings(s: Sink, plan: Plan, *, hook=None, resume: bool = False) -> None:
    """Refuse, before OUT is touched, what sink ``s`` cannot do with this plan and these settings."""
    if hook is not None and (resume or not s.takes_hook):
        no_hook = " or ".join(f"format={n!r}" for n in names(FORWARD) if not SINKS[n].takes_hook)
        raise Torch2MLXError(f"a hook does not combine with resume or {no_hook}")
    if hook is not None and any(len(op.outputs) > 1 for op in plan.ops):
        # A hook sees one array a tensor; a quantized weight is three (codes, scales, biases), or two.
        raise Torch2MLXError(
            "a hook cannot be combined with quantization (q_bits/q_recipe/q_mode): "
            "convert with the hook first, then quantize that output in a second run"
        )
    if hook is not None and plan.shards and plan.shards[0].file != shard_name(0, len(plan.shards)):
        # ShardWriter names its own shards: a target that reads one fixed file (mlx-whisper) would not find it
        raise Torch2MLXError(
            f"a hook writes model*.safetensors shards; target {plan.target} reads {plan.shards[0].file} "
            "(give target='mlx' to use a hook)"
        )
    if resume and not s.resumable:
        raise Torch2MLXError(f"format={s.name!r} does not combine with resume")
    if s.check is not None:
        s.check(plan)


def names(direction: str) -> tuple[str, ...]:
    """The formats a run in ``direction`` writes, in the table's order."""
    return tuple(n for n, s in SINKS.items() if direction in s.directions)


def sink(format: str, direction: str) -> Sink:
    """The sink of ``format`` for a run in ``direction``; an error listing the formats there are."""
    s = SINKS.get(format)
    if s is not None and direction in s.directions:
        return s
    if direction == FORWARD:
        by = {REVERSE: "stream.to_torch", GGUF: "stream.to_gguf"}
        other = [f"{n}: {by[s.directions[0]]}" for n, s in SINKS.items() if FORWARD not in s.directions]
        where = f" ({'; '.join(other)})" if other else ""
        raise Torch2MLXError(f"format must be one of {', '.join(names(FORWARD))}{where}, got {format!r}")
    if direction == GGUF:
        raise Torch2MLXError(f"to_gguf writes format {' or '.join(names(GGUF))}, not {format!r}")
    raise Torch2MLXError(f"to_torch writes format {' or '.join(names(REVERSE))}, not {format!r}")
