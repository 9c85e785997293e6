"""Reading byte ranges of remote files: HTTP range requests with retries, and the windows they fill.

``stream_range`` reads ``[offset, offset + n)`` of a ``RemoteFile`` with bounded retries and backoff on
429/5xx, dropped connections and short bodies (resuming after the bytes already received); an answer that is
not the requested range (a server that ignores ``Range``, a wrong ``Content-Range``) is an error, never data.
The worker threads read through a shared cache of aligned windows (``read_into``, ``copy_remote_range``), so a
file's bytes are fetched once in large requests however the plan cuts them; ``RemoteIO`` serves the metadata
readers (zip directories) through small windows. Nothing is stored on disk. ``remote.py`` turns URLs into
``RemoteFile``s.
"""

from __future__ import annotations

import http.client
import io
import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from ..errors import Torch2MLXError
from . import integrity

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)$")
RETRIES = 6  # per request: 429/5xx, dropped connections, short bodies
BACKOFF = 0.25  # seconds, doubled per retry, capped at MAX_WAIT
MAX_WAIT = 8.0
TIMEOUT = 60.0
PIECE = 8 * 1024 * 1024  # bytes taken from a response at a time when streaming a long range


@dataclass(frozen=True)
class RemoteFile:
    label: str  # hf://org/model@commit/name: the path entries and messages carry
    name: str  # path inside the repo or directory
    size: int
    url: str  # http(s) URL read by range, or an fsspec URL
    etag: str | None = None
    headers: tuple = ()  # (name, value) sent with each request (the Hub token, user agent)
    digest: tuple[str, str] | None = None  # (algorithm, hex) of the whole file, as its server gives it


@dataclass
class Stats:
    requests: int = 0
    retries: int = 0
    bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, requests=0, retries=0, nbytes=0):
        with self._lock:
            self.requests += requests
            self.retries += retries
            self.bytes += nbytes


STATS = Stats()


def fsspec_fs(url: str):
    try:
        import fsspec
    except ImportError:
        raise Torch2MLXError(f"{url}: reading this URL needs fsspec: pip install 'torch2mlx[remote]'") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise Torch2MLXError(f"{url}: no filesystem for this URL ({e}); install the fsspec package for it") from None


class _Retry(Exception):
    """A failure worth another try (429, 5xx, a dropped connection, a short body)."""

    def __init__(self, why: str, wait: float | None = None):
        super().__init__(why)
        self.wait = wait


_local = threading.local()


def _conn(scheme: str, netloc: str) -> http.client.HTTPConnection:
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    c = pool.get((scheme, netloc))
    if c is None:
        cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        c = pool[(scheme, netloc)] = cls(netloc, timeout=TIMEOUT)
    return c


def _drop(scheme: str, netloc: str) -> None:
    c = getattr(_local, "pool", {}).pop((scheme, netloc), None)
    if c is not None:
        c.close()


