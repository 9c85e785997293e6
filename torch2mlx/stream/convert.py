"""``convert``: open -> plan -> execute -> index. The CLI's ``stream`` is a thin wrapper of this."""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time

from ..errors import Torch2MLXError
from .checkpoint import Checkpoint, open_checkpoint
from .data import DataReader
from .execute import Executor, ShardResult
from .options import Options
from . import manifest as manifest_mod, mlx_source
from . import resume as resume_mod
from ..core.spec import RuleSpec
from .plan import Plan
from .result import Result, manifest
from .planner import build
from . import sidecar_config
from .writers import out_lock, output_dir
from .writers.target import Target


def _convert_zarr(res: Result, ck: Checkpoint, opts: Options, plan: Plan, out: str,
                  progress: bool, workers, compressor: str) -> Result:
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
            raise                      # refused before anything was written (names, options)
        raise zarr_store.failed(out, e, created) from None
    finally:
        if bar is not None:
            bar.close()
    res.seconds = time.perf_counter() - t0
    res.format = "zarr"
    return res


def progress_bar(total: int, enabled: bool):
    if not enabled:
        return None, None
    from tqdm import tqdm
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
               desc="converting", dynamic_ncols=True, leave=False)
    return bar, bar.update


def prepare(src, *, checkpoint: Checkpoint | None = None, specs: list[RuleSpec] | None = None,
            drop: dict[str, str] | None = None, module_types: dict[str, str] | None = None,
            model: str | None = None, model_kwargs=None, use_model: bool = True, inputs=None, status=None,
            allow_globals=(), **options) -> tuple[Checkpoint, Options, Plan]:
    """Open ``src`` and plan its conversion; no tensor data is read. ``options`` as for ``convert``.

    Without ``specs``, rules come from the model when there is one: ``model`` (a class
    path, with ``model_kwargs``) or a config.json transformers knows next to the weights
    (the analyzer builds it on the meta device; that needs torch). ``use_model=False``
    keeps to shape inference and never imports torch. ``inputs`` (an analyzer
    ``StreamInputs``, e.g. from a live module) gives specs, drops and notes directly.
    ``status(text)`` is told before a slow step without output starts (the analyzer's first run),
    ``status(None)`` when it is over.
    """
    opts = Options.make(**options)
    ck = checkpoint if checkpoint is not None else open_checkpoint(src, key=opts.key, allow_globals=allow_globals)
    notes = []
    already = mlx_source.detect(ck) if model is None and inputs is None else None
    if already is not None:
        # No model for it: its tensors have MLX names and layouts already (and the analyzer needs torch).
        if already.quantized and (opts.q_bits or opts.q_recipe):
            raise Torch2MLXError(f"{ck.path}: {already.describe()}; --q-bits/--q-recipe need float weights: "
                                 f"dequantize first with `t2mlx stream {ck.path} OUT --to torch`, then quantize that")
        ck = dataclasses.replace(ck, layout="mlx")
        notes.append(f"source is {already.describe()}: names and layouts kept, no model analysis")
        use_model = False
    if inputs is None and specs is None and drop is None and (use_model or model is not None):
        from ..core.model_rules import stream_inputs
        inputs = stream_inputs(ck, model=model, model_kwargs=model_kwargs, status=status)
    if inputs is not None:
        got = inputs
        specs, drop, notes = got.specs, got.drop, got.notes
        if module_types is None and got.report is not None:
            module_types = got.module_types
    plan = build(ck, opts, specs, drop, module_types)
    if already is not None:   # the note above says it better
        plan.warnings = [w for w in plan.warnings if not w.startswith("source is already in MLX layout")]
    plan.notes += notes
    if inputs is not None:
        plan.warnings[:0] = inputs.all_warnings({n for n, _ in plan.dropped})
    return ck, opts, plan


