"""docs/model-api.md's live-model and template examples run as written (torch checks MLX's numbers)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow

MODEL_API = Path(__file__).resolve().parent.parent / "docs" / "model-api.md"


def _python_blocks(section: str) -> list[str]:
    text = MODEL_API.read_text(encoding="utf-8")
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_readme_live_model_and_template_examples_run(tmp_path):
    blocks = _python_blocks("Convert a live model") + _python_blocks("Templates")
    assert len(blocks) == 3
    script = "\n".join(blocks)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    errors = [float(x) for x in lines if re.fullmatch(r"[0-9.e+-]+", x)]
    assert len(errors) == 2 and max(errors) <= 1e-5, proc.stdout
    assert "['fc.bias', 'fc.weight']" in proc.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"weights.safetensors", "tiny.safetensors", "block.safetensors"}


def test_readme_live_model_example_runs_twice(tmp_path):
    """Rerun as a notebook cell is: the second convert(model, "weights.safetensors") replaces the file."""
    script = "\n".join(_python_blocks("Convert a live model"))
    for run in range(2):
        proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (run, proc.stderr)
    names = {p.name for p in tmp_path.iterdir()}
    assert "weights.safetensors" in names and not [n for n in names if n.startswith(".")], names
