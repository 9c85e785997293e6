"""The analysis cache: a repeated analyze/stream of a config.json model skips building it, and is never stale."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import read_output, run_main
from llm_checkpoints import build_model, save_safetensors

import torch2mlx


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.delenv("T2MLX_NO_CACHE", raising=False)
    monkeypatch.setenv("T2MLX_CACHE_DIR", str(d))
    return d


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_safetensors(build_model("llama"), tmp_path_factory.mktemp("llama") / "src")


@pytest.fixture(scope="module")
def unregistered(tmp_path_factory):
    # An architecture whose rules are not kept as data (analysis/known.py): the stream analyzes the model,
    # and caches the analysis.
    return save_safetensors(build_model("gemma"), tmp_path_factory.mktemp("gemma") / "src")


def _reused(report) -> bool:
    return any("analysis reused from" in n for n in report.notes)


def _comparable(report) -> dict:
    d = report.to_dict()
    d.pop("seconds")
    d["notes"] = [n for n in d["notes"] if "analysis reused from" not in n]
    return d


def test_second_analyze_is_the_first_one_reused(llama, cache):
    first = torch2mlx.analyze(llama)
    assert not _reused(first)
    assert len(list(cache.glob("*.json"))) == 1
    second = torch2mlx.analyze(llama)
    assert _reused(second)
    assert _comparable(second) == _comparable(first)
    assert second.checkpoint.specs == first.checkpoint.specs


def test_a_hit_imports_neither_torch_nor_transformers(llama, cache):
    torch2mlx.analyze(llama)
    code = (
        "import sys, torch2mlx; r = torch2mlx.analyze(sys.argv[1]); "
        "print(any('reused' in n for n in r.notes), 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    env = {"T2MLX_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code, str(llama)], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["True", "False", "False"]


def test_stream_output_is_identical_with_a_cached_analysis(unregistered, cache, tmp_path):
    cold = run_main("stream", unregistered, tmp_path / "cold", "--max-shard-size", "50KB")
    warm = run_main("stream", unregistered, tmp_path / "warm", "--max-shard-size", "50KB")
    assert cold.returncode == 0 and warm.returncode == 0, cold.stderr + warm.stderr
    assert "analysis reused from" not in cold.stdout and "analysis reused from" in warm.stdout
    assert "rules from the model GemmaForCausalLM" in warm.stdout
    shards = sorted(p.name for p in (tmp_path / "cold").glob("*.safetensors"))
    assert shards == sorted(p.name for p in (tmp_path / "warm").glob("*.safetensors")) and len(shards) > 1
    for name in shards + ["model.safetensors.index.json"]:
        assert (tmp_path / "cold" / name).read_bytes() == (tmp_path / "warm" / name).read_bytes(), name
    assert read_output(tmp_path / "warm").keys() == read_output(tmp_path / "cold").keys()


def test_a_changed_config_or_checkpoint_misses(llama, cache, tmp_path):
    import shutil

    torch2mlx.analyze(llama)
    other = tmp_path / "other"
    shutil.copytree(llama, other)
    assert _reused(torch2mlx.analyze(other))  # the key is the content, not the place
    cfg = json.loads((other / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5 if cfg.get("rms_norm_eps") != 1e-5 else 1e-6
    (other / "config.json").write_text(json.dumps(cfg))
    assert not _reused(torch2mlx.analyze(other))
    # a checkpoint with one tensor fewer
    small = save_safetensors(build_model("llama"), tmp_path / "small")
    assert _reused(torch2mlx.analyze(small))
    from safetensors.torch import load_file, save_file

    f = sorted(small.glob("model-*.safetensors"))[-1]
    tensors = load_file(f)
    gone = sorted(tensors)[0]
    tensors.pop(gone)
    save_file(tensors, f, metadata={"format": "pt"})
    index = json.loads((small / "model.safetensors.index.json").read_text())
    del index["weight_map"][gone]
    (small / "model.safetensors.index.json").write_text(json.dumps(index))
    assert not _reused(torch2mlx.analyze(small))


def test_a_damaged_entry_is_a_miss_not_an_error(llama, cache):
    torch2mlx.analyze(llama)
    (entry,) = cache.glob("*.json")
    for junk in ("{not json", json.dumps({"format": 1, "report": {"tensors": "x"}}), json.dumps([1, 2])):
        entry.write_text(junk)
        r = torch2mlx.analyze(llama)
        assert not _reused(r) and r.coverage == 1.0
    assert _reused(torch2mlx.analyze(llama))  # rewritten by the miss


def test_no_cache_writes_nothing(llama, cache, monkeypatch):
    monkeypatch.setenv("T2MLX_NO_CACHE", "1")
    torch2mlx.analyze(llama)
    assert not _reused(torch2mlx.analyze(llama))
    assert not cache.exists()
