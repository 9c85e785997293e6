"""``convert``: open -> plan -> execute -> index. The CLI's ``stream`` is a thin wrapper of this."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

from .. import __version__
from ..errors import Torch2MLXError
from .checkpoint import Checkpoint, open_checkpoint
from .data import DataReader
from .execute import Executor, ShardResult
from .options import Options
from .plan import Plan, RuleSpec, build
from .writers import output_dir


@dataclass
class Result:
    """What a conversion did; ``report()`` is the text the CLI prints, ``to_dict()`` its JSON."""

    source: str
    out: str | None
    plan: Plan
    checkpoint: Checkpoint
    shards: list[ShardResult] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False
    sidecars: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {"source": self.source, "out": self.out, "dry_run": self.dry_run,
             "tensors_in": len(self.checkpoint.entries),
             "tensors_out": sum(len(op.outputs) for op in self.plan.ops),
             "bytes_in": self.plan.nbytes_in, "bytes_out": self.plan.nbytes_out,
             "seconds": round(self.seconds, 3),
             "mb_per_s": round(self.plan.nbytes_in / 1e6 / self.seconds, 1) if self.seconds else None,
             "rules_by_source": self.plan.rules_by_source(),
             "shards": [{"file": s.file, "bytes": s.bytes, "sha256": s.sha256} for s in self.shards]
             or [{"file": s.file, "bytes": s.size} for s in self.plan.shards],
             "sidecars": self.sidecars, "dropped": [{"source": n, "why": w} for n, w in self.plan.dropped],
             "warnings": self.plan.warnings, "notes": self.plan.notes}
        if self.dry_run:
            d["plan"] = self.plan.to_dict()["tensors"]
        return d

    def report(self) -> str:
        from .report import format_result
        return format_result(self)


def manifest(res: Result, opts: Options) -> dict:
    return {
        "torch2mlx": __version__,
        "source": res.source,
        "options": {"dtype": opts.dtype, "max_shard_size": opts.max_shard_size,
                    "strip_prefix": opts.strip_prefix, "exclude": [p.pattern for p in opts.exclude],
                    "rules": [f"{p.pattern}={r}" for p, r in opts.rules], "key": opts.key},
        "tensors": res.plan.tensor_records(),
        "shards": {s.file: {"bytes": s.bytes, "sha256": s.sha256} for s in res.shards},
        "dropped": [{"source": n, "why": w} for n, w in res.plan.dropped],
        "warnings": res.plan.warnings,
    }


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None, None
    from tqdm import tqdm
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
               desc="converting", dynamic_ncols=True, leave=False)
    return bar, bar.update


def convert(src, out, *, dtype: str = "keep", max_shard_size="5GB", strip_prefix=(), exclude=(), rules=(),
            key: str | None = None, overwrite: bool = False, dry_run: bool = False, progress: bool = False,
            workers: int | None = None, specs: list[RuleSpec] | None = None, drop: dict[str, str] | None = None,
            transform=None, checkpoint: Checkpoint | None = None, drop_cache: bool = False,
            model: str | None = None, model_kwargs=None, use_model: bool = True) -> Result:
    """Convert checkpoint ``src`` (file or directory) into MLX safetensors shards in directory ``out``.

    Options mirror ``t2mlx stream``. ``transform(name, array, dtype)`` may rename
    (return ``(new_name, array[, dtype])``), drop (return ``None``) or replace each
    tensor; with a transform, tensors go through ``ShardWriter`` one at a time.

    Without ``specs``, rules come from the model when there is one: ``model``
    (a class path, with ``model_kwargs``) or a config.json transformers knows
    next to the weights (the analyzer builds it on the meta device; that needs
    torch). ``use_model=False`` keeps to shape inference and never imports torch.
    """
    opts = Options.make(dtype=dtype, max_shard_size=max_shard_size, strip_prefix=strip_prefix,
                        exclude=exclude, rules=rules, key=key)
    ck = checkpoint or open_checkpoint(src, key=key)
    notes, warnings = [], []
    if specs is None and drop is None and (use_model or model is not None):
        from ..analysis.stream_inputs import stream_inputs
        got = stream_inputs(ck, model=model, model_kwargs=model_kwargs)
        specs, drop, notes, warnings = got.specs, got.drop, got.notes, got.warnings
    plan = build(ck, opts, specs, drop)
    plan.notes += notes
    plan.warnings[:0] = warnings
    res = Result(str(src), None if dry_run else str(out), plan, ck, dry_run=dry_run)
    if dry_run:
        return res
    out = os.fspath(out)
    output_dir.prepare(out, overwrite=overwrite, src_paths=ck.files)
    t0 = time.perf_counter()
    bar, update = _progress_bar(plan.nbytes_in, progress)
    try:
        if transform is not None:
            from .transform import run_transform
            res.shards = run_transform(plan, out, transform, opts, update)
        else:
            with DataReader(drop_cache=drop_cache) as reader:
                ex = Executor(plan, out, reader=reader, workers=workers, progress=update, drop_cache=drop_cache)
                res.shards = ex.run()
    finally:
        if bar is not None:
            bar.close()
    res.sidecars = output_dir.copy_sidecars(ck.sidecars, out)
    if transform is None:  # the ShardWriter behind a transform wrote its own manifest and index
        output_dir.write_manifest(out, manifest(res, opts))
        weight_map = {o.name: plan.shards[o.shard].file for op in plan.ops for o in op.outputs}
        output_dir.write_index(out, weight_map, plan.nbytes_out)
    res.seconds = time.perf_counter() - t0
    return res
