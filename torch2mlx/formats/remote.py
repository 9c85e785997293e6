"""Remote sources: a Hub repo (``hf://org/model[@rev]``), an ``http(s)://`` file or any fsspec URL.

``resolve`` turns a URL into the files it holds (name, size, ETag), pinned to one Hub commit so every read
sees the same bytes, and registers them so ``DataReader`` and the readers find them by the path their entries
carry (``hf://org/model@<commit>/<file>``); ``ranges.py`` reads their bytes.

huggingface_hub (``torch2mlx[hub]``) and fsspec (``torch2mlx[remote]``) are imported only for a source that
needs them; ``http(s)://`` needs neither.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from ..errors import Torch2MLXError
from . import integrity
from .ranges import (
    STATS,
    RemoteFile,
    RemoteIO,
    copy_remote_range,
    forget,
    fsspec_fs,
    open_url,
    read_bytes,
    read_into,
    stream_range,
)

__all__ = ["STATS", "RemoteFile", "copy_remote_range", "read_bytes", "read_into", "stream_range"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path) -> bool:
    """A URL with a scheme other than ``file://`` (local paths never have one)."""
    return isinstance(path, str) and bool(_SCHEME.match(path)) and not path.startswith("file://")


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")


def looks_like_hub_id(path: str) -> bool:
    """``ORG/NAME[@REV]`` as the Hub spells repo ids (checked only for a path that does not exist)."""
    return bool(_HUB_ID.fullmatch(path)) and ".." not in path


def source_url(path) -> str | None:
    """The URL a source names when it is remote, None for a local path: a URL as given, or ``ORG/NAME[@REV]``
    naming no local path as ``hf://ORG/NAME[@REV]`` (as mlx-lm's ``--hf-path``; a local path of that shape
    wins). Every command that takes a SRC (stream, analyze, verify, the library) decides here."""
    if not isinstance(path, str):
        return None
    if is_remote(path):
        return path
    if looks_like_hub_id(path) and not os.path.exists(path):
        return "hf://" + path
    return None


@dataclass
class Listing:
    label: str  # the source as reports name it, e.g. hf://org/model@<commit>
    files: dict[str, RemoteFile]
    commit: str | None = None
    single: str | None = None  # the URL named one file: its name


_FILES: dict[str, RemoteFile] = {}  # label -> file, for DataReader


def lookup_file(path: str) -> RemoteFile | None:
    return _FILES.get(path)


def _register(listing: Listing) -> Listing:
    for f in listing.files.values():
        _FILES[f.label] = f
        integrity.watch(f.label, f.size, f.digest)
    forget({f.label for f in listing.files.values()})
    return listing


def remote_identity(labels: list[str]) -> dict[str, dict]:
    """What the manifest records of remote source files, by name in the repo, in the keys local files use
    (stream/resume.py compares them): ``bytes``, ``blob`` (the ETag: on the Hub the LFS sha256), and the
    commit-pinned ``url`` they were read at."""
    out = {}
    for lab in labels:
        f = _FILES[lab]
        out[f.name] = {"bytes": f.size, "blob": f.etag, "url": lab}
    return out


def checked(labels: list[str]) -> dict[str, str]:
    """What was checked of each remote source file's bytes this run (name -> e.g. "sha256 matched")."""
    return {_FILES[lab].name: integrity.status(lab, _FILES[lab].etag) for lab in labels}


def checked_summary(checks: dict[str, str]) -> str:
    """One line for the report: ``verified: 3 of 4 source files by sha256 (...)``."""
    ok = [n for n, s in checks.items() if s.endswith(" matched")]
    algs = sorted({checks[n].split()[0] for n in ok})
    why = sorted({s for s in checks.values() if not s.endswith(" matched")})
    return (
        f"verified: {len(ok)} of {len(checks)} source file(s)"
        + (f" by {'/'.join(algs)}" if ok else "")
        + (f" (others: {'; '.join(why)})" if why else "")
    )


def changed(src: str, recorded: dict) -> tuple[str, str] | None:
    """(file, what differs) of the first recorded file that ``src`` no longer serves as it was; None if none."""
    now = remote_identity([f.label for f in resolve_url(src).files.values()])
    for name, rec in sorted(recorded.items()):
        cur = now.get(name)
        if cur is None:
            return f"{src}/{name}", "missing"
        diff = [
            what
            for k, what in (("bytes", "size"), ("blob", "etag"))
            if not isinstance(rec, dict) or rec.get(k) != cur[k]
        ]
        if diff:
            return cur["url"], " and ".join(diff) + " differ"
    return None


# -- resolving a URL to files -----------------------------------------------------------------------


def resolve_url(url: str) -> Listing:
    if url.startswith("hf://"):
        return _register(_resolve_hub(url))
    if url.startswith(("http://", "https://")):
        return _register(_resolve_http(url))
    return _register(_resolve_fsspec(url))


