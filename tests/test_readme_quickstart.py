"""The README's quickstart runs as written and prints what the README shows.

Its python blocks build the inputs, its console blocks are run command by command (``t2mlx`` as
``python -m torch2mlx``, ``mlx_lm.generate`` as ``python -m mlx_lm generate``) and each command's output must
be the lines shown, where a ``...`` line stands for lines left out. Only what changes from run to run is
compared loosely: the time and rate of a conversion, mlx-lm's speed lines, and the words a model with random
weights generates (their number is compared).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow

pytest.importorskip("mlx_lm")

README = Path(__file__).resolve().parent.parent / "README.md"
COMMANDS = {
    "t2mlx": [sys.executable, "-m", "torch2mlx"],
    "python": [sys.executable],
    "mlx_lm.generate": [sys.executable, "-m", "mlx_lm", "generate"],
}
VOLATILE = [
    (re.compile(r"[\d.]+ s, [\d.]+ MiB/s$"), "<time> s, <rate> MiB/s"),
    (re.compile(r"^w\d+(?: w\d+)*$"), lambda m: f"<{len(m.group(0).split())} words>"),
]


def _quickstart() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Quickstart\n")
    return text[start : text.index("\n## ", start + 1)]


def _normal(line: str) -> str:
    for pattern, repl in VOLATILE:
        line = pattern.sub(repl, line)
    return line


def _matches(shown: list[str], got: list[str]) -> bool:
    """``got`` is ``shown``, with any number of lines (at least one) where ``shown`` has ``...``."""
    pattern = "".join(r"(?:[^\n]*\n)+" if line == "..." else re.escape(_normal(line)) + r"\n" for line in shown)
    return re.fullmatch(pattern, "".join(_normal(line) + "\n" for line in got)) is not None


def _sessions(section: str) -> list[tuple[str, list[str]]]:
    """(command, output lines) of every ``$`` line in the console blocks."""
    out = []
    for block in re.findall(r"```console\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            else:
                out[-1][1].append(line)
    return out


def test_quickstart_runs_and_prints_what_the_readme_shows(tmp_path):
    section = _quickstart()
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    sessions = _sessions(section)
    assert len(blocks) == 2 and len(sessions) == 7
    env = dict(os.environ, T2MLX_CACHE_DIR=str(tmp_path / "cache"))  # a first run: the model is analyzed
    env.pop("T2MLX_DEBUG", None)
    for block in blocks:
        proc = subprocess.run(
            [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
    for command, shown in sessions:
        argv = shlex.split(command)
        proc = subprocess.run(
            COMMANDS[argv[0]] + argv[1:],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=300,
        )
        assert proc.returncode == 0, (command, proc.stderr)
        assert _matches(shown, proc.stdout.splitlines()), (command, shown, proc.stdout)


def test_the_comparison_can_fail():
    """Loose only where it says: a changed count or rule is a mismatch, a changed time is not."""
    shown = [
        "converted 11 tensors -> 11 in 1 shard(s) at ./cnn-mlx",
        "21.42 KiB in, 10.71 KiB out, 0.03 s, 1 MiB/s",
        "...",
        "w103 w153",
    ]
    assert _matches(shown, [shown[0], "21.42 KiB in, 10.71 KiB out, 0.41 s, 19 MiB/s", "x", "y", "w7 w8"])
    assert not _matches(shown, [shown[0].replace("11 tensors", "12 tensors")] + shown[1:])
    assert not _matches(shown, [shown[0], shown[1], "w103 w153"])  # '...' stands for at least one line
    assert not _matches(shown, [shown[0], "21.42 KiB in, 10.72 KiB out, 0.03 s, 1 MiB/s", "x", "w103 w153"])
    assert not _matches(shown, [shown[0], shown[1], "x", "w103 w153 w9"])
