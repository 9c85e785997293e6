"""``torch2mlx.json``: the one place that knows the manifest's keys.

Every output directory (and zarr store) carries one. It says what was read
(``source``, ``source_key``, ``source_files``: each source file's identity),
how (``options``, ``plan_sha256``), what was written (``tensors``: one record
per output tensor; ``shards`` with size and digest, ``hash`` naming the
digests' algorithm: sha256 when absent, as older versions wrote), what was left out
(``dropped``, ``warnings``) and whether the run finished (``complete``).
``--to torch`` adds ``to``, ``format`` and the model it used; zarr adds
``format`` and ``compressor``; a run through a user transform adds
``transform``.

A record (``tensor_records``) says ``source`` (a name, or a list for ops of
several sources), ``rule``, ``rule_source``, ``args``, ``dtype``, ``shape``,
``source_dtype``, ``source_shape`` and ``shard`` (zarr: ``array``), plus what a
transform adds (``quantization``, ``fp8_scale``; a quantized weight's scales
and biases say their ``role``; a user transform's outputs say ``transformed``).
``specs_from_records`` reads source, rule and args back into ``RuleSpec``s,
which ``--to torch`` and ``to_torch`` invert.

Writers build a ``Manifest`` with one of the ``for_*`` constructors; its
``layout`` is the keys it writes, in order, so the file is byte for byte what
earlier versions wrote for the same run. Readers get a ``Manifest`` whose
fields are None where the file has no such key (older manifests lack
``source_files``, ``plan_sha256``, ``complete``...); values are as the file
has them, so each reader keeps its own checks.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from ..core import rules
from ..core.spec import RuleSpec
from ..errors import Torch2MLXError
from ..formats.checkpoint import MANIFEST_NAME
from .hashing import HASH
from .writers.files import write_json_atomic

NAME = MANIFEST_NAME

# on-disk key -> field; every other field has its key's name
_FIELD = {"torch2mlx": "version"}
_KEY = {v: k for k, v in _FIELD.items()}
KEYS = (
    "torch2mlx",
    "source",
    "options",
    "target",
    "format",
    "source_key",
    "source_layout",
    "compressor",
    "transform",
    "tensors",
    "shards",
    "hash",
    "dropped",
    "warnings",
    "plan_sha256",
    "source_files",
    "complete",
    "to",
    "model",
    "model_kwargs",
    "use_model",
)


@dataclass
class Manifest:
    version: str | None = None  # the torch2mlx that wrote it
    source: str | None = None
    options: dict | None = None  # Options.to_dict()
    target: str | None = None  # the MLX tool the output is laid out for (stream/targets)
    format: str | None = None  # zarr, or --to torch's safetensors/bin
    source_key: str | None = None  # key path chosen inside a nested source
    source_layout: str | None = None  # "mlx": the source was already MLX (its records say nothing of torch)
    compressor: str | None = None  # zarr
    transform: bool | None = None  # written through a user transform
    tensors: dict | None = None  # output name -> record (absent while a run goes on)
    shards: dict | None = None  # file -> {"bytes", <hash>: hex digest}
    hash: str | None = None  # the algorithm of the shards' digests (None: sha256, an older manifest)
    dropped: list | None = None  # [{"source", "why"}]
    warnings: list | None = None
    plan_sha256: str | None = None  # resume.fingerprint of the plan
    source_files: dict | None = None  # resume.source_identity
    complete: bool | None = None  # False while a run goes on
    to: str | None = None  # "torch" for --to torch
    model: object = None  # --to torch: the model it was given
    model_kwargs: dict | None = None
    use_model: bool | None = None
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as read
    layout: tuple[str, ...] = ()  # the keys written, in order

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        known = {_FIELD.get(k, k): v for k, v in d.items() if k in KEYS}
        return cls(**known, extra={k: v for k, v in d.items() if k not in KEYS}, layout=tuple(d))

    def to_dict(self) -> dict:
        return {k: self.extra[k] if k not in KEYS else getattr(self, _FIELD.get(k, k)) for k in self.layout}

    @property
    def finished(self) -> bool:
        """Not marked unfinished (manifests older than the ``complete`` key count as finished)."""
        return self.complete is not False

    @property
    def to_torch(self) -> bool:
        return self.to == "torch"

    @property
    def is_zarr(self) -> bool:
        return self.format == "zarr"

    def key(self) -> str | None:
        """--key as given, else the key path the run chose in a nested source (both read the same tensors)."""
        key = (self.options or {}).get("key")
        return key if key is not None else self.source_key

    def without_records(self, names) -> Manifest:
        names = set(names)
        return dataclasses.replace(self, tensors={n: r for n, r in (self.tensors or {}).items() if n not in names})


def _made(layout: list[str], **values) -> Manifest:
    return Manifest(**{_FIELD.get(k, k): v for k, v in values.items()}, layout=tuple(layout))


def dropped_records(dropped) -> list[dict]:
    """Plan.dropped ``[(source name, why)]`` as the manifest lists them."""
    return [{"source": n, "why": w} for n, w in dropped]


def dropped_sources(m: Manifest) -> list:
    """The source names a manifest says were dropped (entries that are not records are skipped)."""
    return [d.get("source") for d in m.dropped or [] if isinstance(d, dict)]


def transform_record(op, transformed: bool) -> dict:
    """The record of a tensor a user transform returned for ``op``'s output (ShardWriter adds dtype, shape,
    shard); ``transformed``: its values are not the plan's, so only the transform knows them."""
    src = op.sources[0]
    rec = {
        "source": src.name,
        "rule": op.rule,
        "rule_source": op.rule_source,
        "transformed": transformed,
        "source_dtype": src.dtype.name,
        "source_shape": list(src.shape),
    }
    if op.args:
        rec["args"] = op.args
    return rec


