"""Faults that must lose nothing: SIGTERM, a full disk at every write site, and --overwrite over a good output.

A full disk is an ``OSError(ENOSPC)`` raised by the real write at one site (a shard's
data, the manifest, the index, a sidecar); SIGTERM is a real signal sent to a real
``python -m torch2mlx stream`` process. After every fault: one ``error:`` line that
says what was left, no temporary anywhere, never a manifest saying ``"complete": true``
without an index, and ``--resume`` (or rerunning) ends byte-identical to an
uninterrupted run. ``--overwrite`` that fails leaves the old output whole.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import INDEX, MANIFEST, T2MLX, assert_one_error, file_bytes, read_json, run_main
from safetensors.numpy import save_file

import torch2mlx.stream.execute as execute
from torch2mlx.stream.verify import verify
from torch2mlx.stream.writers import files, output_dir

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow

OPTS = ["--dtype", "float16", "--max-shard-size", "2200KB", "--workers", "1", "--quiet", "--no-model"]
N_SHARDS = 8


def _source(d: Path, seed: int, rows: int = 512) -> Path:
    """16 float32 tensors (+ config and tokenizer): eight float16 output shards of two tensors each."""
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    save_file(
        {f"layers.{i}.weight": rng.standard_normal((rows, 1024), dtype=np.float32) for i in range(16)},
        str(d / "model.safetensors"),
    )
    (d / "config.json").write_text(json.dumps({"hidden_size": 1024, "seed": seed}))
    (d / "tokenizer.json").write_text(json.dumps({"vocab": list(range(200))}))
    return d


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return _source(tmp_path_factory.mktemp("faults") / "a", 0)


@pytest.fixture(scope="module")
def other_src(tmp_path_factory) -> Path:
    return _source(tmp_path_factory.mktemp("faults") / "b", 1)


def _files(out: Path) -> dict[str, bytes]:
    # a SIGKILLed run's lock file holds nothing and is not part of an output
    return {p.name: file_bytes(out, p) for p in sorted(out.iterdir()) if p.is_file() and p.name != ".torch2mlx.lock"}


def _reference(src: Path, out: Path, opts=OPTS) -> dict[str, bytes]:
    proc = run_main("stream", src, out, *opts)
    assert proc.returncode == 0, proc.stderr
    files_ = _files(out)
    assert len([n for n in files_ if n.startswith("model-")]) == N_SHARDS
    return files_


@pytest.fixture(scope="module")
def reference(src, tmp_path_factory) -> dict[str, bytes]:
    return _reference(src, tmp_path_factory.mktemp("ref") / "out")


@pytest.fixture(scope="module")
def other_reference(other_src, tmp_path_factory) -> dict[str, bytes]:
    return _reference(other_src, tmp_path_factory.mktemp("ref") / "out")


def _leftovers(out: Path) -> list[str]:
    return (
        [str(p) for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".t2mlx-new-")]
        if out.exists()
        else []
    )


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def complete_needs_index(monkeypatch):
    """Every manifest put in place with "complete": true finds the index already there."""
    real = os.replace
    seen = []

    def replace(a, b, *args, **kw):
        if os.fspath(b).endswith(MANIFEST):
            with open(a, "rb") as f:
                if json.loads(f.read()).get("complete") is True:
                    seen.append(b)
                    assert os.path.exists(os.path.join(os.path.dirname(os.fspath(b)), INDEX)), (
                        "a manifest says complete before the index exists"
                    )
        return real(a, b, *args, **kw)

    monkeypatch.setattr(os, "replace", replace)
    return seen


def _fail_json(monkeypatch, suffix: str, nth: int) -> None:
    """The ``nth`` write of a JSON file whose temporary ends with ``suffix`` meets a full disk."""
    real, count = files.pwrite_all, [0]

    def pwrite_all(fd, data, offset):
        if _fd_path(fd).endswith(suffix) and offset == 0:
            count[0] += 1
            if count[0] == nth:
                real(fd, bytes(data)[:10], offset)  # a partial write, as a full disk leaves
                raise _enospc()
        return real(fd, data, offset)

    monkeypatch.setattr(files, "pwrite_all", pwrite_all)


def _fail_shard(monkeypatch, shard: int) -> None:
    real = execute.pwrite_all

    def pwrite_all(fd, data, offset):
        if f"model-{shard:05d}-of-{N_SHARDS:05d}.safetensors.tmp" in _fd_path(fd):
            raise _enospc()
        return real(fd, data, offset)

    monkeypatch.setattr(execute, "pwrite_all", pwrite_all)


def _fail_sidecar(monkeypatch) -> None:
    def copyfile(a, b, *args, **kw):
        with open(b, "wb") as f:
            f.write(b"{")  # half a tokenizer
        raise _enospc()

    monkeypatch.setattr(output_dir.shutil, "copyfile", copyfile)


FAULTS = {
    "shard data": (lambda mp: _fail_shard(mp, 4), None),
    "manifest after a shard": (lambda mp: _fail_json(mp, "." + MANIFEST + ".tmp", 4), 2),  # 1st: before any shard
    "index": (lambda mp: _fail_json(mp, "." + INDEX + ".tmp", 1), N_SHARDS),
    "final manifest": (lambda mp: _fail_json(mp, "." + MANIFEST + ".tmp", N_SHARDS + 2), N_SHARDS),
    "sidecar": (_fail_sidecar, 0),
}


@pytest.mark.parametrize("site", list(FAULTS))
def test_a_full_disk_at_each_write_site_says_what_it_left_and_resumes(
    src, reference, tmp_path, monkeypatch, complete_needs_index, site
):
    out = tmp_path / "out"
    inject, expect_kept = FAULTS[site]
    with monkeypatch.context() as mp:
        inject(mp)
        err = assert_one_error(run_main("stream", src, out, *OPTS), "no space left on device")
    assert "partial output removed" not in err
    assert _leftovers(out) == []
    assert not (out / INDEX).exists()
    shards = sorted(p.name for p in out.glob("model-*.safetensors")) if out.exists() else []
    if expect_kept is not None:
        assert len(shards) == expect_kept
    if shards:
        man = read_json(out / MANIFEST)
        assert man["complete"] is False and sorted(man["shards"]) == shards
        assert (
            f"({len(shards)} of {N_SHARDS} shard(s) finished and kept in {out}, no index: run the same "
            "command with --resume to continue)" in err
        )
    else:
        assert not out.exists(), "a run that kept nothing left OUT behind"
        assert err.endswith(f"(no shard kept, {out} removed: run the same command again (or with --resume))")
    proc = run_main("stream", src, out, *OPTS, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert _files(out) == reference
    assert complete_needs_index  # the check above did run


def test_a_full_disk_in_an_empty_out_leaves_it_empty(src, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    _fail_shard(monkeypatch, 1)
    err = assert_one_error(run_main("stream", src, out, *OPTS), "no space left on device")
    assert err.endswith(f"(no shard kept, {out} is empty again: run the same command again (or with --resume))")
    assert list(out.iterdir()) == []


def test_a_shard_whose_manifest_write_fails_leaves_no_temporary(src, tmp_path, monkeypatch):
    """The reported case: the manifest after shard 1 meets a full disk; shard 1's temporary went unremoved."""
    out = tmp_path / "out"
    _fail_json(monkeypatch, "." + MANIFEST + ".tmp", 1)
    assert_one_error(run_main("stream", src, out, *OPTS), "no space left on device", "no shard kept")
    assert not out.exists()


