"""Every file of the hostile corpus through ``t2mlx stream``, in memory-limited processes.

Each must end with exit status 1 and exactly one ``error:`` line that names
the file and the problem: no traceback, no internal error, no payload run,
no index (nor any finished shard) in OUT, and no MemoryError — the processes
run under an address-space limit far below what the hostile numbers ask for,
so an allocation sized by them fails loudly instead of quietly succeeding on
a machine that overcommits.

The whole corpus runs through the CLI's ``main`` in a few batch processes
(``hostile_runner``); one case per category also runs as its own
``python -m torch2mlx`` process, the console script end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hostile_corpus
import pytest
from hostile_runner import CLEAN_ENV, TIMEOUT, limit_memory, run_process

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
BATCHES = 4


def stream_argv(src, out) -> list[str]:
    return ["stream", str(src), str(out), "-q"]


def run_batches(jobs: list[tuple[str, list[str]]], work: Path) -> dict[str, subprocess.CompletedProcess]:
    """Run ``t2mlx`` command lines in BATCHES memory-limited runner processes side by side."""
    parts = [jobs[i::BATCHES] for i in range(BATCHES)]

    def batch(i):
        jobs_file, results_file = work / f"jobs{i}.json", work / f"results{i}.jsonl"
        jobs_file.write_text(json.dumps(parts[i]))
        try:
            subprocess.run(
                [sys.executable, str(HERE / "hostile_runner.py"), str(jobs_file), str(results_file)],
                env=CLEAN_ENV,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=TIMEOUT,
                preexec_fn=limit_memory,
            )
        except subprocess.TimeoutExpired:
            pass  # the cases without a result line below are reported as hung
        lines = results_file.read_text().splitlines() if results_file.exists() else []
        return [json.loads(line) for line in lines]

    with ThreadPoolExecutor(BATCHES) as pool:
        done = {
            r["name"]: subprocess.CompletedProcess([], r["returncode"], r["stdout"], r["stderr"])
            for rs in pool.map(batch, range(BATCHES))
            for r in rs
        }
    missing = subprocess.CompletedProcess([], -1, "", f"TIMEOUT: no result within {TIMEOUT}s (hung or killed)")
    return {name: done.get(name, missing) for name, _ in jobs}


def _catalog(builder) -> list:
    """The cases' names, categories and payloads, for parametrizing (built in a scratch directory)."""
    with tempfile.TemporaryDirectory() as d:
        return builder(d)


CATALOG = _catalog(hostile_corpus.build)
CASES = [c.name for c in CATALOG]
LIVE = [c.name for c in CATALOG if c.live]
HARMLESS = [h.name for h in _catalog(hostile_corpus.harmless)]
# The console script end to end, in a process of its own: the first case of every category.
ONE_PER_CATEGORY = list({c.category: c.name for c in reversed(CATALOG)}.values())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    cases = hostile_corpus.build(root / "corpus")
    (root / "out").mkdir()
    results = run_batches([(c.name, stream_argv(c.src, root / "out" / c.name)) for c in cases], root)
    return root, {c.name: c for c in cases}, results


def assert_clean_failure(root: Path, case: hostile_corpus.Case, proc: subprocess.CompletedProcess, out: Path):
    name, err = case.name, proc.stderr
    assert "TIMEOUT" not in err, f"{name}: hung\n{err}"
    assert "Traceback" not in err, f"{name}: traceback\n{err}"
    assert "MemoryError" not in err and "more memory than" not in err, (
        f"{name}: an allocation sized by the input\n{err}"
    )
    assert proc.returncode == 1, f"{name}: exit {proc.returncode}\nstderr: {err}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: stderr is not one error line: {err!r}"
    assert len(lines[0]) <= 2100 and lines[0].isprintable(), (
        f"{name}: the error line floods the terminal: {err[:300]!r}"
    )
    assert "internal error" not in err, err
    assert case.names in err, f"{name}: the error does not name {case.names}: {err}"
    assert case.expect in err, f"{name}: expected {case.expect!r} in {err}"
    assert not list(root.rglob("*" + hostile_corpus.PAYLOAD_SUFFIX)), "a payload ran"
    assert not (out / "model.safetensors.index.json").exists()
    assert not list(out.glob("model*.safetensors")), "a failed run left finished shards"


def test_corpus_is_large_and_covers_every_category():
    assert len(CASES) >= 30
    assert {
        "code execution",
        "persistent ids",
        "storage bounds",
        "pickle machinery",
        "zip container",
        "legacy pickle",
        "safetensors",
        "directories and indexes",
        "npz",
        "zarr",
    } <= {c.category for c in CATALOG}


@pytest.mark.parametrize("name", CASES)
def test_hostile_input_fails_cleanly(corpus, name):
    root, cases, results = corpus
    assert_clean_failure(root, cases[name], results[name], root / "out" / name)


@pytest.mark.parametrize("name", ONE_PER_CATEGORY)
def test_hostile_input_through_the_console_script(corpus, name):
    root, cases, _ = corpus
    out = root / "console-out" / name
    assert_clean_failure(root, cases[name], run_process(stream_argv(cases[name].src, out)), out)


def test_payloads_are_live_under_plain_pickle(tmp_path):
    """The same bytes under the stock unpickler do run their payloads: the refusals above are what stops them."""
    cases = [c for c in hostile_corpus.build(tmp_path / "corpus") if c.live]
    assert len(cases) >= 10
    for c in cases:
        (tmp_path / f"{c.name}.pkl").write_bytes(c.live)
    code = (
        "import pickle, sys\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        pickle.loads(open(path, 'rb').read())\n"
        "    except Exception:\n"
        "        pass\n"
    )
    subprocess.run(
        [sys.executable, "-c", code, *(str(tmp_path / f"{c.name}.pkl") for c in cases)],
        cwd=tmp_path,
        timeout=120,
        capture_output=True,
    )
    dead = [c.name for c in cases if not c.marker.exists()]
    assert not dead, f"payloads that did not run under plain pickle (these cases prove nothing): {dead}"


@pytest.fixture(scope="module")
def harmless(tmp_path_factory):
    root = tmp_path_factory.mktemp("harmless")
    cases = hostile_corpus.harmless(root / "src")
    results = run_batches([(h.name, stream_argv(h.src, root / "out" / h.name)) for h in cases], root)
    return root, {h.name: h for h in cases}, results


@pytest.mark.parametrize("name", HARMLESS)
def test_harmless_look_alikes_convert(harmless, name):
    """Controls: the corpus builders make valid files, and inert oddities (placeholders, BUILD on a dict) convert."""
    from safetensors.numpy import load_file

    root, cases, results = harmless
    proc = results[name]
    assert proc.returncode == 0, proc.stderr
    assert all(line.isprintable() for line in proc.stdout.splitlines()), f"unescaped report: {proc.stdout!r}"
    got = load_file(str(root / "out" / name / "model.safetensors"))
    assert {k: v.reshape(-1).tolist() for k, v in got.items()} == cases[name].tensors
    assert not list(root.rglob("*" + hostile_corpus.PAYLOAD_SUFFIX))