def convert(src, out, *, dtype: str = "keep", max_shard_size="5GB", strip_prefix=(), exclude=(), rules=(),
            key: str | None = None, q_bits: int | None = None, q_group_size: int | None = None, q_recipe: str | None = None,
            overwrite: bool = False, dry_run: bool = False, progress: bool = False,
            workers: int | None = None, specs: list[RuleSpec] | None = None, drop: dict[str, str] | None = None,
            module_types: dict[str, str] | None = None, transform=None, checkpoint: Checkpoint | None = None,
            drop_cache: bool = True, resume: bool = False, format: str = "safetensors",
            zarr_compressor: str = "none", model: str | None = None, model_kwargs=None,
            use_model: bool = True, inputs=None, to: str = "mlx", status=None, allow_globals=()) -> Result:
    """Convert checkpoint ``src`` (file or directory) into MLX safetensors shards in directory ``out``.

    Options mirror ``t2mlx stream``. ``resume`` reuses the shards of an interrupted run
    whose size and sha256 still match its manifest and converts the rest. ``drop_cache``
    tells the kernel to drop the pages of bytes already converted, so a 140 GB run
    does not push the user's applications out of memory. ``transform(name, array, dtype)`` may rename
    (return ``(new_name, array[, dtype])``), drop (return ``None``) or replace each
    tensor; with a transform, tensors go through ``ShardWriter`` one at a time. Model
    options (``model``, ``model_kwargs``, ``use_model``, ``inputs``) and ``status`` as for ``prepare``.

    ``to="torch"`` goes the other way: an MLX checkpoint (ours, mlx-lm's, quantized or
    not) back to PyTorch names, layouts and dtypes, ``format`` safetensors or bin
    (see ``to_torch``); ``specs`` are then MLX -> torch specs.

    ``allow_globals`` (``--allow-global``): pickle globals whose calls are accepted as inert
    placeholders instead of refusing the file; nothing from a pickle is ever executed.
    """
    if resume and overwrite:
        raise Torch2MLXError("--resume and --overwrite contradict each other: --resume keeps OUT's finished "
                             "shards, --overwrite throws them away; give one")
    if to == "torch":
        from . import to_torch
        return to_torch.convert(src, out, dtype=dtype, max_shard_size=max_shard_size, strip_prefix=strip_prefix,
                                exclude=exclude, rules=rules, key=key, overwrite=overwrite, dry_run=dry_run,
                                progress=progress, workers=workers, specs=specs, drop=drop, checkpoint=checkpoint,
                                drop_cache=drop_cache, format=format, model=model, model_kwargs=model_kwargs,
                                use_model=use_model, unsupported={"--q-bits": q_bits, "--q-recipe": q_recipe,
                                                                  "--q-group-size": q_group_size is not None,
                                                                  "--resume": resume, "a transform": transform,
                                                                  "--zarr-compressor": zarr_compressor != "none"})
    if to != "mlx":
        raise Torch2MLXError(f"--to must be mlx or torch, got {to!r}")
    if resume and key is None and checkpoint is None:
        key = resume_mod.recorded_key(os.fspath(out))   # the nesting the interrupted run chose
    ck, opts, plan = prepare(src, checkpoint=checkpoint, specs=specs, drop=drop, module_types=module_types,
                             model=model, model_kwargs=model_kwargs, use_model=use_model, inputs=inputs,
                             status=status, dtype=dtype, max_shard_size=max_shard_size, strip_prefix=strip_prefix,
                             exclude=exclude, rules=rules, key=key, q_bits=q_bits, q_group_size=q_group_size,
                             q_recipe=q_recipe, allow_globals=allow_globals)
    res = Result(str(src), None if dry_run else str(out), plan, ck, dry_run=dry_run)
    if dry_run:
        return res
    out = os.fspath(out)
    if resume and transform is not None:
        raise Torch2MLXError("--resume cannot be combined with a transform")
    if transform is not None and any(len(op.outputs) > 1 for op in plan.ops):
        # A transform sees one array a tensor; a quantized weight is three (codes, scales, biases).
        raise Torch2MLXError("a transform cannot be combined with quantization (q_bits/q_recipe): "
                             "convert with the transform first, then quantize that output in a second run")
    if format not in ("safetensors", "zarr"):
        raise Torch2MLXError(f"--format must be safetensors or zarr (bin needs --to torch), got {format!r}")
    if format == "zarr" and (transform is not None or resume):
        raise Torch2MLXError("--format zarr does not combine with --resume or a transform")
    if format == "zarr":
        from .writers import zarr_store
        zarr_store.check_names(plan)   # before OUT is touched
    res.source_files = resume_mod.source_identity(ck.path, ck.files)
    output_dir.check_target(out, ck.files)
    existed = os.path.isdir(out)   # the lock creates OUT: what a failure restores is decided before it
    with out_lock.locked(out):
        fp = resume_mod.fingerprint(plan)
        do_resume = resume and output_dir.has_contents(out)
        if not (overwrite or resume or transform) and output_dir.has_contents(out):   # --resume takes no transform
            hint = resume_mod.interrupted_run(out, fp, ck.path, res.source_files)
            if hint:
                raise Torch2MLXError(hint)
        done: dict[int, ShardResult] = {}
        if do_resume:   # before OUT is touched: a refused resume leaves it as it was
            keep, digests, notes = resume_mod.finished_shards(plan, out, fp, ck.path, res.source_files)
            plan.notes += notes
            done = {i: ShardResult(plan.shards[i].file, plan.shards[i].size, digests[i]) for i in keep}
            res.reused = len(done)
            res.bytes_in = sum(op.nbytes_in for op in plan.ops if op.outputs[0].shard not in done)
            res.bytes_out = sum(plan.shards[i].data_size for i in range(len(plan.shards)) if i not in done)
        # --overwrite writes beside the old output and swaps at the end; a failure says what it left.
        with Target(out, overwrite=overwrite, src_paths=ck.files, resume=do_resume, existed=existed,
                    resumable=format == "safetensors" and transform is None, shards=len(plan.shards)) as target:
            if format == "zarr":
                _convert_zarr(res, ck, opts, plan, target.dir, progress, workers, zarr_compressor)
            else:
                _write_shards(res, ck, opts, plan, target.dir, transform, done, progress, workers, drop_cache,
                              fresh=not do_resume)
    return res


