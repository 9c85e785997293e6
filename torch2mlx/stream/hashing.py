"""Shard hashes: which algorithm the manifest records, and hashing a file with it.

Shards are hashed with BLAKE3: 2.5x sha256's speed on one core here (4.5
against 1.7 GB/s) and it splits one input across threads where there are
cores to spare; sha256, one core at ~1.3 GB/s read back from tmpfs, was half
the time of a passthrough conversion on memory-speed storage. A shard record
holds its digest under the algorithm's name (``{"bytes": n, "blake3": hex}``)
and the manifest's ``hash`` key names the algorithm; a manifest without that
key is an older one, whose records hold ``sha256``. sha256 stays available
(``verify --sha256``: the Hub's LFS object id of a file is its sha256).
"""

from __future__ import annotations

import hashlib
import os

import blake3

HASH = "blake3"
ALGORITHMS = ("blake3", "sha256")
CHUNK = 8 << 20
AUTO = blake3.blake3.AUTO  # one thread per core
# blake3 splits each update across threads. On 2 cores that bought no time and cost ~20% more CPU
# (rayon's idle threads spin in sched_yield while the copy workers need the cores): one thread there.
THREADS = AUTO if (os.cpu_count() or 1) > 2 else 1


def new(algorithm: str, threads: int = THREADS):
    """A hasher; ``threads`` (blake3 only): how many threads one update may use (``AUTO``: one per core)."""
    if algorithm == "blake3":
        return blake3.blake3(max_threads=threads)
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown hash {algorithm!r}")


def recorded(manifest_hash) -> str:
    """The algorithm of a manifest's shard records: its ``hash`` key, sha256 when it has none (older)."""
    return "sha256" if manifest_hash is None else manifest_hash


def file_digests(fd: int, size: int, algorithms=(HASH,), threads: int = THREADS) -> dict[str, str]:
    """Hex digest of the first ``size`` bytes of ``fd`` with each algorithm, in one read.

    A file shorter than ``size`` is hashed as it is (its digest then differs from the recorded one).
    """
    hashers = {a: new(a, threads) for a in algorithms}
    buf = bytearray(min(CHUNK, size) or 1)
    view = memoryview(buf)
    pos = 0
    while pos < size:
        n = os.preadv(fd, [view[: min(len(view), size - pos)]], pos)
        if n == 0:
            break
        for h in hashers.values():
            h.update(view[:n])
        pos += n
    return {a: h.hexdigest() for a, h in hashers.items()}


def file_digest(fd: int, size: int, algorithm: str = HASH, threads: int = THREADS) -> str:
    return file_digests(fd, size, (algorithm,), threads)[algorithm]


def path_digests(path: str, algorithms=(HASH,), threads: int = THREADS) -> dict[str, str]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return file_digests(fd, os.fstat(fd).st_size, algorithms, threads)
    finally:
        os.close(fd)
