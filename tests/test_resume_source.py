"""A source that changes between a killed run and ``--resume``, and the way back after Ctrl-C.

A real conversion is killed (as in test_resume.py), then a source shard is replaced by
one with the same header and other values: resuming would finish the output from the
new file after shards made from the old one. The manifest records each source file's
size, mtime and inode, and ``--resume`` and ``verify --quick`` compare them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import INDEX, MANIFEST, T2MLX, assert_one_error, read_json, run_cli
from safetensors.numpy import save as safetensors_save
from safetensors.numpy import save_file
from safetensors.torch import load_file

import torch2mlx.stream
from torch2mlx.errors import Torch2MLXError
from torch2mlx.formats.checkpoint import open_checkpoint
from torch2mlx.stream.writers.out_lock import LOCK

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow

SHARD = "13MB"
OPTS = ["--dtype", "float16", "--max-shard-size", SHARD, "--workers", "1", "--quiet", "--no-model"]
SECOND = "model-00002-of-00002.safetensors"


def _tensors(seed: int, part: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"layers.{part * 8 + i}.weight": rng.standard_normal((1536, 2048), dtype=np.float32) for i in range(8)}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """192 MB of float32 in two source files of 8 tensors: eight 12 MB float16 output shards."""
    d = tmp_path_factory.mktemp("src")
    index = {}
    for part in (0, 1):
        name = f"model-0000{part + 1}-of-00002.safetensors"
        tensors = _tensors(part, part)
        save_file(tensors, str(d / name))
        index.update({k: name for k in tensors})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    return d


@pytest.fixture
def source(pristine, tmp_path) -> Path:
    """A private copy each test may change (hard links: a file replaced by rename leaves the original alone)."""
    d = tmp_path / "src"
    shutil.copytree(pristine, d, copy_function=os.link)
    return d


def _shards(out: Path) -> list[Path]:
    return sorted(out.glob("model-*.safetensors"))


def _restore_sigint() -> None:
    # A job a shell starts in the background inherits SIGINT ignored, and Python keeps an ignored SIGINT
    # ignored: the child must see Ctrl-C however this suite was started.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(source: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        T2MLX + ["stream", str(source), str(out)] + OPTS + list(extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_restore_sigint,
    )


def _wait_for(proc: subprocess.Popen, out: Path, finished: int) -> None:
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if out.exists() and len(_shards(out)) >= finished:
            return
        time.sleep(0.002)
    proc.kill()
    pytest.fail(f"the conversion ended (exit {proc.returncode}) before {finished} shard(s) were finished")


def _kill_when(source: Path, out: Path, finished: int) -> None:
    proc = _start(source, out)
    _wait_for(proc, out, finished)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()


def _header(path: Path) -> bytes:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return f.read(n)


def _replace_same_header(path: Path, seed: int, *, keep_mtime: bool = False) -> None:
    """Another file with the same names, dtypes and shapes (so the same size) and other values, renamed into place."""
    old = path.stat()
    part = int(path.name[len("model-0000")]) - 1
    new = path.with_name(path.name + ".new")
    save_file(_tensors(seed, part), str(new))
    assert new.stat().st_size == old.st_size and _header(new) == _header(path)
    if keep_mtime:
        os.utime(new, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(new, path)


def _stamps(out: Path) -> dict[str, tuple[int, int]]:
    """Every file of OUT but a killed run's lock file (the next run that takes the lock removes it)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.iterdir()) if p.name != LOCK}


def _expected_values(source: Path) -> dict[str, torch.Tensor]:
    """torch's reading of the source as it is now, cast by torch."""
    out = {}
    for f in sorted(source.glob("model-*.safetensors")):
        out.update({k: v.to(torch.float16) for k, v in load_file(str(f)).items()})
    return out


def _written_values(out: Path) -> dict[str, torch.Tensor]:
    got = {}
    for f in _shards(out):
        got.update(load_file(str(f)))
    return got


