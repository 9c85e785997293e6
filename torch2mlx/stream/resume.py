"""Resuming an interrupted conversion: which finished shards can be trusted.

While a conversion runs, ``torch2mlx.json`` is rewritten after every finished
shard with the plan's fingerprint and each finished shard's size and sha256.
A resumed run with the same plan reuses a shard only when the file on disk
still has exactly that size and hash; everything else is redone.
"""
from __future__ import annotations

import hashlib
import json
import os

from ..errors import Torch2MLXError
from .plan import Plan
from .writers.files import sha256_file
from .writers.output_dir import MANIFEST


def fingerprint(plan: Plan) -> str:
    """Hash of everything that decides the output bytes: shard names, headers, tensor records."""
    if plan.fingerprint is None:   # a plan does not change once built; the manifest asks after every shard
        h = hashlib.sha256()
        for s in plan.shards:
            h.update(s.file.encode())
            h.update(s.header)
        h.update(json.dumps(plan.tensor_records(), sort_keys=True).encode())
        plan.fingerprint = h.hexdigest()
    return plan.fingerprint


def recorded_key(out_dir: str) -> str | None:
    """The key path into a nested source that the run in ``out_dir`` read its weights from, if any."""
    try:
        with open(os.path.join(out_dir, MANIFEST), "rb") as f:
            key = json.loads(f.read()).get("source_key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) else None


def finished_shards(plan: Plan, out_dir: str, fp: str) -> tuple[list[int], dict[int, str], list[str]]:
    """(indices of shards to keep, their sha256, notes). Raises when OUT belongs to another plan."""
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        return [], {}, ["nothing to resume (no torch2mlx.json in OUT); converting everything"]
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read())
    except (OSError, ValueError):
        return [], {}, ["torch2mlx.json in OUT is unreadable; converting everything"]
    if manifest.get("plan_sha256") != fp:
        raise Torch2MLXError(f"{out_dir}: holds a conversion with a different plan (other source or options); "
                             "cannot resume it (use --overwrite to start over)")
    keep, digests, notes = [], {}, []
    by_file = {s.file: i for i, s in enumerate(plan.shards)}
    for file, rec in sorted((manifest.get("shards") or {}).items()):
        i = by_file.get(file)
        p = os.path.join(out_dir, file)
        if i is None or not isinstance(rec, dict) or not os.path.isfile(p):
            continue
        if os.path.getsize(p) != rec.get("bytes") or rec.get("bytes") != plan.shards[i].size:
            notes.append(f"{file}: size differs from the manifest; redoing it")
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            digest = sha256_file(fd, plan.shards[i].size)
        finally:
            os.close(fd)
        if digest != rec.get("sha256"):
            notes.append(f"{file}: sha256 differs from the manifest; redoing it")
            continue
        keep.append(i)
        digests[i] = digest
    notes.append(f"resume: reusing {len(keep)} of {len(plan.shards)} shard(s)")
    return keep, digests, notes
