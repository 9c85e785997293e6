"""Where a run writes its output, and what a failed run leaves behind.

A run into a new or empty OUT (or ``--resume``) writes in place. ``--overwrite`` of a
non-empty OUT writes into ``OUT/.t2mlx-new-<pid>`` and swaps the new files in only
once the new output is whole: until then the old output stays complete, so a full
disk or a kill loses nothing that was there before.

A failure (an error, Ctrl-C, SIGTERM) removes every temporary and any index, then
keeps finished shards only when the run can be resumed and at least one is recorded
in the manifest; otherwise OUT goes back to what it was (removed if the run created
it). The exception's message then says which of these happened.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import threading
from typing import Literal

from ...errors import Torch2MLXError
from .. import manifest
from . import output_dir
from .files import fsync_dir, os_error
from .out_lock import LOCK

STAGE_PREFIX = ".t2mlx-new-"
_INDEXES = (output_dir.INDEX, output_dir.BIN_INDEX)
_ZARR_ROOTS = ("zarr.json", ".zgroup")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from an earlier process that had this pid (a restarted container)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_stages(out_dir: str) -> None:
    """Staging directories of --overwrite runs that were killed (their process is gone)."""
    for d in glob.glob(os.path.join(glob.escape(out_dir), STAGE_PREFIX + "*")):
        pid = d.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)) and os.path.isdir(d) and not os.path.islink(d):
            shutil.rmtree(d, ignore_errors=True)


class Target:
    """``with Target(out, ...) as t:`` write into ``t.dir``; on success the output is in ``out``.

    ``resumable``: a failure may keep finished shards (the caller offers --resume).
    ``shards``: how many shards the plan has, for the failure message.
    """

    def __init__(
        self,
        out: str,
        *,
        overwrite: bool,
        src_paths=(),
        resume: bool = False,
        resumable: bool = False,
        shards: int = 0,
        existed: bool | None = None,
    ):
        self.out, self.resume, self.resumable, self.shards = out, resume, resumable, shards
        # ``existed``: whether OUT was there before the run's lock file created it
        self.existed = os.path.isdir(out) if existed is None else existed
        if os.path.isdir(out):
            remove_stale_stages(out)
        self.was_empty = not output_dir.has_contents(out)
        self.staged = overwrite and not resume and not self.was_empty
        output_dir.check_writable(out, overwrite=overwrite, src_paths=src_paths, resume=resume)
        self.dir = os.path.join(out, f"{STAGE_PREFIX}{os.getpid()}") if self.staged else out

    def __enter__(self) -> "Target":
        try:
            output_dir.ready_for_writing(self.dir, overwrite=True, src_paths=[], resume=self.resume)
        except BaseException as e:  # a full disk or a signal already: the same clean-up
            self.__exit__(type(e), e, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        if exc_type is None:
            if self.staged:
                self._swap_whole()
            return False
        left = self._clean_up()
        if isinstance(exc, Torch2MLXError):
            exc.args = (f"{exc} ({left})",)
        elif isinstance(exc, KeyboardInterrupt):
            exc.__dict__["left"] = left  # the CLI's 'interrupted' line says it (not a declared field)
        return False

    # ------------------------------------------------------------ failure

    def _clean_up(self) -> str:
        if self.staged:
            shutil.rmtree(self.dir, ignore_errors=True)
            return f"{self.out} still holds the previous output, unchanged"
        self._remove(glob.glob(os.path.join(glob.escape(self.dir), ".*.tmp")))
        self._remove([os.path.join(self.dir, n) for n in _INDEXES])
        kept = self._kept() if self.resumable else 0
        if kept or self.resume:
            of = f" of {self.shards}" if self.shards else ""
            return (
                f"{kept}{of} shard(s) finished and kept in {self.out}, no index: run the same command with "
                "--resume to continue"
            )
        if not self.existed and not os.path.exists(os.path.join(self.dir, LOCK)):
            shutil.rmtree(self.dir, ignore_errors=True)
            left = f"no shard kept, {self.out} removed"
        else:  # it was empty before this run (or made by the lock, which removes it when released)
            for name in os.listdir(self.dir):
                if name == LOCK:
                    continue
                p = os.path.join(self.dir, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    self._remove([p])
            left = f"no shard kept, {self.out} " + ("removed" if not self.existed else "is empty again")
        return left + (": run the same command again (or with --resume)" if self.resumable else "")

    def _kept(self) -> int:
        """Finished shards the manifest on disk records (a shard gets its name only once recorded)."""
        m = manifest.read_or_none(self.dir)
        shards = (m.shards if m is not None else None) or {}
        return sum(1 for name in shards if os.path.isfile(os.path.join(self.dir, name)))

    @staticmethod
    def _remove(paths) -> None:
        for p in paths:
            try:
                os.unlink(p)
            except OSError:
                pass

    # ------------------------------------------------------------ success

    def _swap_whole(self) -> None:
        """The swap, with Ctrl-C and SIGTERM held until it is done: a few renames, never half of them.

        The handlers are swapped for a recorder rather than the signals masked: another
        thread (torch's, tqdm's) may receive a signal the main thread masks.
        """
        if threading.current_thread() is not threading.main_thread():
            return self._swap()
        got = []
        held = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._swap()
        finally:
            for s, handler in held.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        if got:
            try:
                signal.raise_signal(got[0])  # now, as its handler would have taken it
            except KeyboardInterrupt as e:
                e.__dict__["left"] = f"after the conversion had finished: {self.out} holds the new output"
                raise

    def _swap(self) -> None:
        """Old output out, new files in: renames within OUT, then the index, then the manifest that says complete."""
        try:
            output_dir.clear(self.out)
            if any(os.path.exists(os.path.join(self.dir, n)) for n in _ZARR_ROOTS):
                # a zarr store: the old store's arrays go too, or they would read back beside the new ones
                from .zarr_store import clear_old_store

                clear_old_store(self.out)
            names = sorted(os.listdir(self.dir), key=lambda n: (n == manifest.NAME, n in _INDEXES, n))
            for name in names:
                src, dst = os.path.join(self.dir, name), os.path.join(self.out, name)
                if os.path.isdir(dst) and not os.path.islink(dst) and os.path.isdir(src):
                    shutil.rmtree(dst)  # a zarr array group of the old output under the same name
                os.replace(src, dst)
            os.rmdir(self.dir)
            fsync_dir(self.out)
        except OSError as e:
            raise os_error(self.out, e) from None
