"""Every file of the hostile corpus through the real ``t2mlx stream``, in a memory-limited process.

Each must end with exit status 1 and exactly one ``error:`` line that names
the file and the problem: no traceback, no internal error, no payload run,
no index (nor any finished shard) in OUT, and no MemoryError — the process
runs under an address-space limit far below what the hostile numbers ask
for, so an allocation sized by them would fail loudly instead of quietly
succeeding on a machine that overcommits.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import hostile_corpus

MEMORY_LIMIT = 1536 << 20       # address space of each t2mlx process
TIMEOUT = 60                    # seconds; a hang (e.g. a recursion bomb) fails the case
T2MLX = [sys.executable, "-m", "torch2mlx"]
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "T2MLX_DEBUG"}
# One BLAS thread: OpenBLAS reserves address space per thread, which the limit above counts.
CLEAN_ENV.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_stream(src, out, *args) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(T2MLX + ["stream", str(src), str(out), "-q", *args], capture_output=True, text=True,
                              env=CLEAN_ENV, stdin=subprocess.DEVNULL, timeout=TIMEOUT, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, -1, "", f"TIMEOUT after {TIMEOUT}s")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    cases = hostile_corpus.build(root / "corpus")
    out_root = root / "out"
    out_root.mkdir()
    # Run every case up front, a few processes at a time; each test then checks its own result.
    with ThreadPoolExecutor(max(2, min(8, (os.cpu_count() or 2) * 2))) as pool:
        procs = list(pool.map(lambda c: run_stream(c.src, out_root / c.name, *c.args), cases))
    return root, {c.name: (c, p) for c, p in zip(cases, procs)}


def _catalog(builder) -> list:
    """The cases' names, categories and payloads, for parametrizing (built once, in a scratch directory)."""
    with tempfile.TemporaryDirectory() as d:
        return builder(d)


CATALOG = _catalog(hostile_corpus.build)
HARMLESS = [h.name for h in _catalog(hostile_corpus.harmless)]
CASES = [c.name for c in CATALOG]
LIVE = [c.name for c in CATALOG if c.live]


def test_corpus_is_large_and_covers_every_category():
    assert len(CASES) >= 30
    assert {"code execution", "persistent ids", "storage bounds", "pickle machinery", "zip container",
            "legacy pickle", "safetensors", "directories and indexes", "npz"} <= {c.category for c in CATALOG}


@pytest.mark.parametrize("name", CASES)
def test_hostile_input_fails_cleanly(corpus, name):
    root, results = corpus
    case, proc = results[name]
    err = proc.stderr
    assert "TIMEOUT" not in err, f"{name}: hung (> {TIMEOUT}s)"
    assert "Traceback" not in err, f"{name}: traceback\n{err}"
    assert "MemoryError" not in err and "more memory than" not in err, f"{name}: an allocation sized by the input\n{err}"
    assert proc.returncode == 1, f"{name}: exit {proc.returncode}\nstderr: {err}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: stderr is not one error line: {err!r}"
    assert len(lines[0]) <= 2100 and lines[0].isprintable(), f"{name}: the error line floods the terminal: {err[:300]!r}"
    assert "internal error" not in err, err
    assert case.names in err, f"{name}: the error does not name {case.names}: {err}"
    assert case.expect in err, f"{name}: expected {case.expect!r} in {err}"
    assert not list((root / "corpus").rglob("*" + hostile_corpus.PAYLOAD_SUFFIX)), "a payload ran"
    out = root / "out" / name
    assert not (out / "model.safetensors.index.json").exists()
    assert not list(out.glob("model*.safetensors")) if out.is_dir() else True


@pytest.fixture(scope="module")
def live_corpus(tmp_path_factory):
    # Its own root: the markers these payloads create must not show up in the conversion tests' corpus.
    root = tmp_path_factory.mktemp("live")
    return {c.name: c for c in hostile_corpus.build(root)}


@pytest.mark.parametrize("name", LIVE)
def test_payload_is_live_under_plain_pickle(live_corpus, tmp_path, name):
    """The same bytes under the stock unpickler do run their payload: the refusal above is what stops them."""
    case = live_corpus[name]
    raw = tmp_path / "payload.pkl"
    raw.write_bytes(case.live)
    code = "import pickle, sys\ntry:\n    pickle.loads(open(sys.argv[1], 'rb').read())\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", code, str(raw)], cwd=tmp_path, timeout=60, capture_output=True)
    assert case.marker.exists(), f"{name}: the payload did not run under plain pickle; the case proves nothing"


@pytest.mark.parametrize("name", HARMLESS)
def test_harmless_look_alikes_convert(tmp_path, name):
    """Controls: the corpus builders make valid files, and inert oddities (placeholders, BUILD on a dict) convert."""
    from safetensors.numpy import load_file
    case = next(h for h in hostile_corpus.harmless(tmp_path / "src") if h.name == name)
    proc = run_stream(case.src, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert {k: v.reshape(-1).tolist() for k, v in got.items()} == case.tensors
    assert not list(tmp_path.rglob("*" + hostile_corpus.PAYLOAD_SUFFIX))
