"""--variants: one read of the source feeds several outputs, each byte for byte a single run's.

The oracle for every variant directory is a single run with that variant's options; mlx-lm loads each,
and transformers' logits judge the float ones.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import llm_checkpoints as L
import numpy as np
import pytest
import yaml

from torch2mlx import stream
from torch2mlx.cli import main as t2mlx
from torch2mlx.errors import Torch2MLXError
from torch2mlx.formats.data import DataReader

VARIANTS = "float32,bf16,q8,q4,mixed_3_6"
# the single run each variant must equal, as its flags
SINGLE = {
    "float32": ["--dtype", "float32"],
    "bf16": ["--dtype", "bfloat16"],
    "q8": ["--q-bits", "8"],
    "q4": ["--q-bits", "4"],
    "mixed_3_6": ["--q-recipe", "mixed_3_6"],
}
SHARD = ["--max-shard-size", "90KB"]  # several shards a variant, laid out differently in each


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    model = L.build_model("llama")
    src = L.save_safetensors(model, root / "llama")
    return src, L.torch_logits(model)


def _tree(d: Path) -> dict[str, bytes]:
    """Every file but the model card, which names its own OUT and command (each variant gets one: see below)."""
    return {
        str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != "README.md"
    }


def _stream(*args) -> None:
    assert t2mlx(["stream", *map(str, args), "--quiet"]) == 0


@pytest.fixture(scope="module")
def together(llama, tmp_path_factory):
    src, _ = llama
    out = tmp_path_factory.mktemp("together") / "out"
    _stream(src, out, "--variants", VARIANTS, *SHARD)
    return out


def test_each_variant_equals_its_single_run_byte_for_byte(llama, together, tmp_path):
    src, _ = llama
    assert sorted(os.listdir(together)) == sorted(SINGLE)
    for name, flags in SINGLE.items():
        one = tmp_path / name
        _stream(src, one, *flags, *SHARD)
        a, b = _tree(together / name), _tree(one)
        assert sorted(a) == sorted(b), name
        # every file, the manifest (torch2mlx.json) included: it names the source and options, not OUT or a time
        differ = [f for f in a if a[f] != b[f]]
        assert not differ, (name, differ)
        front = (together / name / "README.md").read_text().split("---\n")[1]
        assert yaml.safe_load(front)["library_name"] == "mlx", name
    shards = {n: json.loads((together / n / "torch2mlx.json").read_text())["shards"] for n in SINGLE}
    assert len(shards["float32"]) > 1 and len(shards["float32"]) > len(shards["q4"])


def test_the_source_is_read_once(llama, tmp_path, monkeypatch):
    src, _ = llama
    reads: list[tuple[str, int, int]] = []
    real = DataReader.read_into

    def counting(self, path, buf, offset):
        reads.append((path, offset, memoryview(buf).nbytes))
        return real(self, path, buf, offset)

    monkeypatch.setattr(DataReader, "read_into", counting)
    res = stream.convert(str(src), str(tmp_path / "out"), variants=VARIANTS.split(","), max_shard_size="90KB")
    got = sum(n for _, _, n in reads)
    assert got == res.nbytes_in == res.results[0].plan.nbytes_in  # every source byte once, not five times
    spans = sorted(reads)
    for (p1, o1, n1), (p2, o2, _) in zip(spans, spans[1:], strict=False):
        assert p1 != p2 or o1 + n1 <= o2, "a source range was read twice"
    reads.clear()
    stream.convert(str(src), str(tmp_path / "one"), dtype="bfloat16")
    assert sum(n for _, _, n in reads) == got  # what a single run reads


def test_a_remote_source_is_fetched_once(llama, tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    from hub_server import serving

    from torch2mlx.formats import ranges

    src, _ = llama
    repo = tmp_path / "repos" / "org" / "llama"
    shutil.copytree(src, repo)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(ranges, "BACKOFF", 0.01)
    with serving(str(tmp_path / "repos")) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        stream.convert("hf://org/llama", str(tmp_path / "single"), q_bits=4, model=False)
        single = hub.fetched
        hub.fetched = 0
        res = stream.convert("hf://org/llama", str(tmp_path / "out"), variants="bf16,q8,q4,mixed_3_6", model=False)
        together = hub.fetched
    assert together <= single * 1.05, (together, single)  # four outputs for the fetch of one
    assert any(n.startswith("fetched ") for n in res.notes)
    a, b = _tree(tmp_path / "out" / "q4"), _tree(tmp_path / "single")
    assert sorted(a) == sorted(b) and all(a[f] == b[f] for f in a)


@pytest.mark.slow
def test_each_variant_loads_in_mlx_lm(llama, together):
    import mlx.core as mx
    import mlx_lm

    _, want = llama

    def logits(name):
        model, _ = mlx_lm.load(str(together / name))
        return np.array(model(mx.array(L.PROMPT)).astype(mx.float32))

    assert np.abs(logits("float32") - want).max() <= 1e-4
    scale = np.abs(want).max()
    assert np.abs(logits("bf16") - want).max() <= 0.05 * scale  # bfloat16 weights: 8 bits of mantissa
    for name in ("q8", "q4", "mixed_3_6"):
        got = logits(name)
        assert got.shape == want.shape and np.isfinite(got).all(), name
    q8 = logits("q8")
    assert np.abs(q8 - want).max() < np.abs(logits("q4") - want).max()  # more bits, closer to the float model


def test_dry_run_shows_each_variants_planned_size(llama, capsys):
    src, _ = llama
    res = stream.convert(str(src), None, variants="bf16,q4", dry_run=True)
    sizes = {n: r.plan.nbytes_out for n, r in zip(res.names, res.results, strict=True)}
    assert sizes["bf16"] == stream.convert(str(src), None, dtype="bfloat16", dry_run=True).plan.nbytes_out
    assert sizes["q4"] == stream.convert(str(src), None, q_bits=4, dry_run=True).plan.nbytes_out
    assert t2mlx(["stream", str(src), "--variants", "bf16,q4", "--dry-run", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {n: v["bytes_out"] for n, v in d["variants"].items()} == sizes
    assert t2mlx(["stream", str(src), "--variants", "bf16,q4", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "once" in text and all(n in text for n in sizes)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--variants", "bf16,q7"], "'q7' is not a variant"),
        (["--variants", "bf16,bfloat16"], "repeats 'bf16'"),
        (["--variants", "q4,"], "comma-separated"),
        (["--variants", "q4", "--q-bits", "4"], "--q-bits does not combine with --variants"),
        (["--variants", "q4", "--resume"], "--variants do not combine with --resume"),
        (["--variants", "q4", "--to", "torch"], "--variants applies to conversions to MLX"),
        (["--variants", "q4", "--format", "zarr"], "--format zarr"),
    ],
)
def test_bad_combinations_are_one_line_errors(llama, tmp_path, capsys, args, says):
    src, _ = llama
    assert t2mlx(["stream", str(src), str(tmp_path / "out"), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "out").exists()


def test_one_file_out_is_refused(llama, tmp_path, capsys):
    src, _ = llama
    assert t2mlx(["stream", str(src), str(tmp_path / "m.safetensors"), "--variants", "q4"]) == 1
    err = capsys.readouterr().err
    assert "a path ending in .safetensors is one file" in err and err.count("\n") == 1
    assert not (tmp_path / "m.safetensors").exists()


def test_a_non_empty_variant_directory_stops_the_run_before_anything_is_written(llama, tmp_path, capsys):
    src, _ = llama
    (tmp_path / "out" / "q4").mkdir(parents=True)
    (tmp_path / "out" / "q4" / "mine.txt").write_text("keep me")
    assert t2mlx(["stream", str(src), str(tmp_path / "out"), "--variants", "bf16,q4"]) == 1
    assert "out/q4: exists and is not empty" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "out")) == ["q4"] and os.listdir(tmp_path / "out" / "q4") == ["mine.txt"]
    assert t2mlx(["stream", str(src), str(tmp_path / "out"), "--variants", "bf16,q4", "--overwrite", "-q"]) == 0
    assert os.listdir(tmp_path / "out" / "q4") != ["mine.txt"]


def test_a_failing_variant_stops_all_and_leaves_no_complete_output(llama, tmp_path, monkeypatch):
    """A write error in the shared pass: no variant directory looks complete (no index, manifest incomplete)."""
    from torch2mlx.stream import variants

    src, _ = llama
    calls = {"n": 0}
    real = variants.pwrite_all

    def failing(fd, data, at):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real(fd, data, at)

    monkeypatch.setattr(variants, "pwrite_all", failing)
    with pytest.raises(Torch2MLXError) as e:
        stream.convert(str(src), str(tmp_path / "out"), variants="bf16,q4")
    assert "no space left on device" in str(e.value)
    assert os.listdir(tmp_path / "out") == []  # no variant directory that looks complete, nor a half one
    monkeypatch.undo()
    stream.convert(str(src), str(tmp_path / "out"), variants="bf16,q4")  # the same call again
    assert (tmp_path / "out" / "q4" / "model.safetensors.index.json").exists()


def test_ctrl_c_stops_every_variant_and_keeps_no_shard(llama, tmp_path, monkeypatch):
    """Ctrl-C lands in the thread that waits for the variants: the shared pass stops, every directory goes."""
    import threading
    import time

    from torch2mlx.stream import variants

    src, _ = llama
    real_compute, real_join = variants.compute_outputs, threading.Thread.join
    monkeypatch.setattr(variants, "compute_outputs", lambda *a, **k: (time.sleep(0.02), real_compute(*a, **k))[1])
    fired = []

    def join(self, timeout=None):
        if self.name.startswith("t2mlx-variant") and not fired:
            fired.append(1)
            time.sleep(0.3)  # the shared pass is under way
            raise KeyboardInterrupt
        return real_join(self, timeout)

    monkeypatch.setattr(threading.Thread, "join", join)
    with pytest.raises(KeyboardInterrupt) as e:
        stream.convert(str(src), str(tmp_path / "out"), variants="bf16,q4", max_shard_size="90KB")
    assert "no shard kept" in e.value.__dict__["left"]
    assert not [t for t in threading.enumerate() if t.name.startswith("t2mlx-")]
    assert os.listdir(tmp_path / "out") == []


def test_modes_and_group_sizes_on_a_moe_equal_single_runs(tmp_path):
    """Mixtral (experts stacked), --q-mode variants and --q-group-size for the qN/recipe ones."""
    src = L.save_safetensors(L.build_model("mixtral"), tmp_path / "mixtral")
    single = {
        "fp16": ["--dtype", "float16"],
        "mxfp4": ["--q-mode", "mxfp4"],
        "nvfp4": ["--q-mode", "nvfp4"],
        "q2": ["--q-bits", "2", "--q-group-size", "32"],
        "mixed_4_6": ["--q-recipe", "mixed_4_6", "--q-group-size", "32"],
    }
    _stream(src, tmp_path / "out", "--variants", ",".join(single), "--q-group-size", "32", *SHARD)
    for name, flags in single.items():
        _stream(src, tmp_path / name, *flags, *SHARD)
        a, b = _tree(tmp_path / "out" / name), _tree(tmp_path / name)
        assert sorted(a) == sorted(b) and [f for f in a if a[f] != b[f]] == [], name
