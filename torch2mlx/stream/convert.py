"""``convert``: open -> plan -> execute -> index. The CLI's ``stream`` is a thin wrapper of this."""

from __future__ import annotations

import dataclasses
import os
import time

from ..core import dtypes
from ..core.sizes import human_bytes
from ..errors import Torch2MLXError
from ..formats import remote
from ..formats.checkpoint import Checkpoint
from ..formats.data import DataReader
from . import gpt_oss, mlx_source, prequant, sidecar_config, sinks
from . import resume as resume_mod
from .execute import Executor, ShardResult
from .gc_pause import paused
from .options import Options
from .plan import Plan
from .planner import build
from .progress import progress_bar, status_line
from .result import Result
from .sources import model_choice, open_source
from .writers import out_lock, output_dir
from .writers.target import Target

# One output file is one shard: no size limit applies.
_ONE_SHARD = 1 << 62


def plan_source(src, options: Options, *, model=None, model_kwargs=None, status=None) -> tuple[Checkpoint, Plan]:
    """Open ``src`` (as ``convert`` takes it) and plan its conversion; no tensor data is read.

    ``model`` as for ``convert``; ``status(text)`` is told before a slow step without output starts
    (the analyzer's first run), ``status(None)`` when it is over.
    """
    ck, _, model = open_source(src, options, model)
    target, target_config, opts, notes = _choose_target(ck, options)
    path, model_kwargs, use_model, inputs = model_choice(model, model_kwargs)
    repacked: set[str] = set()
    mxfp4 = prequant.mxfp4.view(ck)  # gpt-oss's MXFP4: repacked in place, no float round trip
    if mxfp4 is not None:
        if opts.quantizing:
            raise Torch2MLXError(f"{ck.path}: its weights are MXFP4 already; q_bits/q_recipe/q_mode do not apply")
        ck, more, repacked = mxfp4
        notes += more
    experts = gpt_oss.view(ck) if mxfp4 is None else None  # unquantized gpt-oss: mlx-lm's expert layout
    if experts is not None:
        ck, more, repacked = experts
        notes += more
    module_types = None
    requant: dict = {}
    already = mlx_source.detect(ck) if path is None and inputs is None else None
    if opts.dequantize and (already is None or not already.quantized):
        raise Torch2MLXError(f"{ck.path}: not an MLX-quantized checkpoint; dequantize has nothing to undo")
    side = None
    if opts.dequantize:
        from .reverse_plan import with_dequantized

        # The virtual float entries read through this reader; closed with the plan (Plan.close).
        side = DataReader(drop_cache=opts.drop_cache)
        fp_dtype = dtypes.get(opts.dtype) if opts.dtype != "keep" else None
        ck, n = with_dequantized(ck, side, fp_dtype)
        cfg = _without_quantization(ck.config)
        gone = [k for k in ck.config or {} if k not in (cfg or {})]
        ck = dataclasses.replace(ck, config=cfg)
        notes.append(f"{n} quantized weight(s) dequantized as mx.dequantize does")
        if gone:  # no config.json key goes without a word
            notes.append(f"config.json: {', '.join(gone)} removed (the weights are dequantized)")
    if already is not None:
        # No model for it: its tensors have MLX names and layouts already (and the analyzer needs torch).
        if already.quantized and opts.adapter is not None and not opts.dequantize:
            ck, requant = _dequantized_for_adapter(ck, opts)
        if already.quantized and opts.quantizing:
            raise Torch2MLXError(
                f"{ck.path}: {already.describe()}; q_bits/q_recipe need float weights: "
                f"convert it with `t2mlx stream {ck.path} OUT --dequantize` (dequantize=True) first, then quantize that"
            )
        ck = dataclasses.replace(ck, layout="mlx")
        notes.append(f"source is {already.describe()}: names and layouts kept, no model analysis")
        use_model = False
    if ck.gguf is not None and path is None and inputs is None:
        # llama.cpp's names are mapped back to the HF ones while reading, and its Linear weights are
        # (out, in) as in MLX: no model analysis (which needs torch and a config.json beside the file).
        use_model = False
    found = prequant.detect(ck) if already is None else None
    prep = None
    if found is not None and found.modules:
        ck, prep = prequant.packed_view(ck, found, opts)
    if inputs is None and (use_model or path is not None):
        from ..core.model_rules import stream_inputs

        inputs = stream_inputs(ck, model=path, model_kwargs=model_kwargs, status=status)
    specs = drop = None
    if inputs is not None:
        specs, drop, notes = inputs.specs, inputs.drop, notes + list(inputs.notes)
        if inputs.report is not None or inputs.types is not None:
            module_types = inputs.module_types
    if prep is not None and specs:
        # The view's tensors are in MLX layout already (a Conv1D's rule would transpose packed codes)
        specs = [s for s in specs if not prep.virtual_names.intersection(s.sources)]
    if experts is not None:  # in MLX layout already: no rule for a 3-D weight may transpose them again
        specs = gpt_oss.identity_specs(specs, repacked)
    plan = build(ck, opts, specs, drop, module_types, recipe=prequant.view.recipe(prep, opts) if prep else None)
    plan.side_reader = side
    if mxfp4 is not None:
        plan.quantization = dict(prequant.mxfp4.QUANTIZATION)
    if prep is not None:
        prequant.view.finish_plan(plan, prep, opts)
        notes, plan.warnings = prep.notes + notes, prep.warnings + plan.warnings
    if already is not None or ck.gguf is not None:  # the note above says it better
        plan.warnings = [w for w in plan.warnings if not w.startswith("source is already in MLX layout")]
    plan.notes += notes
    if inputs is not None:
        plan.warnings[:0] = inputs.all_warnings(
            {n for n, _ in plan.dropped} | repacked | (prep.packed_names() if prep else set())
        )
    if opts.adapter is not None:
        _fuse_adapter(plan, opts, requant)
    return _for_target(ck, opts, plan, target, target_config)


