"""``torch2mlx.convert``: a live model (or a state dict, or a checkpoint path) to MLX safetensors.

One pipeline with ``t2mlx stream``: the model's ``state_dict()`` becomes an
in-memory source (views of its tensors, no copies), the analyzer gives every
tensor its exact rule and MLX name from the live module, and the stream's
plan and executor write the output. A path ending in ``.safetensors`` gets
one file; any other path is a directory with shards, index and manifest,
exactly as ``t2mlx stream`` writes it.
"""

from __future__ import annotations

import os

from ..errors import Torch2MLXError
from ..formats.checkpoint import Checkpoint, open_checkpoint
from ..stream.convert import Result, plan_source
from ..stream.progress import progress_bar
from ..stream.options import Options
from ..stream.convert import convert as stream_convert
from .memory import is_module, memory_checkpoint

# A plan for one file puts every tensor in one shard: no size limit applies.
_ONE_SHARD = 1 << 62


def source_of(x, *, analyze: bool = True, key: str | None = None):
    """``(label, checkpoint, analyzer inputs or None)`` for a module, a state dict or a checkpoint path."""
    if isinstance(x, (str, os.PathLike)):
        return os.fspath(x), open_checkpoint(os.fspath(x), key=key), None
    if is_module(x):
        label = f"<{type(x).__name__} state dict>"
        ck = memory_checkpoint(x.state_dict(), label)
        if not analyze:
            return label, ck, None
        from ..analysis.stream_inputs import module_inputs

        return label, ck, module_inputs(ck, x)
    return "<state dict>", memory_checkpoint(x), None


def convert(
    model_or_state_dict,
    path,
    *,
    dtype: str = "keep",
    rules=(),
    specs=None,
    analyze: bool = True,
    strip_prefix=(),
    exclude=(),
    max_shard_size="5GB",
    q_bits: int | None = None,
    q_group_size: int | None = None,
    q_recipe: str | None = None,
    key: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    workers: int | None = None,
) -> Result:
    """Write MLX-named, MLX-layout weights of ``model_or_state_dict`` to ``path``.

    - an ``nn.Module`` (torch.compile'd or not): rules and names from the registry through
      the analyzer, exact (``analyze=False`` infers from shapes instead);
    - a state dict ``{name: tensor}`` (torch, numpy or MLX arrays): ``rules`` (``"REGEX=RULE"``
      strings as ``t2mlx stream --rule``), ``specs`` (``RuleSpec`` list) or shape inference;
    - a checkpoint file or directory: as ``t2mlx stream`` (config.json or nothing).

    ``path`` ending in ``.safetensors``: one file, replaced if it exists (as
    ``mx.save_safetensors`` does; the old file stays until the new one is whole).
    Otherwise a directory with ``model*.safetensors`` shards, ``model.safetensors.index.json``
    and ``torch2mlx.json``; a non-empty one needs ``overwrite=True`` (the old output stays
    whole until the new one is) or ``resume=True`` (continue a failed call). A failed call
    leaves the directory as it was, or its finished shards for ``resume=True``.
    Returns the stream's ``Result`` (``report()``, ``to_dict()``, ``plan``).
    """
    path = os.fspath(path)
    # Specs given by the caller replace the analyzer's (as they replace a config's in the stream).
    label, ck, inputs = source_of(model_or_state_dict, analyze=analyze and specs is None, key=key)
    if specs is not None:
        from ..analysis.stream_inputs import StreamInputs

        inputs = StreamInputs(specs=list(specs))
    one_file = path.endswith(".safetensors")
    opts = Options.make(
        dtype=dtype,
        strip_prefix=strip_prefix,
        exclude=exclude,
        rules=rules,
        q_bits=q_bits,
        q_group_size=q_group_size,
        q_recipe=q_recipe,
        key=key,
        max_shard_size=_ONE_SHARD if one_file else max_shard_size,
    )
    # no analyzer result: a path's own config.json (if analyze), an in-memory source's shapes
    model = inputs if inputs is not None else (None if analyze and ck.format != "memory" else False)
    if not one_file:
        return stream_convert(
            ck, path, opts, model=model, overwrite=overwrite, resume=resume, progress=progress, workers=workers
        )
    if resume:
        raise Torch2MLXError(f"{path}: resume=True applies to a directory; one .safetensors file is written whole")
    _, plan = plan_source(ck, opts, model=model)
    return _write_one_file(Result(label, path, plan, ck), path, progress, workers)


def _write_one_file(res: Result, path: str, progress: bool, workers) -> Result:
    """The plan's single shard as ``path`` (temp file, fsync, rename: never a half-written file)."""
    import time
    from ..formats.data import DataReader
    from ..stream.execute import Executor

    _check_target(path, res.checkpoint)
    (shard,) = res.plan.shards
    shard.file = os.path.basename(path)
    folder = os.path.dirname(os.path.abspath(path))
    t0 = time.perf_counter()
    bar, update = progress_bar(res.plan.nbytes_in, progress)
    try:
        with DataReader() as reader:
            res.shards = Executor(res.plan, folder, reader=reader, workers=workers, progress=update).run()
    finally:
        if bar is not None:
            bar.close()
    res.seconds = time.perf_counter() - t0
    return res


def _check_target(path: str, ck: Checkpoint) -> None:
    if os.path.isdir(path):
        raise Torch2MLXError(f"{path}: is a directory (a path ending in .safetensors names one output file)")
    real = os.path.realpath(path)
    if any(os.path.realpath(f) == real for f in ck.files):
        raise Torch2MLXError(f"{path}: is the source itself; choose another output path")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise Torch2MLXError(f"{folder}: cannot create the output folder ({e.strerror})") from None
