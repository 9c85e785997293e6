"""Reuse an analysis of a config.json model instead of importing torch and transformers again.

Building a transformers model on the meta device costs ~3 s, nearly all of it
importing torch and transformers; the walk and the matching take a tenth of
that. The answer depends only on what the key hashes: config.json's bytes, every
checkpoint tensor's name, dtype and shape, the installed torch and transformers
versions, and torch2mlx's own source files (size and mtime, so an edited
registry never meets a stale answer). A hit is used only when it decodes to
exactly what was stored: anything else is a miss and the model is built again.

Where: ``$T2MLX_CACHE_DIR``, else ``$XDG_CACHE_HOME/torch2mlx/analysis``, else
``~/.cache/torch2mlx/analysis``. ``T2MLX_NO_CACHE=1`` turns it off. Entries are
JSON (never pickle): a planted file can at worst make a conversion's rules wrong,
the same as editing config.json could.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import asdict

from ..core.spec import RuleSpec
from .matching import Match
from .report import Report
from .source import Blocker
from .tree import LayerUse, TensorInfo

_FORMAT = 1
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cache_dir() -> str | None:
    if os.environ.get("T2MLX_NO_CACHE", "") not in ("", "0"):
        return None
    if os.environ.get("T2MLX_CACHE_DIR"):
        return os.environ["T2MLX_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "torch2mlx", "analysis")


def _versions() -> list[str]:
    out = []
    for dist in ("torch", "transformers"):
        try:
            out.append(f"{dist}={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{dist}=none")
    return out


def _code_fingerprint(h) -> None:
    for root, dirs, files in os.walk(_PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                st = os.stat(os.path.join(root, f))
                h.update(f"{os.path.relpath(os.path.join(root, f), _PACKAGE)}:{st.st_size}:{st.st_mtime_ns}\n".encode())


def key(config_dir: str, ck) -> str | None:
    """The entry's name for ``config_dir/config.json`` with checkpoint ``ck`` (None: no checkpoint)."""
    h = hashlib.sha256(f"torch2mlx-analysis {_FORMAT}\n".encode())
    h.update(("\n".join(_versions()) + "\n").encode())
    _code_fingerprint(h)
    try:
        with open(os.path.join(config_dir, "config.json"), "rb") as f:
            h.update(f.read())
    except OSError:
        return None
    if ck is not None:
        h.update(f"\n{ck.format} {ck.layout}\n".encode())
        for e in ck.entries:
            h.update(f"{e.name}\0{e.dtype.name}\0{','.join(map(str, e.shape))}\n".encode())
    return h.hexdigest()


def _encode(report: Report, built_notes: list[str], ck) -> str:
    d = asdict(report)
    d["seconds"] = 0.0
    d["source"] = ""
    # The checkpoint's own notes come last in a report's notes; they are added back on load.
    n_ck = len(ck.notes) if ck is not None else 0
    d["notes"] = d["notes"][: len(d["notes"]) - n_ck]
    return json.dumps(
        {"format": _FORMAT, "report": d, "built_notes": built_notes},
        default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else _refuse(o),
    )


def _refuse(o):
    raise TypeError(f"{type(o).__name__} is not JSON")


def _decode(text: str, source: str, ck) -> tuple[Report, list[str]]:
    top = json.loads(text)
    if top.get("format") != _FORMAT:
        raise ValueError("other format")
    d = top["report"]
    tensors = [
        TensorInfo(
            **{
                **t,
                "sources": tuple(t["sources"]),
                "shape": tuple(t["shape"]),
                "source_shapes": tuple(tuple(s) for s in t["source_shapes"]),
            }
        )
        for t in d["tensors"]
    ]
    layers = [LayerUse(**{**u, "rules": set(u["rules"])}) for u in d["layers"]]
    m = d["checkpoint"]
    matched = (
        None
        if m is None
        else Match(
            [RuleSpec(**{**s, "sources": tuple(s["sources"])}) for s in m["specs"]],
            m["drop"],
            [tuple(u) for u in m["unmatched"]],
            m["missing"],
            m["tensors"],
            m["notes"],
        )
    )
    report = Report(
        source,
        d["model"],
        d["how"],
        d["parameters"],
        d["coverage"],
        d["unsupported"],
        [Blocker(**b) for b in d["blockers"]],
        tensors,
        layers,
        matched,
        d["notes"] + (list(ck.notes) if ck is not None else []),
    )
    return report, list(top["built_notes"])


def load(k: str | None, source: str, ck) -> tuple[Report, list[str], str] | None:
    """(report, the build's notes, entry path) for key ``k``, or None on a miss."""
    where = cache_dir()
    if k is None or where is None:
        return None
    path = os.path.join(where, k + ".json")
    try:
        with open(path, encoding="utf-8") as f:
            report, notes = _decode(f.read(), source, ck)
    except Exception:  # whatever is in the file, an entry that does not decode is a miss
        return None
    return report, notes, path


def save(k: str | None, report: Report, built_notes: list[str], ck) -> None:
    """Store ``report`` under ``k`` when it survives a JSON round trip unchanged; failures are silent."""
    where = cache_dir()
    if k is None or where is None:
        return
    try:
        text = _encode(report, built_notes, ck)
        back, notes = _decode(text, report.source, ck)
    except (TypeError, ValueError, KeyError):
        return
    back.seconds = report.seconds
    if back != report or notes != built_notes:
        return  # something (a tuple in rule args, say) would not come back as it was
    try:
        os.makedirs(where, exist_ok=True)
        tmp = os.path.join(where, f".{k}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, os.path.join(where, k + ".json"))
    except OSError:
        pass