def _choose_target(ck: Checkpoint, opts: Options) -> tuple[str, dict | None, Options, list[str]]:
    """The target (stream/targets) and the config it was chosen from, chosen before planning: a target's
    module may set what the plan needs (mlx-whisper: float16 unless a dtype is given)."""
    from . import targets

    config = targets.source_config(ck)
    try:
        target = targets.choose(config, opts.target)
    except Torch2MLXError as e:
        raise Torch2MLXError(f"{ck.path}: {e}") from None
    mod = targets.module(target)
    adjust = getattr(mod, "options", None)
    if adjust is None:
        return target, config, opts, []
    opts, notes = adjust(opts, ck)
    return target, config, opts, list(notes)


def _for_target(ck: Checkpoint, opts: Options, plan: Plan, target: str, config: dict | None) -> tuple[Checkpoint, Plan]:
    """The target's names, layouts and config (stream/targets); a source without config.json gets the
    config its target module reads from it (OpenAI's Whisper ``.pt``), so config.json is written."""
    from . import targets

    plan.target = target
    mod = targets.module(target)
    if mod is None:
        return ck, plan
    if config is not ck.config:
        ck = dataclasses.replace(ck, config=config)
    keep = getattr(mod, "sidecars", None)
    if keep is not None:
        wanted = set(keep([os.path.basename(p) for p in ck.sidecars], opts))
        ck = dataclasses.replace(ck, sidecars=[p for p in ck.sidecars if os.path.basename(p) in wanted])
    plan.notes += mod.apply(ck, opts, plan)
    return ck, plan


def _dequantized_for_adapter(ck: Checkpoint, opts: Options) -> tuple[Checkpoint, dict]:
    """An MLX-quantized base: the adapted weights dequantized (block by block), to be fused and requantized."""
    from .lora import fuse
    from .lora.load import load

    return fuse.quantized_view(ck, set(load(opts.adapter).modules))