def transformed(m: Manifest) -> list[str]:
    """Outputs of a run through a user transform whose values it changed (a record without the flag: changed)."""
    return [n for n, r in (m.tensors or {}).items() if r.get("transformed", True)]


def shard_records(shards) -> dict:
    """Finished shards (``.file``, ``.bytes``, ``.digest`` by ``.hash``) as the manifest lists them."""
    return {s.file: {"bytes": s.bytes, s.hash: s.digest} for s in shards}


def for_run(
    *,
    version: str,
    source: str,
    options: dict,
    source_key: str | None,
    mlx_source: bool,
    tensors: dict | None,
    shards: dict,
    dropped,
    warnings: list,
    plan_sha256: str,
    source_files: dict,
    to_torch: dict | None = None,
    target: str | None = None,
) -> Manifest:
    """A planned run (either direction). ``tensors`` None while it goes on (complete: false);
    ``to_torch``: ``{"format", "model", "model_kwargs", "use_model"}`` of a --to torch run;
    ``target``: the forward run's target (stream/targets)."""
    layout = ["torch2mlx", "source", "options"]
    layout += ["target"] if target is not None else []
    layout += ["source_key"] if source_key is not None else []
    layout += ["source_layout"] if mlx_source else []
    layout += ["tensors"] if tensors is not None else []
    layout += ["shards", "hash", "dropped", "warnings", "plan_sha256", "source_files", "complete"]
    values = {}
    if to_torch is not None:
        layout += ["to", "format", "model", "model_kwargs", "use_model"]
        values = dict(to_torch, to="torch")
    return _made(
        layout,
        torch2mlx=version,
        source=source,
        options=options,
        target=target,
        source_key=source_key,
        source_layout="mlx" if mlx_source else None,
        tensors=tensors,
        shards=shards,
        hash=HASH,
        dropped=dropped_records(dropped),
        warnings=warnings,
        plan_sha256=plan_sha256,
        source_files=source_files,
        complete=tensors is not None,
        **values,
    )