def _write_shards(res: Result, ck: Checkpoint, opts: Options, plan: Plan, out: str, transform,
                  done: dict[int, ShardResult], progress: bool, workers, drop_cache: bool, fresh: bool) -> None:
    """Sidecars, the shards not ``done`` yet, the index, then the manifest that says complete."""
    # Sidecars first: a ShardWriter (transform) writes its index when it closes, and nothing follows an index
    # but the manifest that says complete.
    res.sidecars = output_dir.copy_sidecars(ck.sidecars, out, rewrite=sidecar_config.rewrite(ck, opts, plan))
    if transform is None and fresh:
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
        if transform is not None:
            from .transform import run_transform
            res.shards, res.written, res.bytes_out = run_transform(plan, out, transform, opts, update, res.source,
                                                                   res.source_files)
        else:
            with DataReader(drop_cache=drop_cache) as reader:
                ex = Executor(plan, out, reader=reader, workers=workers, progress=update, drop_cache=drop_cache,
                              on_shard=shard_done)
                ex.run(todo)
            res.shards = [done[i] for i in sorted(done)]
    finally:
        if bar is not None:
            bar.close()
    if transform is None:  # the ShardWriter behind a transform wrote its own manifest and index
        weight_map = {o.name: plan.shards[o.shard].file for op in plan.ops for o in op.outputs}
        output_dir.write_index(out, weight_map, plan.nbytes_out)
        # complete only once the index exists (a failure here removes the index again)
        manifest_mod.write(out, manifest(res, opts))
    res.seconds = time.perf_counter() - t0
