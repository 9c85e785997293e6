"""A Hugging Face Hub stand-in for the tests: serves model repos from a folder on 127.0.0.1.

``root/<org>/<name>/...`` is the repo ``org/name``. It answers the routes huggingface_hub uses for a model
repo (model info, tree, paths-info, resolve with ``Range``) with the Hub's headers and error codes, so the real
client works against it (tests/test_hub_server.py keeps it faithful), and plain ``/files/<path>`` for
``https://``-style URLs. Switches inject faults: 503 answers, dropped connections, short bodies, an ignored
``Range``, a wrong ``Content-Range``; ``fetched`` counts the data bytes sent. As on the Hub, a weight file's
LFS oid (``X-Linked-Etag``, ``lfs.sha256``) is the sha256 of its bytes; ``lfs_oids`` advertises another
(a file whose bytes differ from its oid, or a sparse test file too big to hash); ``hash_files=False`` serves
weight files outside LFS (no sha256 advertised, nothing hashed: for a sparse repo read whole, as a bench does).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
# files stored in LFS, as the Hub's default .gitattributes has them
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz", ".gguf")


@dataclass
class Faults:
    """Each counter is spent one request at a time on resolve/file GETs with a body."""

    status_503: int = 0  # answer 503 (with Retry-After: 0)
    drop: int = 0  # send headers and half the body, then close the connection
    short: int = 0  # claim the full Content-Length, send half, close
    ignore_range: bool = False  # answer 200 with the whole file whatever Range says
    wrong_content_range: bool = False  # 206 with a Content-Range shifted by one byte
    stop_after_bytes: int | None = None  # once this many data bytes are sent, every data GET answers 503
    redirect: bool = False  # resolve of weight files answers 302 to another host name (as the Hub's CDN)


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a client that hangs up early is no test failure
        pass


@dataclass
class HubServer:
    root: str
    host: str = "127.0.0.1"
    port: int = 0
    faults: Faults = field(default_factory=Faults)
    gated: set = field(default_factory=set)  # repo ids answered 403 GatedRepo
    tags: dict = field(default_factory=dict)  # (repo, tag) -> extra revision name accepted
    fetched: int = 0  # data bytes sent by resolve/file GETs
    requests: list = field(default_factory=list)  # (method, path, Range header)
    max_requests: int = 100_000  # a runaway client fails instead of spinning forever
    authorized: list = field(default_factory=list)  # (path, whether an Authorization header came)
    lfs_oids: dict = field(default_factory=dict)  # (repo, path) -> the sha256 advertised instead of the real one
    hash_files: bool = True  # False: no file in LFS, ETag and blob id from name, size and mtime (nothing hashed)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._sha256: dict = {}  # (path, size, mtime_ns) -> hex
        self.httpd = _Quiet((self.host, self.port), _handler(self))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "HubServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)

    # -- repo contents -------------------------------------------------------------------------------

    def repo_dir(self, repo: str) -> str | None:
        d = os.path.join(self.root, *repo.split("/"))
        return d if repo.count("/") == 1 and ".." not in repo and os.path.isdir(d) else None

    def commit(self, repo: str) -> str:
        """A 40-hex commit id derived from the repo's file names and sizes (changes when they change)."""
        h = hashlib.sha1(repo.encode())
        for rel in self.files(repo):
            h.update(f"{rel}:{os.path.getsize(os.path.join(self.repo_dir(repo), rel))}".encode())
        return h.hexdigest()

    def files(self, repo: str) -> list[str]:
        d = self.repo_dir(repo)
        out = []
        for base, _, names in os.walk(d):
            for n in names:
                out.append(os.path.relpath(os.path.join(base, n), d).replace(os.sep, "/"))
        return sorted(out)

    def revision_ok(self, repo: str, rev: str) -> bool:
        return rev in ("main", self.commit(repo)) or self.tags.get((repo, rev)) is not None

    def etag(self, repo: str, rel: str) -> str:
        """The file's sha256 (the Hub's LFS oid), or what ``lfs_oids`` says."""
        if (repo, rel) in self.lfs_oids:
            return self.lfs_oids[(repo, rel)]
        full = os.path.join(self.repo_dir(repo), rel)
        st = os.stat(full)
        key = (full, st.st_size, st.st_mtime_ns)
        if not self.hash_files:  # changes when the file does, as an ETag should; not its content's hash
            return hashlib.sha256(f"{repo}/{rel}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
        if key not in self._sha256:
            h = hashlib.sha256()
            with open(full, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            self._sha256[key] = h.hexdigest()
        return self._sha256[key]

    def file_record(self, repo: str, rel: str) -> dict:
        size = os.path.getsize(os.path.join(self.repo_dir(repo), rel))
        rec = {"type": "file", "path": rel, "size": size, "oid": hashlib.sha1(rel.encode()).hexdigest()}
        if not self.hash_files:
            rec["oid"] = self.etag(repo, rel)[:40]
        elif rel.endswith(LFS_SUFFIXES):
            rec["lfs"] = {"oid": self.etag(repo, rel), "size": size, "pointerSize": 134}
        return rec


def _handler(server: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _count(self) -> bool:
            with server._lock:
                server.requests.append((self.command, self.path, self.headers.get("Range")))
                server.authorized.append((self.path, self.headers.get("Authorization") is not None))
                return len(server.requests) <= server.max_requests

        def _json(self, obj, status=200, extra=()):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status, code, message=""):
            extra = [("X-Error-Code", code)] if code else []
            if message:
                extra.append(("X-Error-Message", message))
            self._json({"error": message or code}, status, extra)

        def _repo_rev(self, repo: str, rev: str) -> bool:
            if server.repo_dir(repo) is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return False
            if repo in server.gated:
                self._error(403, "GatedRepo", "Access to this model is restricted")
                return False
            if not server.revision_ok(repo, rev):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return False
            return True

        def do_HEAD(self):
            self._route()

        def do_GET(self):
            self._route()

        def do_POST(self):
            self._route()

        def _route(self):
            if not self._count():
                self._error(429, "", "too many requests for this test")
                return
            parts = urlsplit(self.path)
            path, query = unquote(parts.path), parse_qs(parts.query)
            if self.command == "POST":
                n = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(n).decode()) if n else {}
                m = re.match(r"/api/models/([^/]+/[^/]+)/paths-info/(.+)$", path)
                if not m:
                    return self._error(404, "", "no such route")
                repo, rev = m.groups()
                if self._repo_rev(repo, rev):
                    have = set(server.files(repo))
                    self._json([server.file_record(repo, p) for p in form.get("paths", []) if p in have])
                return
            m = re.match(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?$", path)
            if m:
                repo, rev = m.group(1), m.group(2) or "main"
                if self._repo_rev(repo, rev):
                    files = server.files(repo)
                    info = {
                        "id": repo,
                        "modelId": repo,
                        "sha": server.commit(repo),
                        "private": False,
                        "gated": False,
                        "disabled": False,
                        "siblings": [
                            _sibling(server.file_record(repo, f))
                            if query.get("blobs") == ["true"]
                            else {"rfilename": f}
                            for f in files
                        ],
                    }
                    self._json(info)
                return
            m = re.match(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$", path)
            if m:
                repo, rev, sub = m.group(1), m.group(2), (m.group(3) or "").strip("/")
                if self._repo_rev(repo, rev):
                    recursive = query.get("recursive") == ["True"] or query.get("recursive") == ["true"]
                    self._json(_tree(server.files(repo), sub, recursive, lambda f: server.file_record(repo, f)))
                return
            m = re.match(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
            if m and not path.startswith("/api/"):
                repo, rev, rel = m.groups()
                if not self._repo_rev(repo, rev):
                    return
                if rel not in server.files(repo):
                    return self._error(404, "EntryNotFound", f"{rel} does not exist")
                if server.faults.redirect and rel.endswith((".safetensors", ".bin")):
                    self.send_response(302)
                    self.send_header("Location", f"http://localhost:{server.port}/files/{repo}/{rel}")
                    self.send_header("X-Repo-Commit", server.commit(repo))
                    if server.hash_files:
                        self.send_header("X-Linked-Etag", f'"{server.etag(repo, rel)}"')
                        self.send_header("X-Linked-Size", str(_size(server, repo, rel)))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                return self._serve_file(
                    os.path.join(server.repo_dir(repo), rel),
                    [("X-Repo-Commit", server.commit(repo)), ("ETag", f'"{server.etag(repo, rel)}"')]
                    + (
                        [
                            ("X-Linked-Etag", f'"{server.etag(repo, rel)}"'),
                            ("X-Linked-Size", str(_size(server, repo, rel))),
                        ]
                        if rel.endswith(LFS_SUFFIXES) and server.hash_files
                        else []
                    ),
                )
            if path.startswith("/files/") and ".." not in path:
                full = os.path.join(server.root, path[len("/files/") :])
                if os.path.isfile(full):
                    return self._serve_file(full, [("ETag", f'"{os.path.getsize(full)}"')])
            self._error(404, "", "no such route")

        def _serve_file(self, full: str, headers: list):
            size = os.path.getsize(full)
            lo, hi, partial = 0, size - 1, False
            rng = self.headers.get("Range")
            f = server.faults
            if rng and not f.ignore_range:
                m = _RANGE.match(rng.strip())
                if not m:
                    return self._error(416, "", "bad range")
                lo = int(m.group(1))
                hi = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
                if lo >= size or hi < lo:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                partial = True
            n = hi - lo + 1
            fault = None
            if self.command == "GET":
                with server._lock:
                    if f.stop_after_bytes is not None and server.fetched >= f.stop_after_bytes:
                        fault = "status_503"
                    for name in ("status_503", "drop", "short"):
                        if fault:
                            break
                        if getattr(f, name) > 0:
                            setattr(f, name, getattr(f, name) - 1)
                            fault = name
                            break
            if fault == "status_503":
                self.send_response(503)
                self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if partial else 200)
            self.send_header("Content-Length", str(n))
            self.send_header("Accept-Ranges", "bytes")
            if partial:
                shift = 1 if f.wrong_content_range else 0
                self.send_header("Content-Range", f"bytes {lo + shift}-{hi + shift}/{size}")
            for k, v in headers:
                self.send_header(k, v)
            if fault:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command == "HEAD":
                return
            send = n // 2 if fault else n
            with open(full, "rb") as fh:
                fh.seek(lo)
                left = send
                while left:
                    buf = fh.read(min(left, 1 << 20))
                    if not buf:
                        break
                    self.wfile.write(buf)
                    left -= len(buf)
                    with server._lock:
                        server.fetched += len(buf)
            if fault:
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(2)

    return Handler


def _sibling(rec: dict) -> dict:
    """A tree record as model info's ``siblings`` spell it (``blobs=true``)."""
    out = {"rfilename": rec["path"], "size": rec["size"], "blobId": rec["oid"]}
    if "lfs" in rec:
        out["lfs"] = {"size": rec["lfs"]["size"], "sha256": rec["lfs"]["oid"], "pointerSize": 134}
    return out


def _size(server: HubServer, repo: str, rel: str) -> int:
    return os.path.getsize(os.path.join(server.repo_dir(repo), rel))


def _tree(files: list[str], sub: str, recursive: bool, record) -> list[dict]:
    prefix = sub + "/" if sub else ""
    out, dirs = [], set()
    for f in files:
        if not f.startswith(prefix):
            continue
        rest = f[len(prefix) :]
        if "/" in rest:
            top = prefix + rest.split("/")[0]
            if top not in dirs:
                dirs.add(top)
                out.append({"type": "directory", "path": top, "oid": hashlib.sha1(top.encode()).hexdigest(), "size": 0})
            if not recursive:
                continue
        out.append(record(f))
    if recursive:  # nested directories too
        for f in files:
            parts = f[len(prefix) :].split("/")[:-1] if f.startswith(prefix) else []
            for i in range(2, len(parts) + 1):
                d = prefix + "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    out.append({"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0})
    return out


@contextlib.contextmanager
def serving(root: str, **settings):
    """A started server for ``root`` (``settings``: HubServer's fields); stopped on exit."""
    srv = HubServer(root, **settings).start()
    try:
        yield srv
    finally:
        srv.stop()


def as_the_hub(root: str, tmp_path, monkeypatch):
    """A fixture's body: ``root`` served as the Hub (HF_ENDPOINT), a fresh HF_HOME, retries without waiting."""
    from torch2mlx.formats import ranges

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(ranges, "BACKOFF", 0.01)
    with serving(root) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        yield srv
