"""``convert``: open -> plan -> execute -> index. The CLI's ``stream`` is a thin wrapper of this."""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from typing import Any

from ..errors import Torch2MLXError
from .checkpoint import Checkpoint, open_checkpoint
from .data import DataReader
from .execute import Executor, ShardResult
from .options import Options
from . import manifest as manifest_mod, mlx_source
from . import resume as resume_mod
from .plan import Plan
from .result import Result, manifest
from .planner import build
from . import sidecar_config
from .writers import out_lock, output_dir
from .writers.target import Target

FORMATS = ("safetensors", "zarr")


def _convert_zarr(
    res: Result, ck: Checkpoint, opts: Options, plan: Plan, out: str, progress: bool, workers, compressor: str
) -> Result:
    from .writers import zarr_store

    res.sidecars = output_dir.copy_sidecars(ck.sidecars, out, rewrite=sidecar_config.rewrite(ck, opts, plan))
    t0 = time.perf_counter()
    bar, update = progress_bar(plan.nbytes_in, progress)
    created: list[str] = []
    try:
        zarr_store.write(plan, out, compressor=compressor, workers=workers, progress=update, created=created)
        zarr_store.finish(out, zarr_store.manifest(plan, res.source, opts.to_dict(), compressor, source_key=ck.key))
    except (OSError, Torch2MLXError) as e:
        if isinstance(e, Torch2MLXError) and not created:
            raise  # refused before anything was written (names, options)
        raise zarr_store.failed(out, e, created) from None
    finally:
        if bar is not None:
            bar.close()
    res.seconds = time.perf_counter() - t0
    res.format = "zarr"
    return res


def progress_bar(total: int, enabled: bool, desc: str = "converting"):
    """``(bar, update)`` of a byte-count bar on stderr, ``(None, None)`` when not ``enabled``."""
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        desc=desc,
        dynamic_ncols=True,
        leave=False,
    )
    return bar, bar.update


def status_line(text: str | None) -> None:
    """A transient line on stderr while a slow step runs; erased (``None``) when it is done, as the bar is."""
    from ..errors import one_line

    sys.stderr.write("\r\033[K" + (one_line(text) if text else ""))
    sys.stderr.flush()


def model_choice(model, model_kwargs) -> tuple[str | None, Any, bool, Any]:
    """``model`` as ``convert`` takes it -> (class path, kwargs, whether to look for a model, analyzer result)."""
    if model is None:
        return None, model_kwargs, True, None
    if model is False:
        return None, model_kwargs, False, None
    if isinstance(model, str):
        return model, model_kwargs, True, None
    if hasattr(model, "specs") and hasattr(model, "drop"):
        if model_kwargs is not None:
            raise Torch2MLXError("model_kwargs applies to a model class path, not to an analyzer result")
        return None, None, False, model
    raise Torch2MLXError(
        "model must be None (a config.json next to the weights, if any), False (no model), "
        "a class path 'pkg.mod:Class' or an analyzer result (StreamInputs), "
        f"got {type(model).__name__}"
    )


def plan_source(src, options: Options, *, model=None, model_kwargs=None, status=None) -> tuple[Checkpoint, Plan]:
    """Open ``src`` (a path or an opened ``Checkpoint``) and plan its conversion; no tensor data is read.

    ``model`` as for ``convert``; ``status(text)`` is told before a slow step without output starts
    (the analyzer's first run), ``status(None)`` when it is over.
    """
    opts = options
    path, model_kwargs, use_model, inputs = model_choice(model, model_kwargs)
    ck = src if isinstance(src, Checkpoint) else open_checkpoint(src, key=opts.key, allow_globals=opts.allow_globals)
    notes = []
    module_types = None
    already = mlx_source.detect(ck) if path is None and inputs is None else None
    if already is not None:
        # No model for it: its tensors have MLX names and layouts already (and the analyzer needs torch).
        if already.quantized and opts.quantizing:
            raise Torch2MLXError(
                f"{ck.path}: {already.describe()}; q_bits/q_recipe need float weights: "
                f"dequantize first with `t2mlx stream {ck.path} OUT --to torch`, then quantize that"
            )
        ck = dataclasses.replace(ck, layout="mlx")
        notes.append(f"source is {already.describe()}: names and layouts kept, no model analysis")
        use_model = False
    if inputs is None and (use_model or path is not None):
        from ..core.model_rules import stream_inputs

        inputs = stream_inputs(ck, model=path, model_kwargs=model_kwargs, status=status)
    specs = drop = None
    if inputs is not None:
        specs, drop, notes = inputs.specs, inputs.drop, notes + list(inputs.notes)
        if inputs.report is not None or getattr(inputs, "types", None) is not None:
            module_types = inputs.module_types
    plan = build(ck, opts, specs, drop, module_types)
    if already is not None:  # the note above says it better
        plan.warnings = [w for w in plan.warnings if not w.startswith("source is already in MLX layout")]
    plan.notes += notes
    if inputs is not None:
        plan.warnings[:0] = inputs.all_warnings({n for n, _ in plan.dropped})
    return ck, plan