def _fuse_adapter(plan: Plan, opts: Options, requant: dict) -> None:
    from .lora import fuse
    from .lora.load import load

    ad = load(opts.adapter)
    plan.fuses = fuse.attach_fuses(plan, ad, opts.adapter_scale)
    if requant:
        fuse.requantize(plan, requant, opts.max_shard_size)
        plan.notes.append(
            f"{len(requant)} quantized base weight(s) dequantized, fused and quantized again as they were"
        )
    what = {"peft": "PEFT", "mlx": "mlx-lm"}[ad.kind] + (" DoRA" if ad.dora else " LoRA")
    plan.notes.append(
        f"fused the {what} adapter {opts.adapter} (sha256 {ad.sha256[:16]}...): {len(ad.modules)} module(s)"
        + (f" and {len(ad.full)} modules_to_save tensor(s)" if ad.full else "")
        + (f", scale x{opts.adapter_scale:g}" if opts.adapter_scale != 1 else "")
        + (", before quantizing" if opts.quantizing else "")
    )


def _without_quantization(config: dict | None) -> dict | None:
    """config.json of dequantized weights: no ``quantization`` block, nor mlx-lm's copy of it (as ``convert -d``)."""
    if config is None:
        return None
    cfg = {k: v for k, v in config.items() if k != "quantization"}
    qc = cfg.get("quantization_config")
    if isinstance(qc, dict) and "quant_method" not in qc:
        del cfg["quantization_config"]
    return cfg


