"""Resuming an interrupted conversion: which finished shards can be trusted.

While a conversion runs, ``torch2mlx.json`` is rewritten after every finished
shard with the plan's fingerprint and each finished shard's size and hash.
A resumed run with the same plan reuses a shard only when the file on disk
still has exactly that size and hash; everything else is redone.

The manifest also records each source file's identity (size, mtime, inode, and
the content hash when the file is a Hugging Face cache blob, whose name is its
hash): a source replaced by one with the same headers but other values would
otherwise be finished from the new file after shards made from the old one.
An in-place rewrite that keeps the size and restores the mtime is not seen.
"""

from __future__ import annotations

import hashlib
import json
import os

from ..errors import Torch2MLXError
from . import hashing
from . import manifest as manifest_mod
from .manifest import NAME as MANIFEST
from .manifest import Manifest
from .plan import Plan


def fingerprint(plan: Plan) -> str:
    """Hash of everything that decides the output bytes: shard names, headers, tensor records."""
    if plan.fingerprint is None:  # a plan does not change once built; the manifest asks after every shard
        h = hashlib.sha256()
        for s in plan.shards:
            h.update(s.file.encode())
            h.update(s.header)
        h.update(json.dumps(plan.tensor_records(), sort_keys=True).encode())
        plan.fingerprint = h.hexdigest()
    return plan.fingerprint


# (field, how a message names a difference in it)
_IDENTITY = (("bytes", "size"), ("mtime_ns", "mtime"), ("inode", "inode"), ("blob", "content hash"))


def _stat(path: str) -> dict:
    st = os.stat(path)
    rec: dict[str, int | str] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    real = os.path.realpath(path)
    if os.path.basename(os.path.dirname(real)) == "blobs":  # the Hub cache: snapshots/REV/f -> blobs/<hash>
        rec["blob"] = os.path.basename(real)
    return rec


def _key(src: str, path: str) -> str:
    return os.path.relpath(path, src) if os.path.isdir(src) else os.path.basename(path)


def source_path(src: str, key: str) -> str:
    """Where a recorded source file is now: ``SRC/key`` for a directory, SRC itself for a file."""
    return os.path.join(src, key) if os.path.isdir(src) else src


def source_identity(src: str, files: list[str]) -> dict[str, dict]:
    """Each source file (by its path inside SRC) -> size, mtime_ns, inode (and blob hash)."""
    out = {}
    for f in files:
        try:
            out[_key(src, f)] = _stat(f)
        except OSError as e:
            raise Torch2MLXError(f"{f}: {e.strerror or e}") from None
    return out


def changed_source(src: str, recorded: dict, current: dict | None = None) -> tuple[str, str] | None:
    """(path, what differs) of the first source file that is not the one recorded; None when all are.

    ``current`` (this run's identities) also catches files the recorded run did not read;
    without it each recorded file is looked up under SRC.
    """
    for key, rec in sorted(recorded.items()):
        path = source_path(src, key)
        if current is not None:
            now = current.get(key)
            if now is None:
                return path, "no longer a source file"
        else:
            try:
                now = _stat(path)
            except FileNotFoundError:
                return path, "missing"
            except OSError as e:
                return path, f"unreadable: {e.strerror or e}"
        diff = [what for field, what in _IDENTITY if not isinstance(rec, dict) or rec.get(field) != now.get(field)]
        if diff:
            return path, "/".join(diff)
    for key in sorted((current or {}).keys() - recorded.keys()):
        return source_path(src, key), "not a source file of that run"
    return None


def check_source(src: str, manifest: Manifest, current: dict, out_dir: str) -> None:
    """Refuse to resume over output made from source files that have changed since."""
    recorded = manifest.source_files
    if not isinstance(recorded, dict):
        raise Torch2MLXError(
            f"resume: {out_dir}: its manifest records no source identity (written by an older "
            "torch2mlx), so a changed source cannot be ruled out; rerun with overwrite "
            "to convert afresh"
        )
    changed = changed_source(src, recorded, current)
    if changed:
        since = f"{out_dir} was converted" if manifest.finished else "the interrupted run"
        raise Torch2MLXError(
            f"resume: {changed[0]} changed since {since} ({changed[1]}); rerun with overwrite to convert afresh"
        )


def recorded_key(out_dir: str) -> str | None:
    """The key path into a nested source that the run in ``out_dir`` read its weights from, if any."""
    m = manifest_mod.read_or_none(out_dir)
    key = m.source_key if m is not None else None
    return key if isinstance(key, str) else None


def finished_shards(
    plan: Plan, out_dir: str, fp: str, src: str, current: dict
) -> tuple[list[int], dict[int, str], list[str]]:
    """(indices of shards to keep, their digest with ``hashing.HASH``, notes).

    Raises when OUT belongs to another plan, or when a source file is not the one
    the finished shards were made from (``current``: this run's source identities).
    """
    if not os.path.exists(manifest_mod.path(out_dir)):
        return [], {}, [f"nothing to resume (no {MANIFEST} in OUT); converting everything"]
    try:
        manifest = manifest_mod.read(out_dir)
    except (OSError, ValueError, TypeError):
        return [], {}, [f"{MANIFEST} in OUT is unreadable; converting everything"]
    if manifest.plan_sha256 != fp:
        raise Torch2MLXError(
            f"{out_dir}: holds a conversion with a different plan (other source or options); "
            "cannot resume it (use --overwrite to start over)"
        )
    check_source(src, manifest, current, out_dir)
    keep, digests, notes = [], {}, []
    alg = hashing.recorded(manifest.hash)
    if alg not in hashing.ALGORITHMS:
        return [], {}, [f"{MANIFEST} in OUT records shard hash {alg!r}, unknown here; converting everything"]
    by_file = {s.file: i for i, s in enumerate(plan.shards)}
    for file, rec in sorted((manifest.shards or {}).items()):
        i = by_file.get(file)
        p = os.path.join(out_dir, file)
        if i is None or not isinstance(rec, dict) or not os.path.isfile(p):
            continue
        if os.path.getsize(p) != rec.get("bytes") or rec.get("bytes") != plan.shards[i].size:
            notes.append(f"{file}: size differs from the manifest; redoing it")
            continue
        # A run recorded with another hash (an older torch2mlx's sha256): check with it, record ours.
        got = hashing.path_digests(p, tuple(dict.fromkeys((alg, hashing.HASH))))
        if got[alg] != rec.get(alg):
            notes.append(f"{file}: {alg} differs from the manifest; redoing it")
            continue
        keep.append(i)
        digests[i] = got[hashing.HASH]
    notes.append(f"resume: reusing {len(keep)} of {len(plan.shards)} shard(s)")
    return keep, digests, notes


def interrupted_run(out_dir: str, fp: str, src: str, current: dict) -> str | None:
    """What to tell a run without --resume/--overwrite when OUT holds an unfinished run of this very plan."""
    manifest = manifest_mod.read_or_none(out_dir)
    if manifest is None or manifest.finished or manifest.plan_sha256 != fp:
        return None
    recorded = manifest.source_files
    if not isinstance(recorded, dict):  # an older torch2mlx's run: --resume would refuse it
        return None
    changed = changed_source(src, recorded, current)
    if changed:
        return (
            f"{out_dir}: holds an interrupted run of this conversion, but {changed[0]} changed since "
            f"({changed[1]}): use --overwrite to start over"
        )
    return (
        f"{out_dir}: holds an interrupted run of this conversion: add --resume to continue it "
        "(or --overwrite to start over)"
    )