# ---------------------------------------------------------------- --overwrite over a complete output


@pytest.mark.parametrize("site", ["shard data", "index", "final manifest", "sidecar"])
def test_a_failed_overwrite_leaves_the_old_output_whole(src, other_src, other_reference, tmp_path, monkeypatch, site):
    out = tmp_path / "out"
    assert run_main("stream", other_src, out, *OPTS).returncode == 0
    (out / "notes.txt").write_text("mine")
    before = _files(out)
    with monkeypatch.context() as mp:
        FAULTS[site][0](mp)
        err = assert_one_error(run_main("stream", src, out, *OPTS, "--overwrite"), "no space left on device")
    assert err.endswith(f"({out} still holds the previous output, unchanged)")
    assert _files(out) == before and _leftovers(out) == []
    assert verify(str(other_src), str(out)).ok


def test_overwrite_replaces_the_output_and_leaves_nothing_else(src, other_src, reference, tmp_path):
    out = tmp_path / "out"
    assert run_main("stream", other_src, out, *OPTS, "--max-shard-size", "1100KB").returncode == 0
    assert len(list(out.glob("model-*"))) == 2 * N_SHARDS
    (out / "notes.txt").write_text("mine")
    proc = run_main("stream", src, out, *OPTS, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert _files(out) == {**reference, "notes.txt": b"mine"} and _leftovers(out) == []
    assert verify(str(src), str(out)).ok


# ---------------------------------------------------------------- signals (real processes)


@pytest.fixture(scope="module")
def big_src(tmp_path_factory) -> Path:
    """Three times the rows: a run long enough to be caught mid-shard."""
    return _source(tmp_path_factory.mktemp("faults") / "big", 2, rows=1536)


BIG_OPTS = ["--dtype", "float16", "--max-shard-size", "6500KB", "--workers", "1", "--quiet", "--no-model"]


@pytest.fixture(scope="module")
def big_reference(big_src, tmp_path_factory) -> dict[str, bytes]:
    return _reference(big_src, tmp_path_factory.mktemp("ref") / "out", BIG_OPTS)


def _shards(out: Path) -> list[Path]:
    return sorted(out.glob("model-*.safetensors")) if out.exists() else []


def _signal_when(args: list, out: Path, ready, sig=signal.SIGTERM) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(
        T2MLX + [str(a) for a in args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not ready(out):
        time.sleep(0.001)
    if proc.poll() is not None:
        pytest.fail(f"the conversion ended (exit {proc.returncode}) before the point to signal it")
    os.kill(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def _mid_shard(out: Path) -> bool:
    return len(_shards(out)) >= 2 and any(out.glob(".model-*.tmp"))


# Sends itself SIGTERM while the index is being written: a point too short to hit from outside.
_AT_INDEX = """
import os, signal, sys
from torch2mlx.stream.writers import files
real = files.pwrite_all
def pwrite_all(fd, data, offset):
    if os.readlink(f"/proc/self/fd/{fd}").endswith(".model.safetensors.index.json.tmp"):
        os.kill(os.getpid(), signal.SIGTERM)
    return real(fd, data, offset)
files.pwrite_all = pwrite_all
from torch2mlx.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _assert_terminated(proc, resume: bool = True) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 143, (proc.returncode, proc.stderr)
    assert len(err.splitlines()) == 1 and err.startswith("error: terminated (SIGTERM) ("), proc.stderr
    assert ("--resume" in err) == resume, err
    return err


@pytest.mark.parametrize("point", ["early", "mid-shard", "index write"])
def test_sigterm_exits_143_with_one_line_and_resumes(big_src, big_reference, tmp_path, point):
    out = tmp_path / "out"
    args = ["stream", big_src, out, *BIG_OPTS]
    if point == "index write":
        proc = subprocess.run(
            [sys.executable, "-c", _AT_INDEX, *map(str, args)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
    else:
        proc = _signal_when(args, out, (lambda o: o.exists()) if point == "early" else _mid_shard)
    err = _assert_terminated(proc)
    assert _leftovers(out) == [] and not (out / INDEX).exists()
    kept = _shards(out)
    if kept:
        assert f"({len(kept)} of {N_SHARDS} shard(s) finished and kept in {out}" in err
        assert sorted(read_json(out / MANIFEST)["shards"]) == [p.name for p in kept]
    if point == "index write":
        assert len(kept) == N_SHARDS
    stamps = {p.name: p.stat().st_mtime_ns for p in kept}
    proc = subprocess.run(
        T2MLX + [str(a) for a in args] + ["--resume"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert _files(out) == big_reference
    assert {n: (out / n).stat().st_mtime_ns for n in stamps} == stamps  # finished shards reused


def test_sigterm_during_overwrite_keeps_the_old_output(big_src, src, tmp_path):
    out = tmp_path / "out"
    assert run_main("stream", src, out, *OPTS).returncode == 0
    before = _files(out)
    proc = _signal_when(
        ["stream", big_src, out, *BIG_OPTS, "--overwrite"],
        out,
        lambda o: any(o.glob(".t2mlx-new-*/model-*.safetensors")),
    )
    err = _assert_terminated(proc, resume=False)
    assert err.endswith(f"({out} still holds the previous output, unchanged)")
    assert _files(out) == before and _leftovers(out) == []


def test_a_killed_overwrite_keeps_the_old_output_and_the_next_run_clears_its_stage(
    big_src, big_reference, src, tmp_path
):
    out = tmp_path / "out"
    assert run_main("stream", src, out, *OPTS).returncode == 0
    before = _files(out)
    _signal_when(
        ["stream", big_src, out, *BIG_OPTS, "--overwrite"],
        out,
        lambda o: any(o.glob(".t2mlx-new-*/model-*.safetensors")),
        signal.SIGKILL,
    )
    assert _files(out) == before  # the stage is a hidden directory; the old files are whole
    assert verify(str(src), str(out)).ok
    assert list(out.glob(".t2mlx-new-*"))
    proc = subprocess.run(
        T2MLX + ["stream", str(big_src), str(out), *BIG_OPTS, "--overwrite"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert _files(out) == big_reference and _leftovers(out) == []


def test_help_and_docs_give_the_exit_status_a_signal_ends_with():
    proc = run_main("stream", "--help")
    text = " ".join(proc.stdout.split())
    assert "Ctrl-C: exit 130; SIGTERM from timeout, docker stop or a scheduler: exit 143" in text
    assert "OUT/.t2mlx-new-<pid>" in text
    docs = Path(__file__).resolve().parent.parent / "docs"
    safety, cli = (" ".join((docs / name).read_text().split()) for name in ("safety.md", "cli.md"))
    assert "exit status 143 (Ctrl-C: 130)" in safety and "`OUT/.t2mlx-new-<pid>`" in safety
    assert "`OUT/.t2mlx-new-<pid>`" in cli  # the --overwrite row of the option table


def test_a_failed_to_torch_overwrite_keeps_the_old_output(src, tmp_path, monkeypatch):
    mlx, back = tmp_path / "mlx", tmp_path / "back"
    assert run_main("stream", src, mlx, *OPTS).returncode == 0
    back_opts = ["--to", "torch", "--dtype", "float32", "--max-shard-size", "4400KB", "--quiet", "--no-model"]
    proc = run_main("stream", mlx, back, *back_opts)
    assert proc.returncode == 0, proc.stderr
    before = _files(back)
    _fail_shard(monkeypatch, 3)
    err = assert_one_error(run_main("stream", mlx, back, *back_opts, "--overwrite"), "no space left on device")
    assert err.endswith(f"({back} still holds the previous output, unchanged)")
    assert _files(back) == before and _leftovers(back) == []
    monkeypatch.undo()
    fresh = tmp_path / "fresh"
    _fail_shard(monkeypatch, 3)
    err = assert_one_error(run_main("stream", mlx, fresh, *back_opts), "no space left on device")
    assert err.endswith(f"(no shard kept, {fresh} removed)") and not fresh.exists()  # --to torch cannot resume


# Sends itself SIGTERM when --overwrite starts renaming the new output into place.
_AT_SWAP = """
import os, signal, sys
real = os.replace
def replace(a, b, *args, **kw):
    if "/.t2mlx-new-" in os.fspath(a) and "/.t2mlx-new-" not in os.fspath(b) and os.fspath(b).endswith(
            "model-00001-of-00008.safetensors"):
        os.kill(os.getpid(), signal.SIGTERM)
    return real(a, b, *args, **kw)
os.replace = replace
from torch2mlx.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_the_overwrite_swap_waits_for_the_swap(src, other_src, reference, tmp_path):
    out = tmp_path / "out"
    assert run_main("stream", other_src, out, *OPTS).returncode == 0
    proc = subprocess.run(
        [sys.executable, "-c", _AT_SWAP, "stream", str(src), str(out), *OPTS, "--overwrite"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    err = _assert_terminated(proc, resume=False)
    assert err.endswith(f"(after the conversion had finished: {out} holds the new output)")
    assert _files(out) == reference and _leftovers(out) == []