@paused
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
    """Convert PyTorch weights (a checkpoint, a state dict or a live model) to MLX names and layouts.

    ``torch2mlx.convert`` is this function.

    Args:
        src: a checkpoint file or directory (safetensors, torch zip/legacy pickles, npz, zarr),
            a ``Checkpoint`` from ``stream.open`` (e.g. opened with ``allow_globals``), a state dict
            ``{name: tensor}`` (torch, numpy or MLX arrays, read in place: CPU tensors are not copied),
            or an ``nn.Module`` (torch.compile'd or not; its state dict, with the registry's exact rules
            and names from the analyzer unless ``model`` says otherwise).
        out: a directory (shards, ``model.safetensors.index.json``, ``torch2mlx.json``), or a path ending
            in ``.safetensors``: one file, replaced whole (temp file, then rename: the old file stays until
            the new one is complete); ``None`` only with ``dry_run``.
        options: every conversion setting as one ``Options`` (``Options.make(dtype="float16", ...)``).
        **settings: instead of ``options``, its fields as keywords (``dtype``, ``max_shard_size``,
            ``strip_prefix``, ``exclude``, ``rules`` (``"REGEX=RULE"``), ``key``, ``q_bits``, ``q_group_size``,
            ``q_recipe``, ``q_mode`` (``"mxfp4"``, ``"nvfp4"``, ``"mxfp8"``: MLX's fp modes), ``dequantize``
            (an MLX-quantized source to float weights), ``allow_globals``, ``zarr_compressor``, ``drop_cache``,
            ``adapter``, ``adapter_scale``, ``target``, ``keep``, ``card``); giving both is refused. ``target``:
            the MLX tool OUT is for (``"mlx-whisper"``, ``"mlx-vlm"``, ``"mlx-lm"``, ``"mlx"``; default chosen
            from config.json: docs/targets.md). ``keep``: regexes of tensors the model's rules drop to write
            anyway. ``card``: a model card, ``README.md`` (Hub front matter, how it was made, how to load it;
            built on the source's README.md), naming this call (``True``, the default) or the command given as
            a string; ``False``: the source's README.md copied as it is (docs/cli.md#model-cards).
            ``adapter``: a LoRA/DoRA adapter directory
            (PEFT's or mlx-lm's) fused into the weights as they stream, before any quantization
            (docs/adapters.md); ``adapter_scale`` multiplies its scale.
        model: where exact rules come from. ``None``: a live module's own, or a config.json next to the
            weights that transformers knows (analyzed on the meta device; imports torch), else shape
            inference (always, for a state dict); ``False``: shape inference only, never imports torch;
            ``"pkg.mod:Class"``: that class, built with ``model_kwargs`` (a dict or a JSON string); an analyzer
            result (``StreamInputs``: specs, drops and notes as given) or a list of ``RuleSpec`` (these tensors'
            rules and names; the others are inferred). Given rules replace a module's own.
        model_kwargs: constructor keywords for a class path ``model``.
        format: ``"safetensors"`` or ``"zarr"``.
        overwrite: replace a non-empty ``out`` directory (the old output stays whole until the new one is).
        resume: reuse the shards of an interrupted run whose size and sha256 still match its manifest.
        dry_run: plan only; nothing is read or written.
        workers: writer threads (default: by core count).
        progress: a progress bar and status lines on stderr.
        variants (keyword): several outputs from one read of the source: ``"bf16,q8,q4,mixed_3_6"`` or a list, each an
            output dtype, ``qN`` (with ``q_group_size``), a ``q_recipe`` or a ``q_mode`` name; written to
            ``out/<variant>/``, each as a single run with those settings writes it. Returns a
            ``VariantsResult`` (``results``: one ``Result`` each). Not with resume, hook, zarr or one file.
        hook: ``hook(name, array, dtype)`` sees each planned tensor (an ``mx.array``) and may rename it
            (return ``(new_name, array[, dtype])``), drop it (``None``) or replace it; tensors then go
            through ``ShardWriter`` one at a time. Not with quantization, ``resume``, zarr or one file.

    Returns:
        Result: ``report()`` is the text the CLI prints, ``to_dict()`` its JSON, ``plan`` the plan.

    Raises:
        Torch2MLXError: bad input (unreadable source, nothing to convert, a tensor MLX cannot hold, a bad
            option, contradictory options, a non-empty ``out`` without ``overwrite``/``resume``); ``out`` is
            left as it was, or with its finished shards for ``resume``. Nothing from a pickle is ever executed.

    Example:
        >>> from torch2mlx import stream
        >>> res = stream.convert("./my-model", "./my-model-mlx", dtype="float16", model=False)  # doctest: +SKIP
        >>> res.tensors_out  # doctest: +SKIP
        291
        >>> torch2mlx.convert(torch.nn.Conv2d(3, 8, 3), "conv.safetensors")  # doctest: +SKIP
    """
    variants = settings.pop("variants", None)  # a keyword beside the settings: the signature stays narrow
    if variants is not None:
        return _convert_variants(
            src,
            out,
            variants,
            options,
            settings,
            model=model,
            model_kwargs=model_kwargs,
            format=format,
            overwrite=overwrite,
            resume=resume,
            dry_run=dry_run,
            workers=workers,
            progress=progress,
            hook=hook,
        )
    opts = Options.resolve(options, settings)
    before = (remote.STATS.requests, remote.STATS.retries, remote.STATS.bytes)  # a remote source's transfer
    if resume and overwrite:
        raise Torch2MLXError(
            "resume and overwrite contradict each other: resume keeps out's finished "
            "shards, overwrite throws them away; give one"
        )
    if (out is None or out == "") and not dry_run:
        raise Torch2MLXError("out is required (or dry_run=True)")
    sink = sinks.sink(format, sinks.FORWARD)
    one_file = bool(out) and os.fspath(out).endswith(".safetensors")
    if one_file:
        _one_file_allows(os.fspath(out), format, resume, hook)
        opts = dataclasses.replace(opts, max_shard_size=_ONE_SHARD)
    if resume and opts.key is None and isinstance(src, (str, os.PathLike)):
        # the nesting the interrupted run chose
        opts = dataclasses.replace(opts, key=resume_mod.recorded_key(os.fspath(out)))
    ck, label, model = open_source(src, opts, model)
    ck, plan = plan_source(ck, opts, model=model, model_kwargs=model_kwargs, status=status_line if progress else None)
    try:
        res = Result(label, None if dry_run else str(out), plan, ck, dry_run=dry_run)
        if dry_run:
            return res
        out = os.fspath(out)
        if one_file:
            return _quantized_fuses(_write_one_file(res, out, progress, workers))
        _write_dir(
            res,
            ck,
            opts,
            out,
            sink,
            overwrite=overwrite,
            resume=resume,
            hook=hook,
            progress=progress,
            workers=workers,
            before=before,
            card=_card_command(src, out, opts, model, format),
        )
        return _quantized_fuses(res)
    finally:
        plan.close()  # the reader of dequantized sources, if any


