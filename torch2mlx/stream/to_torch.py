"""``convert(src, out, to="torch")``: an MLX checkpoint back to PyTorch names, layouts and dtypes.

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
import sys
import time

from ..errors import Torch2MLXError
from .checkpoint import OUR_FILES, SIDECAR_SUFFIXES, Checkpoint, open_checkpoint
from .result import Result, manifest
from .data import DataReader
from .execute import Executor
from .options import Options
from . import manifest as manifest_mod, resume as resume_mod, reverse_plan
from .writers import out_lock, output_dir, torch_bin
from .writers.target import Target

FORMATS = ("safetensors", "bin")


@contextlib.contextmanager
def _progress(total: int, enabled: bool):
    if not enabled:
        yield None
        return
    from tqdm import tqdm
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, desc="to torch",
              dynamic_ncols=True, leave=False) as bar:
        yield bar.update


def _with_store_files(ck: Checkpoint) -> Checkpoint:
    """A zarr store keeps config and tokenizer files beside its arrays; the checkpoint reader lists none."""
    if ck.format != "zarr" or not os.path.isdir(ck.path):
        return ck
    names = sorted(n for n in os.listdir(ck.path) if os.path.isfile(os.path.join(ck.path, n)))
    sidecars = [os.path.join(ck.path, n) for n in names if n.endswith(SIDECAR_SUFFIXES)
                and n not in OUR_FILES and n != "zarr.json" and not n.startswith(".")]
    config = None
    if "config.json" in names:
        import json
        try:
            with open(os.path.join(ck.path, "config.json"), "rb") as f:
                config = json.loads(f.read())
        except (OSError, ValueError):
            config = None
    return dataclasses.replace(ck, sidecars=sidecars, config=config if isinstance(config, dict) else None)


def convert(src, out, *, dtype: str = "keep", max_shard_size="5GB", strip_prefix=(), exclude=(), rules=(),
            key: str | None = None, overwrite: bool = False, dry_run: bool = False, progress: bool = False,
            workers: int | None = None, specs=None, drop=None, checkpoint: Checkpoint | None = None,
            drop_cache: bool = True, format: str = "safetensors", model: str | None = None, model_kwargs=None,
            use_model: bool = True, unsupported: dict | None = None) -> Result:
    """Convert the MLX checkpoint ``src`` to PyTorch tensors in ``out``; options as ``stream.convert``.

    ``specs`` (optional) are reverse specs: outputs named as torch names them, sources
    as the MLX checkpoint does. ``unsupported``: forward-only options the caller set.
    """
    for opt, value in (unsupported or {}).items():
        if value:
            raise Torch2MLXError(f"{opt} does not apply with --to torch")
    if format not in FORMATS:
        raise Torch2MLXError(f"--to torch writes --format safetensors or bin, not {format!r}")
    opts = Options.make(dtype=dtype, max_shard_size=max_shard_size, strip_prefix=strip_prefix, exclude=exclude,
                        rules=rules, key=key)
    ck = _with_store_files(checkpoint or open_checkpoint(src, key=key))
    # Dequantized sources read through this reader; it lives as long as the conversion.
    with DataReader(drop_cache=drop_cache) as side, contextlib.ExitStack() as held:
        rp = reverse_plan.prepare(ck, opts, side, specs=specs, drop=drop, model=model, model_kwargs=model_kwargs,
                                  use_model=use_model, fmt=format)
        plan = rp.plan
        res = Result(str(src), None if dry_run else str(out), plan, ck, dry_run=dry_run, format=format)
        if format == "bin":
            for i, sh in enumerate(plan.shards):
                sh.file = torch_bin.shard_name(i, len(plan.shards))
        if dry_run:
            return res
        out = os.fspath(out)
        res.source_files = resume_mod.source_identity(ck.path, ck.files)
        output_dir.check_target(out, ck.files)
        existed = os.path.isdir(out)   # before the lock creates it
        held.enter_context(out_lock.locked(out))   # until the index is written
        # not resumable: a failure leaves OUT as it was (--overwrite: the old output, whole)
        with Target(out, overwrite=overwrite, src_paths=ck.files, shards=len(plan.shards), existed=existed) as target:
            t0 = _write(res, rp, opts, target.dir, format, side, workers, progress, drop_cache,
                        dict(model=model, model_kwargs=model_kwargs, use_model=use_model))
    res.seconds = time.perf_counter() - t0
    return res


def _write(res: Result, rp, opts: Options, out: str, format: str, side: DataReader, workers, progress: bool,
           drop_cache: bool, model_info: dict) -> float:
    """Sidecars, shards, index, manifest into ``out``; returns when the writing started."""
    plan = res.plan
    res.sidecars = output_dir.copy_sidecars(res.checkpoint.sidecars, out,
                                            rewrite={"config.json": rp.config} if rp.config else None)
    t0 = time.perf_counter()
    done = {}

    def shard_done(r):
        done[r.file] = r   # the manifest on disk says which shards are finished, as the forward run's does
        res.shards = [done[s.file] for s in plan.shards if s.file in done]
        manifest_mod.write(out, manifest(res, opts, complete=False, to_torch=dict(format=format, **model_info)))

    with _progress(plan.nbytes_in, progress) as update:
        if format == "bin":
            torch_bin.write(plan, out, reader=side, workers=workers, progress=update, on_shard=shard_done)
        else:
            with DataReader(drop_cache=drop_cache) as reader:
                Executor(plan, out, reader=reader, workers=workers, progress=update, drop_cache=drop_cache,
                         on_shard=shard_done).run()
    weight_map = {o.name: plan.shards[o.shard].file for op in plan.ops for o in op.outputs}
    output_dir.write_index(out, weight_map, plan.nbytes_out,
                           output_dir.BIN_INDEX if format == "bin" else output_dir.INDEX)
    # complete only once the index exists
    manifest_mod.write(out, manifest(res, opts, to_torch=dict(format=format, **model_info)))
    return t0