def for_zarr(
    *,
    version: str,
    source: str,
    options: dict,
    source_key: str | None,
    compressor: str,
    records: dict,
    array_path,
    dropped,
    warnings: list,
) -> Manifest:
    """A finished zarr store: records name their array (``array_path(name)``) instead of a shard."""
    layout = ["torch2mlx", "source", "options", "format"] + (["source_key"] if source_key is not None else [])
    layout += ["compressor", "tensors", "dropped", "warnings", "complete"]
    tensors = {n: {k: v for k, v in r.items() if k != "shard"} | {"array": array_path(n)} for n, r in records.items()}
    return _made(
        layout,
        torch2mlx=version,
        source=source,
        options=options,
        format="zarr",
        source_key=source_key,
        compressor=compressor,
        tensors=tensors,
        dropped=dropped_records(dropped),
        warnings=warnings,
        complete=True,
    )


def for_transform(*, source: str, source_files: dict | None, options: dict, dropped, warnings: list) -> dict:
    """What a run through a user transform adds to its ShardWriter's manifest (``for_writer``'s ``extra``)."""
    return {
        "source": source,
        "source_files": source_files or {},
        "options": options,
        "transform": True,
        "dropped": dropped_records(dropped),
        "warnings": warnings,
    }


def for_writer(*, version: str, extra: dict, records: dict, shards: dict) -> Manifest:
    """A ShardWriter's manifest: ``extra`` (``for_transform``'s, or nothing) then the records and shards."""
    return Manifest.from_dict({"torch2mlx": version, **extra, "tensors": records, "shards": shards, "hash": HASH})


def path(out_dir: str) -> str:
    return os.path.join(out_dir, NAME)


def write(out_dir: str, m: Manifest) -> str:
    """Atomically (temp file, fsync, rename), the text written piece by piece (100,000 records stay cheap)."""
    p = path(out_dir)
    write_json_atomic(p, m.to_dict())
    return p


def read(out_dir: str) -> Manifest:
    """The manifest in ``out_dir``. Raises FileNotFoundError when there is none, OSError or ValueError when
    it cannot be read or parsed, TypeError when it is not a JSON object."""
    with open(path(out_dir), "rb") as f:
        d = json.loads(f.read())
    if not isinstance(d, dict):
        raise TypeError("not a JSON object")
    return Manifest.from_dict(d)


def read_or_none(out_dir: str) -> Manifest | None:
    """The manifest in ``out_dir``; None when there is none or it cannot be read."""
    try:
        return read(out_dir)
    except (OSError, ValueError, TypeError):
        return None


def tensor_records(plan) -> dict[str, dict]:
    """A plan's records, one per output tensor: its source(s), rule, dtype, shape, shard, and what a
    transform (quantization, fp8 scaling) records about it; a quantized weight's scales and biases say
    their ``role``. The inverse of ``specs_from_records`` (which reads source, rule and args back)."""
    recs = {}
    shards = plan.shards
    for op in plan.ops:
        src = op.sources[0]
        for out in op.outputs:
            rec = {
                "source": src.name if len(op.sources) == 1 else [s.name for s in op.sources],
                "rule": op.rule,
                "rule_source": op.rule_source,
                "dtype": out.dtype.name,
                "shape": list(out.shape),
                "source_dtype": src.dtype.name,
                "source_shape": list(src.shape),
                "shard": shards[out.shard].file,
            }
            if op.args:
                rec["args"] = op.args
            if op.transform_info:
                rec.update(op.transform_info)
                if len(op.outputs) > 1:
                    rec["role"] = out.name.rsplit(".", 1)[-1]
            recs[out.name] = rec
    return recs


def specs_from_records(records: dict) -> tuple[list[RuleSpec], dict[str, dict]]:
    """Forward specs from per-tensor records, and each MLX tensor's record (by the name a plan reads).

    A quantized weight's scales and biases are part of it: its one spec reads the
    (dequantized) weight. Raises on a record without a usable source and rule.
    """
    specs, by_mlx = [], {}
    for name, rec in records.items():
        if rec.get("role") in ("scales", "biases"):
            continue
        src = rec.get("source")
        srcs = tuple(src) if isinstance(src, list) else (src,)
        if not all(isinstance(s, str) for s in srcs) or rec.get("rule") not in rules.RULES:
            raise Torch2MLXError(f"{NAME}: record {name!r} has no usable source and rule")
        specs.append(RuleSpec(name, srcs, rec["rule"], dict(rec.get("args") or {}), "manifest"))
        by_mlx[name] = rec
    return specs, by_mlx