def _card_command(src, out: str, opts: Options, model, format: str) -> str | None:
    """The command a model card names, or None for no card (one is written in safetensors directories)."""
    if opts.card is False or format != "safetensors":
        return None
    if isinstance(opts.card, str):
        return opts.card
    from .card import library_call

    return library_call(src, out, opts, model)


def _convert_variants(
    src,
    out,
    variants,
    options,
    settings,
    *,
    model,
    model_kwargs,
    format,
    overwrite,
    resume,
    dry_run,
    workers,
    progress,
    hook,
):
    """``convert(..., variants=...)``: every variant planned alone, all written from one read of the source."""
    from . import variants as variants_mod

    if options is not None:
        Options.resolve(options, settings)  # both at once is refused as in a single run
        settings = variants_mod.settings_of(options)
    if resume:
        raise Torch2MLXError(
            "variants do not combine with resume: a failed variants run keeps no shard; run it again, or convert "
            "the variants one at a time (each OUT/<variant> is what that single run writes)"
        )
    refused = ["a hook"] if hook is not None else []
    if format != "safetensors":
        refused.append(f"format={format!r}")
    if refused:
        raise Torch2MLXError(
            f"variants do not combine with {refused[0]} (each variant is a safetensors directory written in one run)"
        )
    if (out is None or out == "") and not dry_run:
        raise Torch2MLXError("out is required (or dry_run=True)")
    if out and os.fspath(out).endswith(".safetensors"):
        raise Torch2MLXError(
            f"{os.fspath(out)}: variants write a directory each (OUT/<variant>/); a path ending in .safetensors "
            "is one file"
        )
    parsed = variants_mod.parse_variants(variants, settings)
    names = [n for n, _ in parsed]
    opts_list = [Options.make(**s) for _, s in parsed]
    before = (remote.STATS.requests, remote.STATS.retries, remote.STATS.bytes)
    ck, label, model = open_source(src, opts_list[0], model)
    results: list[Result] = []
    try:
        for name, opts in zip(names, opts_list, strict=True):
            ck_v, plan = plan_source(
                ck, opts, model=model, model_kwargs=model_kwargs, status=status_line if progress else None
            )
            where = None if dry_run else os.path.join(os.fspath(out), name)
            results.append(Result(label, where, plan, ck_v, dry_run=dry_run))
        vr = variants_mod.VariantsResult(label, os.fspath(out) if out else None, names, results, dry_run=dry_run)
        if dry_run:
            return vr
        out = os.fspath(out)
        if os.path.exists(out) and not os.path.isdir(out):
            raise Torch2MLXError(f"{out}: exists and is not a directory")
        for name, res in zip(names, results, strict=True):  # before anything is written anywhere
            d = os.path.join(out, name)
            output_dir.check_target(d, res.checkpoint.files)
            if not overwrite and output_dir.has_contents(d):
                raise Torch2MLXError(f"{d}: exists and is not empty (use --overwrite to replace its contents)")
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise Torch2MLXError(f"{out}: cannot create the output folder ({e.strerror})") from None
        t0 = time.perf_counter()
        sink = sinks.sink(format, sinks.FORWARD)

        def write_dir(res, ck_v, opts, d, *, overwrite, workers, execute):
            _write_dir(
                res,
                ck_v,
                opts,
                d,
                sink,
                overwrite=overwrite,
                resume=False,
                hook=None,
                progress=False,
                workers=workers,
                before=None,
                execute=execute,
                card=_card_command(src, d, opts, model, format),
            )

        variants_mod.write_all(
            names, results, opts_list, out, write_dir, overwrite=overwrite, workers=workers, progress=progress
        )
        vr.seconds = time.perf_counter() - t0
        if ck.remote:
            vr.notes.append(fetched_note(before))
        for res in results:
            _quantized_fuses(res)
        return vr
    finally:
        for res in results:
            res.plan.close()


