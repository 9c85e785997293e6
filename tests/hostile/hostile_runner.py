"""Run many ``t2mlx`` command lines in one process: ``python hostile_runner.py JOBS RESULTS``.

JOBS is a JSON list of ``[name, argv]``. Each command goes through
``torch2mlx.cli.main`` exactly as the console script runs it, with stdout and
stderr captured; one JSON line per finished command is appended to RESULTS at
once, so if a command hangs past the caller's timeout, the commands before it
keep their results and the missing one is the culprit.

Starting one interpreter per corpus file would cost more than all the
conversions together; one process per batch keeps the test fast and still
lets the caller put the whole batch under a memory limit. Running the files
one after another in one process also shows that no file leaves anything
behind that changes how the next one is read.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import traceback

CASE_TIMEOUT = 30  # seconds; enforced between bytecodes (a loop inside one C call is caught by the caller's timeout)
TIMEOUT = 120  # seconds for a whole process
MEMORY_LIMIT = 1536 << 20  # address space of each process under test: far below what hostile numbers ask for
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "T2MLX_DEBUG"}
# One BLAS thread: OpenBLAS reserves address space per thread, which the limit above counts.
CLEAN_ENV.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def limit_memory():
    """preexec_fn: an allocation sized by a hostile number then fails loudly, even where memory is overcommitted.

    Linux enforces the limit; macOS may refuse to set it, and then the tests still check everything else.
    """
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ValueError, OSError):
        pass


def run_process(argv) -> subprocess.CompletedProcess:
    """``python -m torch2mlx ARGV`` as its own memory-limited process."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "torch2mlx", *map(str, argv)],
            capture_output=True,
            text=True,
            env=CLEAN_ENV,
            stdin=subprocess.DEVNULL,
            timeout=TIMEOUT,
            preexec_fn=limit_memory,
        )
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, -1, "", f"TIMEOUT after {TIMEOUT}s")


class CaseTimeout(BaseException):
    """Raised by the alarm; a BaseException so that no ``except Exception`` in the code under test swallows it."""


def _alarm(signum, frame):
    raise CaseTimeout


def run(argv: list[str]) -> dict:
    from torch2mlx.cli import main

    out, err = io.StringIO(), io.StringIO()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_TIMEOUT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse
                rc = e.code if isinstance(e.code, int) else 1
    except CaseTimeout:
        rc, err = -1, io.StringIO(f"TIMEOUT after {CASE_TIMEOUT}s")
    except BaseException:  # noqa: BLE001 - anything escaping main() is what the test must report
        rc = -2
        err.write(traceback.format_exc())
    finally:
        signal.alarm(0)
    return {"returncode": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main(jobs_path: str, results_path: str) -> None:
    with open(jobs_path) as f:
        jobs = json.load(f)
    with open(results_path, "a") as results:
        for name, argv in jobs:
            results.write(json.dumps({"name": name, **run(argv)}) + "\n")
            results.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
