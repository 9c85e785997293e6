"""docs/training.md's example runs as written and ends where Lightning ends."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow

TRAINING = Path(__file__).resolve().parent.parent / "docs" / "training.md"


def test_continue_training_example_matches_lightning(tmp_path):
    text = TRAINING.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    proc = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    steps_acc, gap = proc.stdout.strip().splitlines()[-2:]
    steps, acc = steps_acc.split()
    assert steps == "96" and float(acc) > 0.8  # it learned: chance is 25%
    assert float(gap) <= 1e-5  # MLX and Lightning end at the same weights
    # the text quotes what the example prints
    prose = text
    assert f"This prints `{steps_acc}`" in prose and f"and `{gap}`, the largest" in prose, (steps_acc, gap)
    assert [p.name for p in (tmp_path / "mlx-ckpts").iterdir()] == ["epoch=5-step=96"]
