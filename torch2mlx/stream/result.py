"""What a conversion did (``Result``) and the manifest it records, shared by both directions.

Its own module so that ``to_torch`` and ``convert`` both use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.version import __version__
from ..formats.checkpoint import Checkpoint
from . import manifest as manifest_mod
from . import resume as resume_mod
from .execute import ShardResult
from .options import Options
from .plan import Plan


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
    written: int | None = None  # tensors actually written, when a hook changed the plan's count
    format: str = "safetensors"
    source_files: dict = field(default_factory=dict)  # identity of each source file as the run began
    # What this run read and wrote, when not the whole plan: a hook changes what is written,
    # --resume reuses finished shards (counted in ``reused``, not in the bytes or the rate).
    bytes_in: int | None = None
    bytes_out: int | None = None
    reused: int = 0
    card: str | None = None  # the model card written (README.md), if any

    @property
    def tensors_out(self) -> int:
        return self.written if self.written is not None else sum(len(op.outputs) for op in self.plan.ops)

    @property
    def nbytes_in(self) -> int:
        return self.plan.nbytes_in if self.bytes_in is None else self.bytes_in

    @property
    def nbytes_out(self) -> int:
        return self.plan.nbytes_out if self.bytes_out is None else self.bytes_out

    def to_dict(self) -> dict:
        d = {
            "source": self.source,
            "out": self.out,
            "dry_run": self.dry_run,
            "tensors_in": len(self.checkpoint.entries),
            "tensors_out": self.tensors_out,
            "bytes_in": self.nbytes_in,
            "bytes_out": self.nbytes_out,
            "reused_shards": self.reused,
            "seconds": round(self.seconds, 3),
            "mib_per_s": round(self.nbytes_in / 2**20 / self.seconds, 1) if self.seconds else None,
            "target": self.plan.target,
            "rules_by_source": self.plan.rules_by_source(),
            "shards": [{"file": s.file, "bytes": s.bytes, s.hash: s.digest} for s in self.shards]
            or [{"file": s.file, "bytes": s.size} for s in self.plan.shards],
            "sidecars": self.sidecars,
            "card": self.card,
            "dropped": [{"source": n, "why": w} for n, w in self.plan.dropped],
            "warnings": self.plan.warnings,
            "notes": self.plan.notes,
        }
        if self.dry_run:
            d["plan"] = self.plan.to_dict()["tensors"]
        return d

    def report(self) -> str:
        from .report import format_result

        return format_result(self)


def manifest(res: Result, opts: Options, complete: bool = True, to_torch: dict | None = None) -> manifest_mod.Manifest:
    """The manifest; while the run goes on (``complete=False``) without the per-tensor records.

    It is rewritten after every shard, and --resume needs only the plan's fingerprint and
    the finished shards: records in every rewrite made a 164-shard, 40,000-tensor
    conversion 35x slower than one shard.
    """
    return manifest_mod.for_run(
        version=__version__,
        source=res.source,
        options=opts.to_dict(),
        source_key=res.checkpoint.key,
        # records of an MLX source say nothing about torch layouts (--to torch)
        mlx_source=res.checkpoint.layout == "mlx",
        tensors=res.plan.tensor_records() if complete else None,
        shards=manifest_mod.shard_records(res.shards),
        dropped=res.plan.dropped,
        warnings=res.plan.warnings,
        plan_sha256=resume_mod.fingerprint(res.plan),
        source_files=res.source_files,
        to_torch=to_torch,
        target=res.plan.target,
    )
