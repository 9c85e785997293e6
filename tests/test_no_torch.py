"""The stream path never imports torch: it runs in processes where ``import torch`` fails (and is recorded)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import SEED
from helpers import check_converted, read_json, run_cli, torch_load, torch_save
from torch import nn

FAKE_TORCH = textwrap.dedent("""
    import os
    with open(os.environ["T2MLX_TORCH_MARKER"], "a") as f:
        f.write("torch was imported\\n")
    raise ImportError("torch is blocked in this test")
""")


@pytest.fixture
def no_torch_env(tmp_path):
    """Environment whose PYTHONPATH puts a ``torch`` package first that records the import and fails."""
    fake = tmp_path / "fake_site"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(FAKE_TORCH)
    marker = tmp_path / "torch_imported.txt"
    env = {
        "PYTHONPATH": os.pathsep.join(
            [str(fake)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        ),
        "T2MLX_TORCH_MARKER": str(marker),
    }
    # the trap works: a plain `import torch` fails there and leaves the marker
    probe = subprocess.run(
        [sys.executable, "-c", "import torch"], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert probe.returncode != 0 and "torch is blocked" in probe.stderr and marker.exists()
    marker.unlink()
    return env, marker


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A zip Lightning checkpoint, a legacy whole pickled module, a sharded safetensors directory."""
    import torch
    from test_readers_dirs import _model_sd, _write_dir

    d = tmp_path_factory.mktemp("notorch")
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(2, 2))
    ckpt = {"state_dict": {"net." + k: v for k, v in model.state_dict().items()}, "epoch": 1}
    return {
        "zip": torch_save(ckpt, d / "run.ckpt"),
        "legacy": torch_save(model, d / "model.pth", "legacy"),
        "dir": _write_dir(d / "hf", _model_sd(), "safetensors"),
    }


def _expected(kind, src):
    if kind == "zip":
        return torch_load(src)["state_dict"]
    if kind == "legacy":
        return torch_load(src).state_dict()
    from test_readers_dirs import _load_dir

    return _load_dir(src)


@pytest.mark.parametrize("kind", ["zip", "legacy", "dir"])
@pytest.mark.slow
def test_cli_stream_without_torch(no_torch_env, sources, tmp_path, kind):
    env, marker = no_torch_env
    out = tmp_path / "out"
    # A config.json would bring in the analyzer (torch) on purpose; --no-model is the torch-free path.
    flags = ["--no-model"] if kind == "dir" else []
    dry = run_cli("stream", sources[kind], "--dry-run", "--json", *flags, env=env)
    assert dry.returncode == 0, dry.stderr
    proc = run_cli("stream", sources[kind], out, "--dtype", "float16", *flags, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), marker.read_text()
    check_converted(out, _expected(kind, sources[kind]), dtype="float16")


@pytest.mark.slow
def test_config_dir_falls_back_to_inference_when_torch_is_broken(no_torch_env, sources, tmp_path):
    env, _marker = no_torch_env
    out = tmp_path / "out"
    proc = run_cli("stream", sources["dir"], out, "--dtype", "float16", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "rules inferred from shapes" in proc.stdout
    check_converted(out, _expected("dir", sources["dir"]), dtype="float16")


def test_console_script_without_torch(no_torch_env, sources, tmp_path):
    env, marker = no_torch_env
    exe = Path(sys.executable).with_name("t2mlx")
    if not exe.exists():
        pytest.skip("console script not installed next to this interpreter")
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(exe), "stream", str(sources["zip"]), str(out), "--quiet"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    check_converted(out, _expected("zip", sources["zip"]))


_LIBRARY_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None          # any `import torch...` now raises ImportError
    src, out, out2, out3 = sys.argv[1:5]
    import torch2mlx, torch2mlx.stream as s, torch2mlx.cli
    ck = s.open(src)
    n = sum(1 for _ in ck.tensors(upcast=True))
    s.convert(src, out, dtype="bfloat16")
    s.convert(src, out2, hook=lambda name, arr, dtype: ("x." + name, arr))
    with s.ShardWriter(out3) as w:
        for name, arr in s.open(out + "/model.safetensors").tensors():
            w.add(name, arr)
    leaked = sorted(m for m in sys.modules if (m == "torch" or m.startswith("torch.")) and sys.modules[m] is not None)
    print(n, leaked)
""")


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_library_api_without_torch(sources, tmp_path, kind):
    outs = [tmp_path / f"o{i}" for i in range(3)]
    proc = subprocess.run(
        [sys.executable, "-c", _LIBRARY_SCRIPT, str(sources[kind])] + [str(o) for o in outs],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    expected = _expected(kind, sources[kind])
    assert proc.stdout.split()[0] == str(len(expected)) and proc.stdout.strip().endswith("[]"), proc.stdout
    check_converted(outs[0], expected, dtype="bfloat16")
    assert set(read_json(outs[1] / "model.safetensors.index.json")["weight_map"]) == {"x." + k for k in expected}
    assert set(read_json(outs[2] / "model.safetensors.index.json")["weight_map"]) == set(expected)