def _hub_parts(url: str) -> tuple[str, str | None, str | None]:
    """(repo, revision, file): ``hf://ORG/NAME[@REV][/FILE.gguf]`` (one GGUF file of a repo of several)."""
    rest = url[len("hf://") :].strip("/")
    if rest.startswith("models/"):
        rest = rest[len("models/") :]
    file = None
    if rest.endswith(".gguf") and rest.count("/") >= 2:
        rest, _, file = rest.rpartition("/")
    repo, _, rev = rest.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise Torch2MLXError(
            f"{url}: a Hub source is hf://ORG/NAME or hf://ORG/NAME@REVISION (or .../FILE.gguf for one GGUF file)"
        )
    return repo, (rev or None), file


def _resolve_hub(url: str) -> Listing:
    try:
        import huggingface_hub
        from huggingface_hub import errors as hub_errors
        from huggingface_hub.utils import build_hf_headers
    except ImportError:
        raise Torch2MLXError(
            f"{url}: reading from the Hub needs huggingface_hub: pip install 'torch2mlx[hub]'"
        ) from None
    repo, rev, single = _hub_parts(url)
    endpoint = (os.environ.get("HF_ENDPOINT") or huggingface_hub.constants.ENDPOINT).rstrip("/")
    shown = f"hf://{repo}" + (f"@{rev}" if rev else "")
    try:
        info = huggingface_hub.HfApi(endpoint=endpoint).model_info(repo, revision=rev, files_metadata=True)
    except hub_errors.GatedRepoError:
        raise Torch2MLXError(
            f"{shown}: a gated repo; accept its terms on its Hub page, then log in (`hf auth login`) or set HF_TOKEN"
        ) from None
    except hub_errors.RevisionNotFoundError:
        raise Torch2MLXError(f"{shown}: no branch, tag or commit {rev!r} in {repo} on {endpoint}") from None
    except hub_errors.RepositoryNotFoundError:
        raise Torch2MLXError(
            f"{shown}: no such model repo on {endpoint} (check the name; for a private repo log in "
            "with `hf auth login` or set HF_TOKEN)"
        ) from None
    except hub_errors.OfflineModeIsEnabled:
        raise Torch2MLXError(f"{shown}: HF_HUB_OFFLINE is set; unset it to read from the Hub") from None
    except Exception as e:  # HfHubHTTPError, and httpx's transport errors (no OSError)
        raise Torch2MLXError(f"{shown}: cannot read the repo from {endpoint} ({type(e).__name__}: {e})") from None
    commit = info.sha
    if not commit:
        raise Torch2MLXError(f"{shown}: {endpoint} gave no commit for this revision")
    headers = tuple(build_hf_headers().items())
    label = f"hf://{repo}@{commit}"
    files = {}
    for s in info.siblings or ():
        if s.size is None:
            raise Torch2MLXError(f"{shown}: {endpoint} gave no size for {s.rfilename}")
        files[s.rfilename] = RemoteFile(
            f"{label}/{s.rfilename}",
            s.rfilename,
            s.size,
            f"{endpoint}/{repo}/resolve/{commit}/{quote(s.rfilename)}",
            etag=s.lfs.sha256 if s.lfs is not None else s.blob_id,
            headers=headers,
            digest=integrity.digest_of("sha256", s.lfs.sha256) if s.lfs is not None else None,
        )
    if single is not None and single not in files:
        ggufs = sorted(n for n in files if n.endswith(".gguf"))
        raise Torch2MLXError(
            f"{shown}: no file {single!r} in {repo}"
            + (f" (its GGUF files: {', '.join(ggufs[:6])}{' ...' if len(ggufs) > 6 else ''})" if ggufs else "")
        )
    return Listing(label, files, commit=commit, single=single)


def _resolve_http(url: str) -> Listing:
    name = os.path.basename(urlsplit(url).path)
    if not name:
        raise Torch2MLXError(f"{url}: an http(s) source names one file (a directory cannot be listed over HTTP)")
    seen: dict[str, str] = {}
    resp, final = open_url(url, "HEAD", (), None, url, seen=seen)
    size = resp.getheader("Content-Length")
    etag = resp.getheader("ETag")
    # A file served by the Hub (.../resolve/REV/FILE) names its LFS sha256, on the redirect if there is one
    linked = resp.getheader("X-Linked-Etag") or seen.get("x-linked-etag")
    resp.read()
    if size is None:
        raise Torch2MLXError(f"{url}: the server gives no Content-Length; cannot read it by range")
    f = RemoteFile(url, name, int(size), final, etag=etag, digest=integrity.digest_of("sha256", linked))
    return Listing(url.rsplit("/", 1)[0], {name: f}, single=name)