def _write_dir(
    res: Result,
    ck: Checkpoint,
    opts: Options,
    out: str,
    sink,
    *,
    overwrite: bool,
    resume: bool,
    hook,
    progress: bool,
    workers,
    before: tuple | None,
    execute=None,
    card: str | None = None,
) -> None:
    """The plan written into directory ``out`` (sidecars, shards, index, manifest). ``before``: the remote
    transfer counters as the run began (None: no transfer note); ``execute``: writes the shards instead of an
    own Executor (``Run.execute``: several variants fed by one read of the source); ``card``: the command the
    model card names (None: no card)."""
    plan = res.plan
    # --variants (``execute``) refuses resume: a failure there keeps no shard, so none is recorded for it
    resumable = sink.resumable and hook is None and execute is None
    sinks.refuse_settings(sink, plan, hook=hook, resume=resume)  # before OUT is touched
    if ck.remote:  # size and ETag by name: resume refuses a source that changed since
        res.source_files = remote.remote_identity(ck.files)
    else:
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
            resumable=resumable,
            shards=len(plan.shards),
        ) as target:
            sink.write(
                sinks.Run(
                    res,
                    opts,
                    target.dir,
                    progress=progress,
                    workers=workers,
                    rewrite=sidecar_config.rewrite(ck, opts, plan),
                    hook=hook,
                    done=done,
                    fresh=not do_resume,
                    resumable=resumable,
                    execute=execute,
                    card=card,
                )
            )
            plan.notes += _error_notes(plan, ck)
            if ck.remote:
                if before is not None:
                    plan.notes.append(fetched_note(before))
                checks = {n: r["checked"] for n, r in res.source_files.items() if "checked" in r}
                plan.notes.append(remote.checked_summary(checks))


def fetched_note(before: tuple) -> str:
    """What a remote source's transfer took since ``before`` (the counters as the run began)."""
    got = remote.STATS.bytes - before[2]
    return (
        f"fetched {human_bytes(got)} ({got:,} bytes) in {remote.STATS.requests - before[0]} range "
        f"request(s), {remote.STATS.retries - before[1]} retried"
    )


def _error_notes(plan: Plan, ck: Checkpoint) -> list[str]:
    """After the run: what requantizing cost, as each transform measured it while writing."""
    notes = prequant.view.error_notes(plan)
    if ck.gguf is not None:
        from .gguf_plan import error_notes

        notes += error_notes(plan.ops)
    return notes


def _quantized_fuses(res: Result) -> Result:
    """The report says what quantizing the fused weights cost (measured on every block written)."""
    fused = [f for f in res.plan.fuses if f.full is None]
    q = [
        op for op in res.plan.ops if op.transform_info and "adapter_module" in op.transform_info and len(op.outputs) > 1
    ]
    if fused and q:
        worst = max(f.quant_error for f in fused)
        res.plan.notes.append(
            f"{len(q)} fused weight(s) quantized after fusing: largest |dequantized - fused| element {worst:.4g} "
            "(the quantization's rounding of the fused values)"
        )
    return res


def _one_file_allows(path: str, format: str, resume: bool, hook) -> None:
    if resume:
        raise Torch2MLXError(f"{path}: resume=True applies to a directory; one .safetensors file is written whole")
    if format != "safetensors" or hook is not None:
        what = f"format={format!r}" if format != "safetensors" else "a hook"
        raise Torch2MLXError(f"{path}: {what} writes a directory; a path ending in .safetensors is one file")


def _write_one_file(res: Result, path: str, progress: bool, workers) -> Result:
    """The plan's single shard as ``path`` (temp file, fsync, rename: never a half-written file)."""
    if os.path.isdir(path):
        raise Torch2MLXError(f"{path}: is a directory (a path ending in .safetensors names one output file)")
    real = os.path.realpath(path)
    if any(os.path.realpath(f) == real for f in res.checkpoint.files):
        raise Torch2MLXError(f"{path}: is the source itself; choose another output path")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise Torch2MLXError(f"{folder}: cannot create the output folder ({e.strerror})") from None
    (shard,) = res.plan.shards
    shard.file = os.path.basename(path)
    t0 = time.perf_counter()
    bar, update = progress_bar(res.plan.nbytes_in, progress)
    try:
        with DataReader() as reader:
            res.shards = Executor(res.plan, folder, reader=reader, workers=workers, progress=update).run()
    finally:
        if bar is not None:
            bar.close()
    res.seconds = time.perf_counter() - t0
    res.plan.notes += _error_notes(res.plan, res.checkpoint)
    return res
