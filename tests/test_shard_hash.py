"""Shard hashes: a flipped byte anywhere in any shard is caught by `verify` and redone by `--resume`,
with the XXH3-128 this version records and with the sha256 of manifests written before it had a ``hash`` key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from helpers import MANIFEST, check_converted, file_bytes, file_hash, read_json, run_main
from safetensors.torch import save_file

OPTS = ["--max-shard-size", "300KB", "--no-model", "--quiet"]  # passthrough: bfloat16 kept, kernel copies


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    d = tmp_path_factory.mktemp("hash-src")
    g = torch.Generator().manual_seed(0)
    sd = {f"layers.{i}.weight": torch.randn(256, 256, generator=g).to(torch.bfloat16) for i in range(6)}
    save_file(sd, str(d / "model.safetensors"))
    return d, sd


def _convert(src: Path, out: Path) -> dict[str, bytes]:
    proc = run_main("stream", src, out, *OPTS)
    assert proc.returncode == 0, proc.stderr
    return {p.name: file_bytes(out, p) for p in sorted(out.iterdir())}


def _shards(out: Path) -> list[str]:
    return sorted(read_json(out / MANIFEST)["shards"])


def _as_older_manifest(out: Path) -> None:
    """Rewrite the manifest as torch2mlx wrote it before XXH3-128: no ``hash`` key, sha256 records."""
    man = read_json(out / MANIFEST)
    del man["hash"]
    man["shards"] = {f: {"bytes": r["bytes"], "sha256": file_hash(out / f, "sha256")} for f, r in man["shards"].items()}
    (out / MANIFEST).write_text(json.dumps(man, indent=2))


def _flip(path: Path, where: str) -> None:
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    # the header: a byte of its JSON (a quote turned into another character); the middle: a tensor byte
    at = 8 + raw[8 : 8 + n].index(b'"') if where == "header" else 8 + n + (len(raw) - 8 - n) // 2
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("recorded", ["xxh3-128", "sha256"])
@pytest.mark.parametrize("where", ["header", "middle"])
def test_a_flipped_byte_in_any_shard_fails_verify_and_resume_redoes_it(source, tmp_path, recorded, where):
    src, sd = source
    reference = _convert(src, tmp_path / "ref")
    shards = _shards(tmp_path / "ref")
    assert len(shards) == 3 and read_json(tmp_path / "ref" / MANIFEST)["hash"] == "xxh3-128"
    for i, victim in enumerate(shards):
        out = tmp_path / f"out-{i}"  # a directory (an OUT ending in .safetensors names one file)
        assert _convert(src, out) == reference
        if recorded == "sha256":
            _as_older_manifest(out)
        assert run_main("verify", src, out).returncode == 0  # an older manifest still verifies
        _flip(out / victim, where)

        proc = run_main("verify", src, out, "--quick")
        assert proc.returncode == 1, proc.stdout
        assert f"{victim}: {recorded} " in proc.stdout and "differs from the manifest" in proc.stdout, proc.stdout
        assert all(f"{f}: " not in proc.stdout for f in shards if f != victim), proc.stdout

        proc = run_main("stream", src, out, *OPTS[:-1], "--resume")
        assert proc.returncode == 0, proc.stderr
        assert f"{victim}: {recorded} differs from the manifest; redoing it" in proc.stdout, proc.stdout
        assert "resume: reusing 2 of 3 shard(s)" in proc.stdout, proc.stdout
        man = read_json(out / MANIFEST)
        assert man["hash"] == "xxh3-128"  # resumed over an older manifest: every shard recorded anew
        assert {p.name: file_bytes(out, p) for p in sorted(out.iterdir()) if p.name != MANIFEST} == {
            k: v for k, v in reference.items() if k != MANIFEST
        }
        check_converted(out, sd)  # values against torch's tensors, records and every shard's digest
        assert run_main("verify", src, out).returncode == 0


def test_verify_sha256_prints_each_shards_sha256(source, tmp_path):
    src, _ = source
    out = tmp_path / "out"
    _convert(src, out)
    rep = json.loads(run_main("verify", src, out, "--quick", "--sha256", "--json").stdout)
    assert rep["ok"] and rep["sha256"] == {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in _shards(out)}
    text = run_main("verify", src, out, "--quick", "--sha256").stdout
    for f, d in rep["sha256"].items():
        assert f"sha256 {d}  {f}" in text, text
    assert "sha256" not in json.loads(run_main("verify", src, out, "--quick", "--json").stdout)


def test_an_unknown_hash_is_a_problem_not_a_pass(source, tmp_path):
    src, _ = source
    out = tmp_path / "out"
    reference = _convert(src, out)
    man = read_json(out / MANIFEST)
    man["hash"] = "md7"
    (out / MANIFEST).write_text(json.dumps(man))
    proc = run_main("verify", src, out, "--quick")
    assert proc.returncode == 1 and "shard hash 'md7' is not one this torch2mlx knows" in proc.stdout, proc.stdout
    proc = run_main("stream", src, out, *OPTS[:-1], "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "records shard hash 'md7', unknown here; converting everything" in proc.stdout, proc.stdout
    assert "reusing" not in proc.stdout
    assert {p.name: file_bytes(out, p) for p in sorted(out.iterdir())} == reference


@pytest.mark.parametrize("cuts", [[], [1], [4095, 4097, 65537], [8 << 20, (8 << 20) + 1]])
def test_file_digests_through_mmap_pieces_equal_the_reference_hashes(tmp_path, cuts):
    """Hashed through mmap in pieces that start anywhere (as the follower hashes a growing shard), a file's
    digest is what xxhash and hashlib give for its bytes whole."""
    import os

    import xxhash

    from torch2mlx.stream import hashing

    data = torch.randint(0, 256, (hashing.CHUNK * 2 + 12345,), generator=torch.Generator().manual_seed(1))
    raw = data.to(torch.uint8).numpy().tobytes()
    path = tmp_path / "f"
    path.write_bytes(raw)
    want = {"xxh3-128": xxhash.xxh3_128(raw).hexdigest(), "sha256": hashlib.sha256(raw).hexdigest()}
    assert hashing.path_digests(str(path), ("xxh3-128", "sha256")) == want
    hashers = [hashing.new("xxh3-128"), hashing.new("sha256")]
    fd = os.open(path, os.O_RDONLY)
    try:
        bounds = [0, *cuts, len(raw)]
        for start, stop in zip(bounds, bounds[1:], strict=False):
            assert hashing.update_from(hashers, fd, start, stop) == stop - start
    finally:
        os.close(fd)
    assert [h.hexdigest() for h in hashers] == list(want.values())


def test_memory_backed_reads_the_mount_table(tmp_path):
    """The longest mount point above a path decides; an escaped space in a mount point is one."""
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        f"tmpfs {tmp_path}/ram\\040disk tmpfs rw 0 0\n"
        f"/dev/vdb {tmp_path}/ram\\040disk/data ext4 rw 0 0\n"
    )
    from torch2mlx.stream.writers.files import memory_backed

    assert memory_backed(str(tmp_path / "ram disk" / "out"), str(mounts))
    assert memory_backed(str(tmp_path / "ram disk"), str(mounts))
    assert not memory_backed(str(tmp_path / "ram disk" / "data" / "out"), str(mounts))
    assert not memory_backed(str(tmp_path / "ram diskette"), str(mounts))
    assert not memory_backed(str(tmp_path), str(tmp_path / "no-such-mounts"))


def _calls_to_fallocate(monkeypatch) -> list:
    import os

    calls, real = [], os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, off, n: (calls.append(n), real(fd, off, n))[1])
    return calls


def test_on_memory_storage_shards_are_not_preallocated(source, tmp_path, monkeypatch):
    """fallocate zeroes tmpfs pages the copy then overwrites: skipped there, kept on disk; output the same."""
    from torch2mlx.stream import execute

    src, sd = source
    calls = _calls_to_fallocate(monkeypatch)
    on_disk = _convert(src, tmp_path / "disk")
    assert len(calls) == 3  # one claim per shard
    calls.clear()
    monkeypatch.setattr(execute, "memory_backed", lambda path: True)
    assert _convert(src, tmp_path / "ram") == on_disk
    assert calls == []
    check_converted(tmp_path / "ram", sd)


def test_on_memory_storage_a_full_filesystem_fails_before_any_shard(source, tmp_path, monkeypatch):
    import os

    from torch2mlx.stream import execute

    src, _ = source
    monkeypatch.setattr(execute, "memory_backed", lambda path: True)
    real = os.statvfs

    def statvfs(path):  # 400 KB free: less than the three shards (768 KiB) need
        st = real(path)
        return os.statvfs_result((st.f_bsize, 4096, st.f_blocks, 100, 100) + tuple(st)[5:])

    monkeypatch.setattr(os, "statvfs", statvfs)
    out = tmp_path / "out"
    proc = run_main("stream", src, out, *OPTS)
    assert proc.returncode == 1 and "no space left on device" in proc.stderr, proc.stderr
    assert not out.exists() or not list(out.glob("*.safetensors"))
