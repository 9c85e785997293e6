"""The output directory: refuse to clobber, clear our own old files, copy sidecars, write index last."""

from __future__ import annotations

import glob
import os
import shutil

from ...errors import Torch2MLXError
from ...formats import remote
from .. import card
from ..manifest import NAME as MANIFEST
from .files import os_error, write_json_atomic
from .out_lock import LOCK

INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"  # --to torch --format bin


def has_contents(out_dir: str) -> bool:
    """OUT holds something besides a run's lock file."""
    return os.path.isdir(out_dir) and any(n != LOCK for n in os.listdir(out_dir))


def check_target(out_dir: str, src_paths: list[str]) -> None:
    """Refuse an OUT that is a file or the source's own directory (before anything is written there)."""
    out_abs = os.path.realpath(out_dir)
    for p in src_paths:
        if os.path.dirname(os.path.realpath(p)) == out_abs:
            raise Torch2MLXError(f"{out_dir}: output directory holds the source files; choose another OUT")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise Torch2MLXError(f"{out_dir}: exists and is not a directory")


def check_writable(out_dir: str, *, overwrite: bool, src_paths: list[str], resume: bool = False) -> None:
    """Refuse an OUT we must not write: a file, the source's directory, or non-empty without overwrite/resume."""
    check_target(out_dir, src_paths)
    if has_contents(out_dir) and not (overwrite or resume):
        raise Torch2MLXError(f"{out_dir}: exists and is not empty (use --overwrite to replace its contents)")


def ready_for_writing(out_dir: str, *, overwrite: bool, src_paths: list[str], resume: bool = False) -> None:
    """``check_writable``, then create OUT, clear our old files from it and make sure it can be written."""
    check_writable(out_dir, overwrite=overwrite, src_paths=src_paths, resume=resume)
    try:
        os.makedirs(out_dir, exist_ok=True)
        clear(out_dir, resume=resume)
        probe = os.path.join(out_dir, ".t2mlx-write-test.tmp")
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as e:
        raise os_error(out_dir, e) from None


def clear(out_dir: str, resume: bool = False) -> None:
    """Remove an earlier output's index, manifest, model card, shards and temporaries (``resume``: keep shards,
    manifest)."""
    # The index goes first so the directory never looks complete while we work.
    for name in (INDEX, BIN_INDEX) if resume else (INDEX, BIN_INDEX, MANIFEST):
        if os.path.exists(os.path.join(out_dir, name)):
            os.unlink(os.path.join(out_dir, name))
    # an earlier output's model card describes that output (a run without a card must not keep it)
    old_card = os.path.join(out_dir, card.NAME)
    if os.path.isfile(old_card) and card.is_mlx_card(old_card):
        os.unlink(old_card)
    if not resume:
        for pattern in ("model*.safetensors", "pytorch_model*.bin"):
            for f in glob.glob(os.path.join(glob.escape(out_dir), pattern)):
                os.unlink(f)
    for f in glob.glob(os.path.join(glob.escape(out_dir), ".*.tmp")):
        os.unlink(f)


def copy_sidecars(paths: list[str], out_dir: str, rewrite: dict[str, dict] | None = None) -> list[str]:
    """Copy config/tokenizer files next to the weights; ``rewrite`` replaces a JSON file's content."""
    copied = []
    for p in paths:
        name = os.path.basename(p)
        dst = os.path.join(out_dir, name)
        try:
            if rewrite and name in rewrite:
                write_json_atomic(dst, rewrite[name])
            else:
                shutil.copyfile(remote.fetched(p), dst)  # a remote source's tokenizer arrives now
        except OSError as e:
            raise os_error(dst, e) from None
        copied.append(name)
    made = rewrite or {}
    for name in sorted(set(made) - set(copied)):  # made for a source that has none (a target's config)
        dst = os.path.join(out_dir, name)
        try:
            write_json_atomic(dst, made[name])
        except OSError as e:
            raise os_error(dst, e) from None
        copied.append(name)
    return copied


def write_index(out_dir: str, weight_map: dict[str, str], total_size: int, name: str = INDEX) -> str:
    path = os.path.join(out_dir, name)
    write_json_atomic(path, {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))})
    return path