def test_resume_refuses_a_source_shard_replaced_with_the_same_header(source, tmp_path):
    out = tmp_path / "out"
    _kill_when(source, out, 2)
    _replace_same_header(source / SECOND, seed=7)
    before = _stamps(out)
    proc = run_cli("stream", source, out, *OPTS, "--resume")
    assert_one_error(
        proc,
        f"--resume: {source}/{SECOND} changed since the interrupted run (mtime/inode); "
        "rerun with --overwrite to convert afresh",
    )
    assert _stamps(out) == before, "a refused resume changed OUT"
    assert not (out / INDEX).exists()

    proc = run_cli("stream", source, out, *OPTS, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    want, got = _expected_values(source), _written_values(out)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_a_rewrite_that_restores_size_and_mtime_is_caught_by_its_inode(source, tmp_path):
    out = tmp_path / "out"
    _kill_when(source, out, 2)
    first = source / "model-00001-of-00002.safetensors"
    _replace_same_header(first, seed=9, keep_mtime=True)
    proc = run_cli("stream", source, out, *OPTS, "--resume")
    assert_one_error(
        proc, f"--resume: {first} changed since the interrupted run (inode); rerun with --overwrite to convert afresh"
    )


def test_an_in_place_rewrite_restoring_size_mtime_and_inode_is_only_seen_by_a_full_verify(source, tmp_path):
    """The documented limit: nothing cheap tells such a file apart; ``verify`` (values) does."""
    out = tmp_path / "out"
    for f in source.glob("model-*.safetensors"):  # inodes of their own: the shared ones stay intact
        shutil.copyfile(f, f.with_name("own"))
        os.replace(f.with_name("own"), f)
    _kill_when(source, out, 2)
    # A tensor already converted, so the resumed output mixes old and new values.
    name = sorted(load_file(str(_shards(out)[0])))[0]
    victim = source / read_json(source / "model.safetensors.index.json")["weight_map"][name]
    tensors = {k: v.numpy() for k, v in load_file(str(victim)).items()}
    tensors[name][0, 0] += 1
    old = victim.stat()
    with open(victim, "r+b") as f:
        f.write(safetensors_save(tensors))
    os.utime(victim, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (victim.stat().st_ino, victim.stat().st_size, victim.stat().st_mtime_ns) == (
        old.st_ino,
        old.st_size,
        old.st_mtime_ns,
    )
    proc = run_cli("stream", source, out, *OPTS, "--resume")
    assert proc.returncode == 0, proc.stderr
    quick = run_cli("verify", source, out, "--quick")
    assert quick.returncode == 0, quick.stdout
    full = run_cli("verify", source, out)
    assert full.returncode == 1
    assert f"{name}: {name} differs from rule identity" in full.stdout


def test_resume_of_a_complete_output_refuses_a_changed_source(source, tmp_path):
    out = tmp_path / "out"
    assert run_cli("stream", source, out, *OPTS).returncode == 0
    _replace_same_header(source / SECOND, seed=3)
    before = _stamps(out)
    proc = run_cli("stream", source, out, *OPTS, "--resume")
    assert_one_error(
        proc,
        f"--resume: {source}/{SECOND} changed since {out} was converted (mtime/inode); "
        "rerun with --overwrite to convert afresh",
    )
    assert _stamps(out) == before


def test_verify_quick_reports_a_source_changed_since_the_conversion(source, tmp_path):
    out = tmp_path / "out"
    assert run_cli("stream", source, out, *OPTS).returncode == 0
    assert run_cli("verify", source, out, "--quick").returncode == 0
    _replace_same_header(source / SECOND, seed=5)
    proc = run_cli("verify", source, out, "--quick")
    assert proc.returncode == 1, proc.stdout
    assert (
        f"{source}/{SECOND}: changed since this output was made (mtime/inode); --quick compares no values"
        in proc.stdout
    )
    full = run_cli("verify", source, out)  # values: the second file's tensors all differ now
    assert full.returncode == 1
    assert "changed since this output was made" in full.stdout
    assert "layers.8.weight differs" in full.stdout and "layers.0.weight differs" not in full.stdout


def test_verify_quick_reports_a_missing_source_file(source, tmp_path):
    out = tmp_path / "out"
    assert run_cli("stream", source, out, *OPTS).returncode == 0
    (source / SECOND).unlink()
    proc = run_cli("verify", source, out, "--quick")
    assert proc.returncode == 1
    assert f"{source}/{SECOND}: changed since this output was made (missing)" in proc.stdout


def test_the_manifest_records_each_source_file(source, tmp_path):
    out = tmp_path / "out"
    assert run_cli("stream", source, out, *OPTS).returncode == 0
    rec = read_json(out / MANIFEST)["source_files"]
    assert sorted(rec) == ["model-00001-of-00002.safetensors", SECOND]
    st = (source / SECOND).stat()
    assert rec[SECOND] == {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


# ------------------------------------------------------------------ Ctrl-C and the way back (issue 15, item 6)


def test_ctrl_c_names_the_command_that_resumes(source, tmp_path):
    out = tmp_path / "out"
    for _ in range(5):
        proc = _start(source, out, "--overwrite")
        _wait_for(proc, out, 1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            break
        # The run finished before the signal came (the last shards take ~0.1 s): nothing was tested; again.
        shutil.rmtree(out)
    assert proc.returncode == 130, err
    cmd = ["python", "-m", "torch2mlx", "stream", str(source), str(out)] + OPTS + ["--resume"]
    (line,) = err.strip().splitlines()
    assert re.fullmatch(
        r"error: interrupted \((\d+) of (\d+) shard\(s\) finished and kept in .*, no index\); "
        r"continue it with: " + re.escape(" ".join(cmd)),
        line,
    ), line
    again = subprocess.run(T2MLX + cmd[3:], capture_output=True, text=True)  # the printed command, as printed
    assert again.returncode == 0, again.stderr
    assert "resume: reusing" in again.stdout
    assert run_cli("verify", source, out).returncode == 0


def test_rerun_without_resume_over_an_interrupted_run_says_resume(source, tmp_path):
    out = tmp_path / "out"
    _kill_when(source, out, 1)
    before = _stamps(out)
    proc = run_cli("stream", source, out, *OPTS)
    assert_one_error(
        proc,
        f"{out}: holds an interrupted run of this conversion: add --resume to continue it "
        "(or --overwrite to start over)",
    )
    assert _stamps(out) == before
    # Another plan over the same leftovers is not this conversion: the usual refusal.
    proc = run_cli("stream", source, out, "--dtype", "bfloat16", "--max-shard-size", SHARD, "--quiet", "--no-model")
    assert_one_error(proc, "exists and is not empty")


def test_rerun_over_an_interrupted_run_of_a_changed_source_says_overwrite(source, tmp_path):
    out = tmp_path / "out"
    _kill_when(source, out, 1)
    _replace_same_header(source / SECOND, seed=11)
    proc = run_cli("stream", source, out, *OPTS)
    assert_one_error(
        proc,
        f"{out}: holds an interrupted run of this conversion, but {source}/{SECOND} changed "
        "since (mtime/inode): use --overwrite to start over",
    )


def test_a_run_interrupted_before_its_first_shard_is_known_as_one(source, tmp_path):
    """The manifest is written before any shard, so even the earliest interruption is resumable by name."""
    out = tmp_path / "out"
    proc = _start(source, out)
    deadline = time.monotonic() + 60
    while not (out / MANIFEST).exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.001)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    m = read_json(out / MANIFEST)
    assert m["complete"] is False
    proc = run_cli("stream", source, out, *OPTS)
    assert_one_error(proc, "holds an interrupted run of this conversion: add --resume")


# ------------------------------------------------------------------ a source truncated mid-copy (issue 25, item 7)


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_a_source_truncated_during_a_copy_is_named(tmp_path, monkeypatch, kernel_copy):
    src = tmp_path / "model.safetensors"
    save_file({"a": np.arange(1 << 20, dtype=np.float32), "b": np.ones(1 << 20, dtype=np.float32)}, str(src))
    ck = open_checkpoint(src)  # headers read; the file shrinks before the copy
    os.truncate(src, src.stat().st_size - (3 << 20))
    if not kernel_copy:
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    elif not hasattr(os, "copy_file_range"):
        pytest.skip("no copy_file_range on this platform")
    out = tmp_path / "out"
    with pytest.raises(Torch2MLXError) as e:
        torch2mlx.stream.convert(ck, out, model=False)
    assert str(e.value).startswith(f"{src}: ended during a copy (truncated while converting?) (")  # + what was left
    assert not (out / INDEX).exists()
    assert not list(out.glob(".*.tmp"))


def test_a_hub_cache_file_is_recorded_with_its_blob_hash(tmp_path):
    """snapshots/REV/file -> blobs/<sha256>: the blob's name is its content hash, and it is compared too."""
    repo = tmp_path / "models--x--y"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    blob = "a" * 64
    save_file({"w": np.ones((4, 4), dtype=np.float32)}, str(repo / "blobs" / blob))
    (snap / "model.safetensors").symlink_to(Path("..", "..", "blobs", blob))
    out = tmp_path / "out"
    torch2mlx.stream.convert(snap, out, model=False)
    rec = read_json(out / MANIFEST)["source_files"]["model.safetensors"]
    st = (repo / "blobs" / blob).stat()
    assert rec == {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "blob": blob}
    # Another revision with the same bytes under another blob name: a hard link keeps inode, size and mtime.
    other = "b" * 64
    os.link(repo / "blobs" / blob, repo / "blobs" / other)
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to(Path("..", "..", "blobs", other))
    proc = run_cli("stream", snap, out, "--no-model", "--quiet", "--resume")
    assert_one_error(proc, f"--resume: {snap}/model.safetensors changed since {out} was converted (content hash)")


def test_a_manifest_without_source_identity(tmp_path):
    """An older torch2mlx's output: --resume cannot rule out a changed source, --quick says it could not check."""
    src = tmp_path / "model.safetensors"
    save_file({"w": np.arange(64, dtype=np.float32).reshape(8, 8)}, str(src))
    out = tmp_path / "out"
    torch2mlx.stream.convert(src, out, model=False)
    m = read_json(out / MANIFEST)
    del m["source_files"]
    (out / MANIFEST).write_text(json.dumps(m))
    proc = run_cli("verify", src, out, "--quick")
    assert proc.returncode == 0
    assert (
        "note: torch2mlx.json records no source identity: --quick cannot tell whether SRC is the checkpoint"
        in proc.stdout
    )
    proc = run_cli("stream", src, out, "--no-model", "--quiet", "--resume")
    assert_one_error(
        proc,
        f"--resume: {out}: its manifest records no source identity (written by an older "
        "torch2mlx), so a changed source cannot be ruled out; rerun with --overwrite",
    )
