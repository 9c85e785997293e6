"""bench/run.py --quick still runs end to end and writes its results (no timing is asserted: CI boxes vary)."""

import json
import os
import subprocess
import sys

import pytest

# seconds per test (subprocesses, real models or many examples): `make test-fast` leaves this file out
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(120)
def test_bench_quick_mode_runs_and_writes_results(tmp_path):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "bench", "run.py"),
        "--quick",
        "--presets",
        "tiny",
        "--shard-sizes",
        "1MB",
        "--data-dir",
        str(tmp_path / "data"),
        "--work-dir",
        str(tmp_path / "work"),
        "--results-dir",
        str(tmp_path / "results"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "results" / "results.json").read_text())
    (preset,) = res["presets"]
    assert preset["info"]["preset"] == "tiny"
    # The floor and the engine itself must have produced a measurement; peers may be skipped if not installed.
    for name in ("cp", "t2mlx", "t2mlx-bin"):
        assert len(preset["samples"][name]) == 1, preset["skipped"]
        assert preset["samples"][name][0]["rc"] == 0
    assert res["shard_sweep"] and all(row["rc"] == 0 for row in res["shard_sweep"])
    assert any(row.get("seconds") for row in res["dry_run"])
    md = (tmp_path / "results" / "results.md").read_text()
    assert "## Machine" in md and "`t2mlx stream` passthrough" in md
    if "matplotlib is not installed" not in md:
        assert (tmp_path / "results" / "throughput.png").stat().st_size > 0
        assert (tmp_path / "results" / "memory.png").stat().st_size > 0