def _resolve_fsspec(url: str) -> Listing:
    fs, path = fsspec_fs(url)
    proto = url.split("://", 1)[0]
    parent = path.rstrip("/").rpartition("/")[0]
    # fsspec keeps listings for the life of the filesystem object (one per process): a URL opened again
    # (verify, --resume, another convert) must see the objects as they are now, not as they were
    for p in (path, parent):
        fs.invalidate_cache(p)
    try:
        if fs.isdir(path):
            found, single = _ls_files(fs, path), None
        else:
            info = fs.info(path)
            found, single = {os.path.basename(path): info}, os.path.basename(path)
    except Exception as e:  # OSErrors, and botocore's own (no credentials, no connection) from s3fs
        raise Torch2MLXError(f"{url}: {_listing_failed(fs, path, proto, e)}") from None
    if single is not None and parent:
        # One file of a model folder brings the folder's config and tokenizer, as a local file does. Reading
        # an object does not imply listing its bucket (S3 grants them apart): without the listing, the file alone.
        try:
            found = {**_ls_files(fs, parent), single: info}
        except Exception:
            pass
    base = url.rstrip("/") if single is None else url.rsplit("/", 1)[0]
    files = {
        n: RemoteFile(f"{base}/{n}", n, int(i["size"]), f"{proto}://{i['name']}", etag=i.get("ETag") or i.get("etag"))
        for n, i in found.items()
    }
    return Listing(base, files, single=single)


_DEFERRED: dict[str, RemoteFile] = {}  # local path -> the remote sidecar to fetch there when it is needed


def fetch_to(f: RemoteFile, path: str) -> None:
    """The whole (small) file into ``path``."""
    with open(path, "wb") as out:
        stream_range(f, 0, f.size, lambda piece, at: out.write(piece))


def defer(f: RemoteFile, path: str) -> None:
    """``path`` stands for ``f`` from now on; ``fetched(path)`` fetches it the first time it is asked for."""
    _DEFERRED[path] = f


def fetched(path: str) -> str:
    """``path``, fetched first if it is a deferred remote sidecar not fetched yet."""
    f = _DEFERRED.pop(path, None)
    if f is not None:
        fetch_to(f, path)
    return path


def _ls_files(fs, path: str) -> dict:
    return {os.path.basename(i["name"]): i for i in fs.ls(path, detail=True) if i.get("type") == "file"}


_S3_HOW = (
    "credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or `aws configure`; "
    "FSSPEC_S3_ANON=true for a public bucket"
)


def _listing_failed(fs, path: str, proto: str, e: Exception) -> str:
    """What went wrong listing ``path``, saying what to do; S3's usual failures are spelled out."""
    if proto not in ("s3", "s3a"):
        if isinstance(e, FileNotFoundError):
            return "no such file or directory"
        return f"cannot list ({type(e).__name__}: {e})"
    endpoint = _s3_endpoint(fs)
    why = str(e).strip() or type(e).__name__
    if type(e).__name__ == "NoCredentialsError":
        return f"no AWS credentials found; set {_S3_HOW}"
    if type(e).__name__ == "EndpointConnectionError":
        return f"cannot connect to {endpoint}; check the endpoint (AWS_ENDPOINT_URL) and the network"
    if isinstance(e, PermissionError):
        return f"access denied by {endpoint} ({why}); check the {_S3_HOW}"
    if isinstance(e, FileNotFoundError):
        bucket, _, key = path.partition("/")
        try:
            has_bucket = fs.exists(bucket)
        except Exception:  # a bucket we may not list: say what is missing as the server put it
            return f"not found at {endpoint} ({why})"
        if not has_bucket:
            return (
                f"no bucket {bucket!r} at {endpoint}; check the name, and the endpoint (AWS_ENDPOINT_URL or "
                "FSSPEC_S3_ENDPOINT_URL for an S3-compatible server other than AWS)"
            )
        return f"no object or prefix {key!r} in bucket {bucket!r} at {endpoint}; check the path"
    return f"cannot list at {endpoint} ({type(e).__name__}: {why})"


def _s3_endpoint(fs) -> str:
    """The endpoint s3fs talks to, as botocore resolved it (AWS_ENDPOINT_URL, FSSPEC_S3_ENDPOINT_URL, AWS)."""
    try:
        return fs.s3.meta.endpoint_url
    except Exception:  # no client was made (the failure came first)
        return (getattr(fs, "client_kwargs", None) or {}).get("endpoint_url") or "the S3 endpoint"


def open_binary(path: str):
    """``open(path, "rb")`` for a local file, a ``RemoteIO`` for a remote one."""
    rf = lookup_file(path) if "://" in path else None
    return RemoteIO(rf) if rf is not None else open(path, "rb")


def file_size(path: str) -> int:
    rf = lookup_file(path) if "://" in path else None
    return rf.size if rf is not None else os.path.getsize(path)