def convert(
    src,
    out,
    options: Options | None = None,
    *,
    model=None,
    model_kwargs=None,
    format: str = "safetensors",
    overwrite: bool = False,
    resume: bool = False,
    dry_run: bool = False,
    workers: int | None = None,
    progress: bool = False,
    hook=None,
    **settings,
) -> Result:
    """Convert a PyTorch checkpoint into MLX safetensors shards (or a zarr store) in directory ``out``.

    Args:
        src: a checkpoint file or directory (safetensors, torch zip/legacy pickles, npz, zarr),
            or a ``Checkpoint`` from ``stream.open`` (e.g. opened with ``allow_globals``).
        out: the output directory; ``None`` only with ``dry_run``.
        options: every conversion setting as one ``Options`` (``Options.make(dtype="float16", ...)``).
        **settings: instead of ``options``, its fields as keywords (``dtype``, ``max_shard_size``,
            ``strip_prefix``, ``exclude``, ``rules``, ``key``, ``q_bits``, ``q_group_size``, ``q_recipe``,
            ``allow_globals``, ``zarr_compressor``, ``drop_cache``); giving both is refused.
        model: where exact rules come from. ``None``: a config.json next to the weights that
            transformers knows (analyzed on the meta device; imports torch), else shape inference;
            ``False``: shape inference only, never imports torch; ``"pkg.mod:Class"``: that class,
            built with ``model_kwargs`` (a dict or a JSON string); or an analyzer result
            (``analysis.stream_inputs.StreamInputs``: specs, drops and notes as given).
        model_kwargs: constructor keywords for a class path ``model``.
        format: ``"safetensors"`` or ``"zarr"``.
        overwrite: replace a non-empty ``out`` (the old output stays whole until the new one is).
        resume: reuse the shards of an interrupted run whose size and sha256 still match its manifest.
        dry_run: plan only; nothing is read or written.
        workers: writer threads (default: by core count).
        progress: a progress bar and status lines on stderr.
        hook: ``hook(name, array, dtype)`` sees each planned tensor (an ``mx.array``) and may rename it
            (return ``(new_name, array[, dtype])``), drop it (``None``) or replace it; tensors then go
            through ``ShardWriter`` one at a time. Not with quantization, ``resume`` or zarr.

    Returns:
        Result: ``report()`` is the text the CLI prints, ``to_dict()`` its JSON, ``plan`` the plan.

    Raises:
        Torch2MLXError: bad input (unreadable source, bad option, contradictory options, a non-empty
            ``out`` without ``overwrite``/``resume``); ``out`` is left as it was, or with its finished
            shards for ``resume``. Nothing from a pickle is ever executed.

    Example:
        >>> from torch2mlx import stream
        >>> res = stream.convert("./my-model", "./my-model-mlx", dtype="float16", model=False)  # doctest: +SKIP
        >>> res.tensors_out  # doctest: +SKIP
        291
    """
    opts = Options.resolve(options, settings)
    if resume and overwrite:
        raise Torch2MLXError(
            "resume and overwrite contradict each other: resume keeps out's finished "
            "shards, overwrite throws them away; give one"
        )
    if out is None and not dry_run:
        raise Torch2MLXError("out is required (or dry_run=True)")
    if format not in FORMATS:
        raise Torch2MLXError(f"format must be one of {', '.join(FORMATS)} (bin: stream.to_torch), got {format!r}")
    if resume and opts.key is None and not isinstance(src, Checkpoint):
        # the nesting the interrupted run chose
        opts = dataclasses.replace(opts, key=resume_mod.recorded_key(os.fspath(out)))
    ck, plan = plan_source(src, opts, model=model, model_kwargs=model_kwargs, status=status_line if progress else None)
    label = ck.path if isinstance(src, Checkpoint) else str(src)
    res = Result(label, None if dry_run else str(out), plan, ck, dry_run=dry_run)
    if dry_run:
        return res
    out = os.fspath(out)
    if hook is not None and (resume or format == "zarr"):
        raise Torch2MLXError("a hook does not combine with resume or format='zarr'")
    if hook is not None and any(len(op.outputs) > 1 for op in plan.ops):
        # A hook sees one array a tensor; a quantized weight is three (codes, scales, biases).
        raise Torch2MLXError(
            "a hook cannot be combined with quantization (q_bits/q_recipe): "
            "convert with the hook first, then quantize that output in a second run"
        )
    if format == "zarr" and resume:
        raise Torch2MLXError("format='zarr' does not combine with resume")
    if format == "zarr":
        from .writers import zarr_store

        zarr_store.check_names(plan)  # before OUT is touched
    res.source_files = resume_mod.source_identity(ck.path, ck.files)
    output_dir.check_target(out, ck.files)
    existed = os.path.isdir(out)  # the lock creates OUT: what a failure restores is decided before it
    with out_lock.locked(out):
        fp = resume_mod.fingerprint(plan)
        do_resume = resume and output_dir.has_contents(out)
        if not (overwrite or resume or hook) and output_dir.has_contents(out):  # resume takes no hook
            hint = resume_mod.interrupted_run(out, fp, ck.path, res.source_files)
            if hint:
                raise Torch2MLXError(hint)
        done: dict[int, ShardResult] = {}
        if do_resume:  # before OUT is touched: a refused resume leaves it as it was
            keep, digests, notes = resume_mod.finished_shards(plan, out, fp, ck.path, res.source_files)
            plan.notes += notes
            done = {i: ShardResult(plan.shards[i].file, plan.shards[i].size, digests[i]) for i in keep}
            res.reused = len(done)
            res.bytes_in = sum(op.nbytes_in for op in plan.ops if op.outputs[0].shard not in done)
            res.bytes_out = sum(plan.shards[i].data_size for i in range(len(plan.shards)) if i not in done)
        # overwrite writes beside the old output and swaps at the end; a failure says what it left.
        with Target(
            out,
            overwrite=overwrite,
            src_paths=ck.files,
            resume=do_resume,
            existed=existed,
            resumable=format == "safetensors" and hook is None,
            shards=len(plan.shards),
        ) as target:
            if format == "zarr":
                _convert_zarr(res, ck, opts, plan, target.dir, progress, workers, opts.zarr_compressor)
            else:
                _write_shards(
                    res, ck, opts, plan, target.dir, hook, done, progress, workers, opts.drop_cache, fresh=not do_resume
                )
    return res