def open_url(url: str, method: str, headers, rng: tuple[int, int] | None, label: str, seen: dict | None = None):
    """The response to ``method url`` after redirects, status checked (2xx); ``_Retry`` or an error otherwise.
    ``seen`` collects the headers of the redirects on the way (lower-case names, the first answer's first)."""
    hdrs = dict(headers)
    hdrs["Accept-Encoding"] = "identity"
    if rng is not None:
        hdrs["Range"] = f"bytes={rng[0]}-{rng[1] - 1}"
    origin = urlsplit(url).netloc
    for _ in range(8):
        u = urlsplit(url)
        if u.netloc != origin:  # never hand the Hub token to a CDN
            hdrs.pop("authorization", None)
            hdrs.pop("Authorization", None)
        target = u.path + (f"?{u.query}" if u.query else "")
        c = _conn(u.scheme, u.netloc)
        try:
            c.request(method, target or "/", headers=hdrs)
            resp = c.getresponse()
        except (OSError, http.client.HTTPException) as e:
            _drop(u.scheme, u.netloc)
            raise _Retry(f"{type(e).__name__}: {e}") from None
        status = resp.status
        if status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
            if seen is not None:
                for k, v in resp.getheaders():
                    seen.setdefault(k.lower(), v)
            resp.read()
            url = urljoin(url, resp.getheader("Location"))
            continue
        if 200 <= status < 300:
            return resp, url
        body = resp.read(4096)
        if resp.getheader("Connection", "").lower() == "close":
            _drop(u.scheme, u.netloc)
        if status == 429 or status >= 500:
            after = resp.getheader("Retry-After")
            raise _Retry(f"HTTP {status}", float(after) if after and after.isdigit() else None)
        why = resp.getheader("X-Error-Message") or body.decode("utf-8", "replace").strip()[:200]
        hint = {401: " (log in: `hf auth login`, or set HF_TOKEN)", 403: " (no access: a gated or private file?)"}
        raise Torch2MLXError(f"{label}: HTTP {status}{hint.get(status, '')}" + (f": {why}" if why else ""))
    raise Torch2MLXError(f"{label}: too many redirects")


def _check_range(resp, f: RemoteFile, lo: int, hi: int) -> None:
    """The answer must be bytes [lo, hi) of the file and nothing else."""
    if resp.status == 200:
        if lo == 0 and hi == f.size and int(resp.getheader("Content-Length") or -1) == f.size:
            return  # the whole file was asked for
        raise Torch2MLXError(
            f"{f.label}: the server ignored the Range header (answered 200 with the whole file instead of "
            f"bytes {lo}-{hi - 1}); torch2mlx reads remote files by range and will not download them whole"
        )
    m = _CONTENT_RANGE.match((resp.getheader("Content-Range") or "").strip())
    if resp.status != 206 or m is None:
        raise Torch2MLXError(f"{f.label}: HTTP {resp.status} without a usable Content-Range for bytes {lo}-{hi - 1}")
    a, b, total = int(m.group(1)), int(m.group(2)), m.group(3)
    if (a, b + 1) != (lo, hi) or (total != "*" and int(total) != f.size):
        raise Torch2MLXError(
            f"{f.label}: asked for bytes {lo}-{hi - 1} of {f.size}, the server answered "
            f"{resp.getheader('Content-Range')!r}; refusing to read the wrong bytes"
        )


def _backoff(attempt: int, wait: float | None) -> None:
    time.sleep(min(MAX_WAIT, wait if wait is not None else BACKOFF * (2**attempt)))


def stream_range(f: RemoteFile, offset: int, n: int, sink) -> None:
    """Call ``sink(piece, at)`` for consecutive pieces of bytes ``[offset, offset + n)`` (``at`` from 0)."""
    if offset < 0 or offset + n > f.size:
        raise Torch2MLXError(f"{f.label}: bytes {offset}-{offset + n - 1} lie past the end ({f.size} bytes)")
    if n == 0:
        return
    if not f.url.startswith(("http://", "https://")):
        return _stream_fsspec(f, offset, n, sink)
    # Attempts without progress are bounded by RETRIES; a body that breaks off after some bytes resumes
    # from there, up to 4 * RETRIES tries in all.
    done, attempt, tries, last = 0, 0, 0, ""
    while done < n:
        lo, hi = offset + done, offset + n
        before = done
        tries += 1
        try:
            resp, _ = open_url(f.url, "GET", f.headers, (lo, hi), f.label)
            STATS.add(requests=1)
            try:
                _check_range(resp, f, lo, hi)
            except Torch2MLXError:
                _drop(*urlsplit(f.url)[:2])  # its unread body makes the connection useless
                raise
            while done < n:
                piece = resp.read(min(PIECE, hi - (offset + done)))
                if not piece:
                    raise _Retry(f"short body: {hi - offset - done} bytes missing")
                sink(piece, done)
                done += len(piece)
                STATS.add(nbytes=len(piece))
        except _Retry as e:
            u = urlsplit(f.url)
            _drop(u.scheme, u.netloc)
            last = str(e)
            attempt = 0 if done > before else attempt
            if attempt >= RETRIES or tries > 4 * RETRIES:
                raise Torch2MLXError(
                    f"{f.label}: bytes {lo}-{hi - 1}: gave up after {tries} attempts ({last})"
                ) from None
            STATS.add(retries=1)
            _backoff(attempt, e.wait)
            attempt += 1
        except (OSError, http.client.HTTPException) as e:  # the body broke off mid-read
            u = urlsplit(f.url)
            _drop(u.scheme, u.netloc)
            attempt = 0 if done > before else attempt
            if attempt >= RETRIES or tries > 4 * RETRIES:
                raise Torch2MLXError(f"{f.label}: bytes {lo}-{hi - 1}: gave up after {tries} attempts ({e})") from None
            STATS.add(retries=1)
            _backoff(attempt, None)
            attempt += 1


