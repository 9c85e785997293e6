"""`--resume` after a real crash: a converting process is killed (SIGKILL) at several points, then resumed.

The resumed output must be byte-identical to an uninterrupted run, shards finished
before the crash must not be rewritten, a killed run must never leave an index,
and a shard is trusted only when its size and sha256 match the manifest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import INDEX, MANIFEST, T2MLX, assert_one_error, file_bytes, read_json, run_cli
from safetensors.numpy import save_file

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow

SHARD = "13MB"
OPTS = ["--dtype", "float16", "--max-shard-size", SHARD, "--workers", "1", "--quiet", "--no-model"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """192 MB of float32 in 16 tensors: eight 12 MB float16 output shards, each a few fsyncs long."""
    d = tmp_path_factory.mktemp("resume-src")
    rng = np.random.default_rng(0)
    tensors = {f"layers.{i}.weight": rng.standard_normal((1536, 2048), dtype=np.float32) for i in range(16)}
    save_file(tensors, str(d / "model.safetensors"))
    return d


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("resume-ref") / "out"
    proc = run_cli("stream", source, out, *OPTS)
    assert proc.returncode == 0, proc.stderr
    return _files(out)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: file_bytes(out, p) for p in sorted(out.iterdir())}


def _shards(out: Path) -> list[Path]:
    return sorted(out.glob("model-*.safetensors"))


def _kill_when(source: Path, out: Path, finished: int) -> None:
    """Start a conversion and SIGKILL it once ``finished`` shards have their final names."""
    proc = subprocess.Popen(
        T2MLX + ["stream", str(source), str(out)] + OPTS, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if out.exists() and len(_shards(out)) >= finished:
            break
        time.sleep(0.002)
    if proc.poll() is not None:
        pytest.fail(f"the conversion ended (exit {proc.returncode}) before {finished} shard(s) were finished")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("finished", [0, 1, 3, 6])
def test_killed_run_resumes_to_identical_output(source, reference, tmp_path, finished):
    out = tmp_path / "out"
    _kill_when(source, out, finished)
    assert not (out / INDEX).exists(), "a killed run left an index: the directory looks complete"
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _shards(out)}
    assert len(before) >= finished

    proc = run_cli("stream", source, out, *OPTS, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert _files(out) == reference
    for name, stamp in before.items():  # a finished shard is reused, not rewritten
        p = out / name
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp, name
    assert not list(out.glob(".*.tmp")), "stale temporaries survived the resume"
    if before:
        assert f"resume: reusing {len(before)} of 8 shard(s)" in proc.stdout


def test_a_damaged_shard_is_redone(source, reference, tmp_path):
    out = tmp_path / "out"
    _kill_when(source, out, 3)
    victim = _shards(out)[1]
    with open(victim, "r+b") as f:  # same size, different bytes: only the hash can tell
        f.seek(-4, 2)
        f.write(b"\xde\xad\xbe\xef")
    proc = run_cli("stream", source, out, *OPTS, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert f"{victim.name}: xxh3-128 differs from the manifest; redoing it" in proc.stdout
    assert _files(out) == reference


def test_resume_refuses_another_plan(source, tmp_path):
    out = tmp_path / "out"
    _kill_when(source, out, 2)
    proc = run_cli(
        "stream", source, out, "--dtype", "bfloat16", "--max-shard-size", SHARD, "--quiet", "--no-model", "--resume"
    )
    assert_one_error(proc, "different plan")
    assert not (out / INDEX).exists()


def test_resume_of_a_finished_conversion_keeps_every_shard(source, reference, tmp_path):
    out = tmp_path / "out"
    assert run_cli("stream", source, out, *OPTS).returncode == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in _shards(out)}
    proc = run_cli("stream", source, out, *OPTS, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "resume: reusing 8 of 8 shard(s)" in proc.stdout
    assert {p.name: p.stat().st_mtime_ns for p in _shards(out)} == stamps
    assert _files(out) == reference
    assert read_json(out / MANIFEST)["complete"] is True
