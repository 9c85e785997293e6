"""Checking a remote file's bytes against the sha256 its server gives (the Hub's LFS oid, ``X-Linked-Etag``).

The windows of a file (ranges.py) are hashed as they arrive, in file order: no byte is read twice. A window
that arrives ahead of the next one to hash is held until that one is in, a few at most (``AHEAD``): a thread
bringing one more waits while the next one to hash is being fetched (the workers stay near each other, and
memory bounded). A file read further out of order, or not read whole, is reported as not checked instead.
When the last byte is hashed the digest is compared, and a mismatch is an ``IntegrityError`` raised where
the window was fetched, so the run fails.
Files without a digest from their server are never hashed (no cost). An S3 ETag is not taken for an md5:
it is none for multipart uploads and SSE-KMS/SSE-C objects, which a listing cannot tell apart.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time

from ..errors import Torch2MLXError

AHEAD = 4  # windows held, at most, while an earlier one of the same file is still on its way
PATIENCE = 1.0  # seconds a thread ahead waits for the window to hash next to be asked for (once a file)
_HEX = {"sha256": re.compile(r"[0-9a-f]{64}")}


class IntegrityError(Torch2MLXError):
    """A remote file's bytes do not hash to the digest its server gives."""

    def __init__(self, message: str, label: str):
        super().__init__(message)
        self.label = label


def digest_of(algorithm: str, value) -> tuple[str, str] | None:
    """``(algorithm, hex)`` when ``value`` is such a digest (quotes stripped), else None."""
    if not isinstance(value, str):
        return None
    v = value.strip().strip('"').lower()
    return (algorithm, v) if _HEX[algorithm].fullmatch(v) else None


class _FileHash:
    def __init__(self, label: str, size: int, digest: tuple[str, str]):
        self.label, self.size, self.digest = label, size, digest
        self.h = hashlib.new(digest[0])
        self.pos = 0  # bytes hashed so far (the file's first ``pos`` bytes)
        self.pending: dict[int, object] = {}  # windows that arrived ahead of ``pos``, by offset
        self.busy = False  # a thread is hashing (and advancing ``pos``)
        self.gave_up = False  # read too far out of order to hash without reading it twice
        self.starts: set[int] = set()  # windows seen, to tell a file read in part from one read out of order
        self.seen = 0  # bytes in those windows
        self.lock = threading.Condition()

    def feed(self, start: int, data, fetching=None) -> None:
        with self.lock:
            # Too far ahead: wait for the window to hash next while it is being fetched, or (a worker between
            # two windows) up to PATIENCE for it to be asked for, instead of giving up at once. A file whose
            # first window nobody asked for is read from its middle (a resumed run): no wait.
            deadline = None
            while not self.gave_up and start > self.pos and len(self.pending) >= AHEAD and fetching is not None:
                if not fetching(self.pos):
                    now = time.monotonic()
                    deadline = deadline or now + (PATIENCE if self.pos else 0.0)
                    if now >= deadline:
                        break
                self.lock.wait(0.05)
            if start not in self.starts:
                self.starts.add(start)
                self.seen += len(data)
            if self.gave_up or start < self.pos or (self.busy and start == self.pos):
                return  # hashed already (a window fetched again), or given up
            if self.busy or start > self.pos:
                self.pending[start] = data
                if len(self.pending) > AHEAD:
                    self.gave_up = True
                    self.pending.clear()
                return
            self.busy = True
        chunk = data
        while True:
            self.h.update(chunk)  # releases the GIL on large buffers: the other workers go on
            with self.lock:
                self.pos += len(chunk)
                self.lock.notify_all()
                chunk = self.pending.pop(self.pos, None)
                if chunk is None or self.gave_up:
                    self.busy = False
                    break
        if self.pos == self.size and not self.gave_up:
            got = self.h.hexdigest()
            if got != self.digest[1]:
                raise IntegrityError(
                    f"{self.label}: the bytes read have {self.digest[0]} {got}, the server says "
                    f"{self.digest[1]}; the file changed or was corrupted in transfer",
                    self.label,
                )

    def status(self) -> str:
        alg = self.digest[0]
        if self.size == 0:  # nothing to read: the digest of no bytes
            return f"{alg} matched" if self.h.hexdigest() == self.digest[1] else f"{alg} differs"
        if self.pos == self.size and not self.gave_up:
            return f"{alg} matched"
        if self.seen < self.size:
            return f"not checked: {alg} given, but only part of the file was read"
        return f"not checked: {alg} given, but the file was not read in order"


_STATE: dict[str, _FileHash] = {}
_LOCK = threading.Lock()


def watch(label: str, size: int, digest: tuple[str, str] | None) -> None:
    """Hash the file's bytes as they are read from now on (a fresh start: a file opened again)."""
    with _LOCK:
        if digest is None:
            _STATE.pop(label, None)
        else:
            _STATE[label] = _FileHash(label, size, digest)


def feed(label: str, start: int, data, fetching=None) -> None:
    """Bytes ``[start, start + len(data))`` of the file, fetched (called once per window); ``fetching(at)``:
    whether the window that starts at ``at`` is being fetched or was (its bytes are on their way here)."""
    st = _STATE.get(label)
    if st is not None and len(data):
        st.feed(start, data, fetching)


def status(label: str, etag: str | None) -> str:
    """What was checked of the file's bytes, as the manifest and report say it."""
    st = _STATE.get(label)
    if st is not None:
        with st.lock:
            st.pending.clear()  # the run is over: windows held for the hash are not needed
            return st.status()
    return "size and etag only" if etag else "size only"