def _stream_fsspec(f: RemoteFile, offset: int, n: int, sink) -> None:
    fs, path = fsspec_fs(f.url)
    done = 0
    for attempt in range(RETRIES + 1):
        try:
            while done < n:
                step = min(PIECE * 4, n - done)
                data = fs.cat_file(path, start=offset + done, end=offset + done + step)
                STATS.add(requests=1, nbytes=len(data))
                if len(data) != step:
                    raise OSError(f"asked for {step} bytes, got {len(data)}")
                sink(data, done)
                done += step
            return
        except OSError as e:
            if attempt == RETRIES:
                raise Torch2MLXError(
                    f"{f.label}: bytes {offset + done}-: gave up after {attempt + 1} attempts ({e})"
                ) from None
            STATS.add(retries=1)
            _backoff(attempt, None)


def copy_remote_range(f: RemoteFile, offset: int, n: int, sink) -> None:
    """``sink(piece, at)`` for the bytes ``[offset, offset + n)``, through the same windows as ``read_into``:
    a file's bytes are fetched once whether they are copied unchanged or read to be transformed."""
    _WINDOWS.stream(f, offset, n, sink)


def read_into(f: RemoteFile, buf, offset: int) -> None:
    """Fill ``buf`` (any writable buffer) with the file's bytes from ``offset``.

    Reads go through the shared window cache: the blocks of a tensor and the small tensors beside it cost
    one request per ``WINDOW`` bytes, not one each, and a window is fetched once however the reads split it.
    """
    _WINDOWS.read_into(f, memoryview(buf).cast("B"), offset)


WINDOW = 16 * 1024 * 1024  # bytes fetched at once for small reads, aligned to multiples of itself
WINDOWS_KEPT = 8  # windows held, partly read, at most (memory: WINDOW each, plus those being fetched)


class _Window:
    __slots__ = ("data", "error", "done", "served")

    def __init__(self):
        self.data: bytes | bytearray = b""
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.served = 0  # bytes copied out: once every byte has been, nobody needs the window again


