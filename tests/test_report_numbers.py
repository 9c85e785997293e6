"""Every number in a conversion report is what THIS run read and wrote, and each tensor is reported once."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import INDEX, MANIFEST, read_json, run_cli
from llm_checkpoints import build_model
from safetensors.torch import load_file, save_file

import torch2mlx.stream as stream
from torch2mlx.core.sizes import human_bytes


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    """A tied bfloat16 Qwen2 saved by transformers (no lm_head.weight), and its weights."""
    d = tmp_path_factory.mktemp("qwen2")
    build_model("qwen2").to(torch.bfloat16).save_pretrained(str(d))
    return d, load_file(str(d / "model.safetensors"))


def _source_bytes(path) -> int:
    return sum(e.nbytes for e in stream.open(path).entries)


def _report(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_to_torch_of_a_quantized_directory_counts_the_bytes_it_read(qwen2, tmp_path):
    src, _ = qwen2
    q4 = tmp_path / "q4"
    assert run_cli("stream", src, q4, "--q-bits", "4", "--quiet").returncode == 0
    back = tmp_path / "back"
    rep = _report(run_cli("stream", q4, back, "--to", "torch", "--json"))
    stored = _source_bytes(q4)
    # read: packed codes, scales and biases as stored (not the float weights they expand to)
    assert rep["bytes_in"] == stored
    assert rep["bytes_out"] == read_json(back / INDEX)["metadata"]["total_size"] > stored
    text = run_cli("stream", q4, tmp_path / "back2", "--to", "torch").stdout
    assert f"{human_bytes(stored)} in, {human_bytes(rep['bytes_out'])} out" in text, text


def test_transform_that_drops_half_reports_the_bytes_it_wrote(qwen2, tmp_path):
    src, sd = qwen2
    out = tmp_path / "out"
    kept = sorted(sd)[::2]
    res = stream.convert(src, out, hook=lambda n, a, d: (n, a, d) if n in kept else None)
    d = res.to_dict()
    assert d["tensors_out"] == len(kept) and set(read_json(out / INDEX)["weight_map"]) == set(kept)
    written = sum(sd[n].numel() * sd[n].element_size() for n in kept)
    assert d["bytes_out"] == written == read_json(out / INDEX)["metadata"]["total_size"]
    assert d["bytes_in"] == _source_bytes(src)  # every tensor was read to be handed to the transform
    assert f", {human_bytes(written)} out," in res.report()


def test_resumed_run_counts_only_what_it_converted(qwen2, tmp_path):
    src, _ = qwen2
    out = tmp_path / "out"
    full = stream.convert(src, out, max_shard_size="40KB", model=False)
    n = len(full.plan.shards)
    assert n >= 4
    # as if interrupted: the last two shards and the index never made it
    redo = full.plan.shards[-2:]
    for sh in redo:
        (out / sh.file).unlink()
    (out / INDEX).unlink()
    res = stream.convert(src, out, max_shard_size="40KB", model=False, resume=True)
    d = res.to_dict()
    redone = {id(o) for sh in res.plan.shards[-2:] for o in sh.outputs}
    want_in = sum(op.nbytes_in for op in res.plan.ops if id(op.outputs[0]) in redone)
    want_out = sum(sh.data_size for sh in res.plan.shards[-2:])
    assert d["reused_shards"] == n - 2
    assert (d["bytes_in"], d["bytes_out"]) == (want_in, want_out) and want_in < _source_bytes(src)
    assert d["mib_per_s"] == round(want_in / 2**20 / res.seconds, 1)
    line = res.report().splitlines()[1]
    assert (
        line.startswith(f"{human_bytes(want_in)} in, {human_bytes(want_out)} out")
        and f"{n - 2} reused shard(s) not counted" in line
    ), line
    assert set(read_json(out / MANIFEST)["shards"]) == {s.file for s in res.plan.shards}


@pytest.mark.slow
def test_tied_head_dropped_is_not_also_warned_about(qwen2, tmp_path):
    """A base-model class has no lm_head: the tied copy is dropped, and reported once (as dropped)."""
    src, sd = qwen2
    d = tmp_path / "with-head"
    d.mkdir()
    shutil.copy(src / "config.json", d / "config.json")
    save_file(
        {**sd, "lm_head.weight": sd["model.embed_tokens.weight"].clone()},
        str(d / "model.safetensors"),
        metadata={"format": "pt"},
    )
    rep = _report(run_cli("stream", d, tmp_path / "out", "--model", "transformers:Qwen2Model", "--json"))
    assert [x["source"] for x in rep["dropped"]] == ["lm_head.weight"]
    assert not [w for w in rep["warnings"] if "lm_head" in w], rep["warnings"]


def test_float8_scales_folded_in_are_counted_as_read(tmp_path):
    """A float8 weight's scale is read (and folded in, not written): it is part of the bytes in."""
    from test_fp8_stream import raw_checkpoint

    t, _ = raw_checkpoint()
    src = tmp_path / "src"
    src.mkdir()
    save_file({n: x.contiguous() for n, x in t.items()}, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"model_type": "toy"}))
    res = stream.convert(src, tmp_path / "out", model=False)
    assert "blk.c.input_scale" in {n for n, _ in res.plan.dropped}  # an activation scale: never read
    read = sum(x.numel() * x.element_size() for n, x in t.items() if n != "blk.c.input_scale")
    assert res.to_dict()["bytes_in"] == read