def _write_shards(
    res: Result,
    ck: Checkpoint,
    opts: Options,
    plan: Plan,
    out: str,
    hook,
    done: dict[int, ShardResult],
    progress: bool,
    workers,
    drop_cache: bool,
    fresh: bool,
) -> None:
    """Sidecars, the shards not ``done`` yet, the index, then the manifest that says complete."""
    # Sidecars first: a ShardWriter (hook) writes its index when it closes, and nothing follows an index
    # but the manifest that says complete.
    res.sidecars = output_dir.copy_sidecars(ck.sidecars, out, rewrite=sidecar_config.rewrite(ck, opts, plan))
    if hook is None and fresh:
        # Before any shard: an interrupted run is known as one (and resumable) from the start.
        manifest_mod.write(out, manifest(res, opts, complete=False))
    t0 = time.perf_counter()
    todo = [i for i in range(len(plan.shards)) if i not in done]
    bar, update = progress_bar(res.nbytes_in, progress)
    lock = threading.Lock()
    index_of = {s.file: i for i, s in enumerate(plan.shards)}

    def shard_done(r: ShardResult):
        # Record each finished shard at once: a crash later loses only unfinished shards.
        with lock:
            done[index_of[r.file]] = r
            res.shards = [done[i] for i in sorted(done)]
            manifest_mod.write(out, manifest(res, opts, complete=False))

    try:
        if hook is not None:
            from .user_hook import run_hook

            res.shards, res.written, res.bytes_out = run_hook(
                plan, out, hook, opts, update, res.source, res.source_files
            )
        else:
            with DataReader(drop_cache=drop_cache) as reader:
                ex = Executor(
                    plan,
                    out,
                    reader=reader,
                    workers=workers,
                    progress=update,
                    drop_cache=drop_cache,
                    on_shard=shard_done,
                )
                ex.run(todo)
            res.shards = [done[i] for i in sorted(done)]
    finally:
        if bar is not None:
            bar.close()
    if hook is None:  # the ShardWriter behind a hook wrote its own manifest and index
        weight_map = {o.name: plan.shards[o.shard].file for op in plan.ops for o in op.outputs}
        output_dir.write_index(out, weight_map, plan.nbytes_out)
        # complete only once the index exists (a failure here removes the index again)
        manifest_mod.write(out, manifest(res, opts))
    res.seconds = time.perf_counter() - t0
