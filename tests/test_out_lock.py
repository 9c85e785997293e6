"""Two conversions into one OUT at once: the second is refused, naming the first one's pid.

Without a lock both runs passed the "OUT is empty" check and wrote into each other's
output: one or both failed on files the other had removed, and stray shards of a
failed run stayed beside a complete output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import INDEX, assert_one_error, run_cli
from safetensors.numpy import save_file

import torch2mlx.stream
from torch2mlx.errors import Torch2MLXError
from torch2mlx.stream.verify import verify
from torch2mlx.stream.writers import out_lock
from torch2mlx.stream.writers.out_lock import LOCK


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Six small tensors and a config: several shards, a sidecar, a conversion of a few milliseconds."""
    d = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(1)
    save_file(
        {f"l.{i}.weight": rng.standard_normal((64, 256), dtype=np.float32) for i in range(6)},
        str(d / "model.safetensors"),
    )
    (d / "config.json").write_text('{"hidden_size": 64}')
    return d


# A conversion that waits, inside its first tensor, until the test lets it go: it holds OUT for as
# long as the test needs, however fast the machine converts.
HOLD = """
import os, sys, time
import torch2mlx.stream
src, out, release = sys.argv[1:]
def wait(name, array, dtype):
    open(release + ".waiting", "w").close()
    while not os.path.exists(release):
        time.sleep(0.005)
    return name, array, dtype
torch2mlx.stream.convert(src, out, hook=wait, model=False)
"""


def _hold(src: Path, out: Path, release: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(src), str(out), str(release)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if Path(f"{release}.waiting").exists():
            assert (out / LOCK).read_text().strip() == str(proc.pid)
            return proc
        time.sleep(0.002)
    proc.kill()
    pytest.fail(f"the first conversion never held {out / LOCK}: {proc.communicate()}")


def _stamps(out: Path) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in out.iterdir()}


def test_a_second_run_into_a_busy_out_is_refused_and_touches_nothing(tiny, tmp_path):
    out, release = tmp_path / "out", tmp_path / "release"
    first = _hold(tiny, out, release)
    before = _stamps(out)
    for extra in ([], ["--overwrite"], ["--resume"]):
        proc = run_cli("stream", tiny, out, "--no-model", "--quiet", *extra)
        assert_one_error(proc, f"{out}: another conversion (pid {first.pid}) is writing it")
    assert _stamps(out) == before
    release.touch()
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert verify(tiny, out).ok
    assert not (out / LOCK).exists(), "a finished output kept its lock file"


def test_a_killed_run_leaves_no_lock_that_holds(tiny, tmp_path):
    """flock dies with its process: the lock file a SIGKILL leaves behind does not stop the next run."""
    out = tmp_path / "out"
    first = _hold(tiny, out, tmp_path / "never")
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    assert (out / LOCK).exists()
    proc = run_cli("stream", tiny, out, "--no-model", "--quiet", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert not (out / LOCK).exists()
    assert verify(tiny, out).ok


@pytest.mark.slow
def test_concurrent_runs_into_one_out(tiny, tmp_path):
    """Fifty races of two conversions started together: one wins, the other is refused; never both fail."""
    ref = tmp_path / "ref"
    torch2mlx.stream.convert(tiny, ref, max_shard_size="70KB", model=False)
    want = sorted(os.listdir(ref))
    assert len([n for n in want if n.startswith("model-")]) > 2
    outcomes = {}
    for trial in range(50):
        out = tmp_path / f"out{trial}"
        start = threading.Barrier(2)
        results = [None, None]

        def run(i, start=start, out=out, results=results):
            start.wait()
            try:
                torch2mlx.stream.convert(tiny, out, max_shard_size="70KB", model=False, workers=2)
                results[i] = "ok"
            except Torch2MLXError as e:
                results[i] = str(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count("ok") == 1, (trial, results)
        loser = next(r for r in results if r != "ok")
        assert (
            loser == f"{out}: another conversion (pid {os.getpid()}) is writing it"
            or loser == f"{out}: exists and is not empty (use --overwrite to replace its contents)"
        ), loser
        outcomes[loser.split(": ", 1)[1]] = outcomes.get(loser.split(": ", 1)[1], 0) + 1
        assert sorted(os.listdir(out)) == want, (trial, results)
        rep = verify(tiny, out)
        assert rep.ok, rep.problems
    # Both refusals happen; the lock's is the one that used to be a race.
    assert any(k.startswith("another conversion") for k in outcomes), outcomes


def test_a_lock_taken_on_a_file_its_holder_just_removed_is_taken_again(tmp_path, monkeypatch):
    """Run B opens the lock file; run A takes it, finishes and removes it; B's lock is then on a
    file no longer at that path, so B must take the lock again on a new one (else a third run
    creates a third file and two runs hold OUT at once)."""
    out = tmp_path / "out"
    out.mkdir()
    real_open = os.open
    raced = []

    def open_then_race(path, flags, mode=0o777):
        fd = real_open(path, flags, mode)
        if os.path.basename(path) == LOCK and not raced:
            raced.append(True)
            with out_lock.locked(str(out)):  # run A, start to finish, between B's open and its flock
                pass
        return fd

    monkeypatch.setattr(os, "open", open_then_race)
    with out_lock.locked(str(out)):  # run B
        assert raced
        assert (out / LOCK).read_text().strip() == str(os.getpid())
        with pytest.raises(Torch2MLXError, match=r"another conversion \(pid \d+\) is writing it"):
            with out_lock.locked(str(out)):  # run C
                pass
    assert not (out / LOCK).exists()


def test_lock_file_is_not_left_behind_on_an_error(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(Torch2MLXError, match="exists and is not empty"):
        torch2mlx.stream.convert(tiny, out, model=False)
    assert sorted(os.listdir(out)) == ["something"]


def test_verify_and_index_ignore_a_stale_lock_file(tiny, tmp_path):
    """A run killed after its index was written leaves its lock file: the output is still complete."""
    out = tmp_path / "out"
    torch2mlx.stream.convert(tiny, out, model=False)
    (out / LOCK).write_text("12345\n")
    assert verify(tiny, out).ok
    assert (out / INDEX).exists()
    proc = run_cli("stream", tiny, out, "--no-model", "--quiet", "--resume")
    assert proc.returncode == 0, proc.stderr
    assert not (out / LOCK).exists()


def test_a_filesystem_without_flock_still_converts(tiny, tmp_path, monkeypatch):
    """Some network mounts answer flock with ENOLCK: the run goes on unserialized and leaves no lock file."""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "out"
    torch2mlx.stream.convert(tiny, out, model=False)
    assert verify(tiny, out).ok
    assert not (out / LOCK).exists()