class _WindowCache:
    """Aligned windows of remote files, shared by the worker threads; the first thread to need a window
    fetches it, the others wait for it. Least recently used windows go first.

    ``window``/``kept``: sizes of a cache of its own (None: the module's ``WINDOW``/``WINDOWS_KEPT``, read
    at each call so tests can scale them)."""

    def __init__(self, window: int | None = None, kept: int | None = None, hashed: bool = False):
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, int], _Window] = {}  # insertion order = recency
        self._size, self._kept = window, kept
        self._hashed = hashed  # windows go to integrity.feed as they arrive (tensor data, read in order)

    def forget(self, labels: set[str]) -> None:
        with self._lock:
            for key in [key for key in self._windows if key[0] in labels]:
                del self._windows[key]

    def read_into(self, f: RemoteFile, view: memoryview, offset: int) -> None:
        def put(piece, at):
            view[at : at + len(piece)] = piece

        self.stream(f, offset, len(view), put)

    def stream(self, f: RemoteFile, offset: int, n: int, sink) -> None:
        """``sink(piece, at)`` for consecutive pieces of ``[offset, offset + n)``, views into the windows."""
        if offset < 0 or offset + n > f.size:
            raise Torch2MLXError(f"{f.label}: bytes {offset}-{offset + n - 1} lie past the end ({f.size} bytes)")
        pos = 0
        size = self._size or WINDOW
        while pos < n:
            k = (offset + pos) // size
            w = self._get(f, k, size)
            lo = offset + pos - k * size
            take = min(n - pos, len(w.data) - lo)
            sink(memoryview(w.data)[lo : lo + take], pos)
            pos += take
            with self._lock:
                w.served += take
                # Each byte of a source is read once a run: a window whose every byte went out is done with
                # (reads that overlap are rare and only cost a refetch).
                if w.served >= len(w.data) and self._windows.get((f.label, k)) is w:
                    del self._windows[(f.label, k)]

    def _get(self, f: RemoteFile, k: int, size: int) -> _Window:
        key = (f.label, k)
        with self._lock:
            found = self._windows.pop(key, None)
            owner = found is None
            w = _Window() if found is None else found
            self._windows[key] = w  # most recent last
        if not owner:
            w.done.wait()
            if w.error is not None:
                raise w.error
            return w
        try:
            start = k * size
            buf = bytearray(min(size, f.size - start))

            def put(piece, at):
                buf[at : at + len(piece)] = piece

            stream_range(f, start, len(buf), put)
            w.data = buf  # never written again: shared as is, without a copy
        except BaseException as e:
            w.error = e
            with self._lock:
                if self._windows.get(key) is w:
                    del self._windows[key]
            raise
        finally:
            w.done.set()
        with self._lock:
            done = [key for key, x in self._windows.items() if x.done.is_set()]
            for old in done[: max(0, len(done) - (self._kept or WINDOWS_KEPT))]:
                del self._windows[old]
        if self._hashed:  # after done.set(): the threads waiting for this window need not wait for its hash
            integrity.feed(f.label, k * size, w.data, lambda at: self._known(f.label, at // size))
        return w

    def _known(self, label: str, k: int) -> bool:
        """Window ``k`` of the file is being fetched or held."""
        with self._lock:
            return (label, k) in self._windows


_WINDOWS = _WindowCache(hashed=True)
# Metadata (zip directories, local headers, pickles) is read in small scattered pieces: small windows.
_META = _WindowCache(window=64 * 1024, kept=32)
DIRECT = 1024 * 1024  # a metadata read at least this long is one request of its own


def forget(labels: set[str]) -> None:
    """Drop cached windows of these files (a URL's bytes may differ from the last time it was opened)."""
    for cache in (_WINDOWS, _META):
        cache.forget(labels)


class RemoteIO(io.RawIOBase):
    """A remote file as a seekable binary file, for the readers that parse metadata with ``seek``/``read``
    (``zipfile``, the torch zip reader)."""

    def __init__(self, f: RemoteFile):
        super().__init__()
        self.f, self.pos = f, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.f.size}[whence]
        if base + offset < 0:
            raise OSError(22, "negative seek position")
        self.pos = base + offset
        return self.pos

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")
        n = max(0, min(len(view), self.f.size - self.pos))
        if n >= DIRECT:
            view[:n] = read_bytes(self.f, self.pos, n)
        elif n:
            _META.read_into(self.f, view[:n], self.pos)
        self.pos += n
        return n


def read_bytes(f: RemoteFile, offset: int, n: int) -> bytes:
    """Bytes ``[offset, offset + n)`` in one request of their own (headers: no window around them)."""
    buf = bytearray(n)

    def put(piece, at):
        buf[at : at + len(piece)] = piece

    stream_range(f, offset, n, put)
    return bytes(buf)
