"""``stream.to_torch(src, out)``: an MLX checkpoint back to PyTorch names, layouts and dtypes.

The same pipeline as the forward stream with a reverse plan (``reverse_plan``):
readers -> plan -> threaded executor -> sharded safetensors with metadata
``{"format": "pt"}`` and ``model.safetensors.index.json``, or ``--format bin``:
``pytorch_model-0000i-of-0000N.bin`` zip pickles written sequentially and
``pytorch_model.bin.index.json``. The manifest ``torch2mlx.json`` says ``"to": "torch"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

from ..errors import Torch2MLXError
from ..formats.checkpoint import OUR_FILES, SIDECAR_SUFFIXES, Checkpoint, open_checkpoint
from .result import Result
from .convert import model_choice
from ..formats.data import DataReader
from .options import Options
from . import resume as resume_mod, reverse_plan, sinks
from .writers import out_lock, output_dir
from .writers.target import Target


def _with_store_files(ck: Checkpoint) -> Checkpoint:
    """A zarr store keeps config and tokenizer files beside its arrays; the checkpoint reader lists none."""
    if ck.format != "zarr" or not os.path.isdir(ck.path):
        return ck
    names = sorted(n for n in os.listdir(ck.path) if os.path.isfile(os.path.join(ck.path, n)))
    sidecars = [
        os.path.join(ck.path, n)
        for n in names
        if n.endswith(SIDECAR_SUFFIXES) and n not in OUR_FILES and n != "zarr.json" and not n.startswith(".")
    ]
    config = None
    if "config.json" in names:
        import json

        try:
            with open(os.path.join(ck.path, "config.json"), "rb") as f:
                config = json.loads(f.read())
        except (OSError, ValueError):
            config = None
    return dataclasses.replace(ck, sidecars=sidecars, config=config if isinstance(config, dict) else None)


def to_torch(
    src,
    out,
    options: Options | None = None,
    *,
    model=None,
    model_kwargs=None,
    format: str = "safetensors",
    overwrite: bool = False,
    dry_run: bool = False,
    workers: int | None = None,
    progress: bool = False,
    **settings,
) -> Result:
    """Convert an MLX checkpoint (ours, mlx-lm's, quantized or not) back to PyTorch names, layouts and dtypes.

    Args:
        src: an MLX checkpoint file or directory (or zarr store), or a ``Checkpoint`` from ``stream.open``.
        out: the output directory; ``None`` only with ``dry_run``.
        options: settings as one ``Options``; or its fields as keyword ``**settings`` (``dtype``,
            ``max_shard_size``, ``strip_prefix``, ``exclude``, ``rules`` -- the forward layout to undo --,
            ``key``, ``drop_cache``). Quantization settings do not apply.
        model: where the forward rules come from when ``src`` has no ``torch2mlx.json``: ``None``
            (a config.json transformers knows), ``False`` (none: names and layouts kept),
            ``"pkg.mod:Class"`` with ``model_kwargs``, or an analyzer result whose specs are
            reverse specs (outputs named as torch names them, sources as the MLX checkpoint does).
        model_kwargs: constructor keywords for a class path ``model``.
        format: ``"safetensors"`` (shards with ``{"format": "pt"}``) or ``"bin"`` (zip pickles
            ``torch.load(weights_only=True)`` reads).
        overwrite, dry_run, workers, progress: as for ``stream.convert``.

    Returns:
        Result: as ``stream.convert``'s; quantized weights come back dequantized, and the torch dtypes our
        manifest records are restored.

    Raises:
        Torch2MLXError: a source that is already PyTorch, an unfinished conversion, a manifest that does not
            describe the tensors, forward-only settings, a non-empty ``out`` without ``overwrite``.

    Example:
        >>> from torch2mlx import stream
        >>> res = stream.to_torch("./my-model-mlx", "./back", format="bin")  # doctest: +SKIP
    """
    opts = Options.resolve(options, settings)
    if opts.quantizing:
        raise Torch2MLXError("q_bits/q_recipe do not apply to to_torch (quantized weights come back dequantized)")
    if opts.zarr_compressor != "none":
        raise Torch2MLXError(
            f"zarr_compressor does not apply to to_torch (it writes {' or '.join(sinks.names(sinks.REVERSE))})"
        )
    if out is None and not dry_run:
        raise Torch2MLXError("out is required (or dry_run=True)")
    sink = sinks.sink(format, sinks.REVERSE)
    path, model_kwargs, use_model, inputs = model_choice(model, model_kwargs)
    ck = _with_store_files(
        src if isinstance(src, Checkpoint) else open_checkpoint(src, key=opts.key, allow_globals=opts.allow_globals)
    )
    drop_cache = opts.drop_cache
    # Dequantized sources read through this reader; it lives as long as the conversion.
    with DataReader(drop_cache=drop_cache) as side, contextlib.ExitStack() as held:
        rp = reverse_plan.plan_reverse(
            ck,
            opts,
            side,
            specs=inputs.specs if inputs is not None else None,
            drop=inputs.drop if inputs is not None else None,
            model=path,
            model_kwargs=model_kwargs,
            use_model=use_model,
            fmt=format,
        )
        plan = rp.plan
        label = ck.path if isinstance(src, Checkpoint) else str(src)
        res = Result(label, None if dry_run else str(out), plan, ck, dry_run=dry_run, format=format)
        if sink.shard_name is not None:
            for i, sh in enumerate(plan.shards):
                sh.file = sink.shard_name(i, len(plan.shards))
        if dry_run:
            return res
        out = os.fspath(out)
        res.source_files = resume_mod.source_identity(ck.path, ck.files)
        output_dir.check_target(out, ck.files)
        existed = os.path.isdir(out)  # before the lock creates it
        held.enter_context(out_lock.locked(out))  # until the index is written
        # not resumable: a failure leaves OUT as it was (overwrite: the old output, whole)
        with Target(out, overwrite=overwrite, src_paths=ck.files, shards=len(plan.shards), existed=existed) as target:
            sink.write(
                sinks.Run(
                    res,
                    opts,
                    target.dir,
                    progress=progress,
                    workers=workers,
                    rewrite={"config.json": rp.config} if rp.config else None,
                    reader=side,
                    to_torch=dict(format=format, model=path, model_kwargs=model_kwargs, use_model=use_model),
                )
            )
    return res
