"""Checkpoints of many small tensors: the per-tensor fast paths write exactly what the general ones did.

The planner renders shard headers as text and the manifest one record a piece, the
safetensors reader accepts ordinary records with a short check, and kernel copies are
cut without a task object per tensor; every one of these is checked here against the
format as the standard library's ``json`` writes it, torch's tensors, or the general path.
"""

from __future__ import annotations

import gc
import json
import struct

import pytest
import torch
from helpers import INDEX, MANIFEST, check_converted, check_safetensors_layout, convert
from safetensors.torch import load_file, save_file

import torch2mlx
from torch2mlx.core import dtypes
from torch2mlx.stream import execute
from torch2mlx.stream.plan import Output, render_header

ODD_NAMES = ['q"uote', "back\\slash", "ünï/cødé", "tab\there", "nl\nline", "\u2028sep", "ctl\x01", "emoji 🙂"]


def _many(n_files: int = 3, per_file: int = 400) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(16)
    files = []
    for f in range(n_files):
        sd = {}
        for i in range(per_file):
            kind = i % 5
            name = f"model.layers.{f}.{i}.{['w', 'b', 'n', 'ix', 'odd'][kind]}"
            if kind == 0:
                sd[name] = torch.randn(3, 4, generator=g, dtype=torch.float32).to(torch.bfloat16)
            elif kind == 1:
                sd[name] = torch.randn(5, generator=g, dtype=torch.float32).to(torch.float16)
            elif kind == 2:
                sd[name] = torch.randn(2, 3, generator=g, dtype=torch.float64).to(torch.float32)
            elif kind == 3:
                sd[name] = torch.randint(-9, 9, (7,), generator=g, dtype=torch.int64)
            else:
                sd[name] = torch.tensor(float(i), dtype=torch.bfloat16)  # a scalar
        sd[ODD_NAMES[f % len(ODD_NAMES)] + str(f)] = torch.arange(3, dtype=torch.int32)
        files.append(sd)
    return files


def _reference_header(outputs: list[Output], metadata: dict) -> bytes:
    """The safetensors header as json.dumps writes the dict (what the writer has always produced)."""
    head = {"__metadata__": dict(metadata)}
    for o in outputs:
        head[o.name] = {
            "dtype": o.dtype.safetensors,
            "shape": list(o.shape),
            "data_offsets": [o.offset, o.offset + o.nbytes],
        }
    raw = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _reference_manifest_text(obj, depth: int = 0) -> str:
    """torch2mlx.json's documented shape: dicts spread over lines to the second level, one record a line."""
    if isinstance(obj, dict) and obj and depth < 2:
        pad = " " * (2 * (depth + 1))
        items = [
            pad + json.dumps(k, ensure_ascii=False) + ": " + _reference_manifest_text(v, depth + 1)
            for k, v in obj.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + " " * (2 * depth) + "}"
    return json.dumps(obj, ensure_ascii=False)


def test_many_tensors_in_several_shards_are_written_as_the_format_and_torch_say(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    weight_map, expected = {}, {}
    for i, sd in enumerate(_many()):
        f = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file(sd, src / f)
        weight_map.update(dict.fromkeys(sd, f))
        expected.update(load_file(src / f))
    (src / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out = tmp_path / "out"
    res = convert(src, out, max_shard_size=4000, model=False)
    assert len(res.plan.shards) > 3
    check_converted(out, expected)
    for sh in res.plan.shards:
        check_safetensors_layout(out / sh.file)
        raw = (out / sh.file).read_bytes()
        assert raw[: len(sh.header)] == _reference_header(sh.outputs, {"format": "mlx"}) == sh.header
    for name in (MANIFEST, INDEX):
        text = (out / name).read_text(encoding="utf-8")
        assert text == _reference_manifest_text(json.loads(text)) + "\n", name


def test_render_header_matches_json_for_odd_names_and_the_rare_cases():
    f32, c128 = dtypes.get("float32"), dtypes.get("complex128")
    outs = [Output(n, f32, (2, 3), 0, 24 * i) for i, n in enumerate(ODD_NAMES)]
    outs.append(Output("scalar", dtypes.get("bfloat16"), (), 0, 24 * len(ODD_NAMES)))
    for meta in ({"format": "mlx"}, {"format": "pt", "ünï": 'q"'}):
        assert render_header(outs, meta) == _reference_header(outs, meta)
    # A tensor named like the metadata key replaces it, and a dtype with no code is null: as json.dumps does.
    rare = [Output("__metadata__", f32, (1,), 0, 0), Output("c", c128, (1,), 0, 4)]
    assert render_header(rare, {"format": "mlx"}) == _reference_header(rare, {"format": "mlx"})


def test_kernel_copies_cover_exactly_the_bytes_plan_tasks_names(tmp_path):
    """Adjacent tensors merge into one copy, a large one is cut: byte for byte the ranges of plan_tasks."""
    g = torch.Generator().manual_seed(3)
    sd = {f"t{i:03d}": torch.randn(16, generator=g) for i in range(40)}
    sd["big"] = torch.randn(4096, generator=g)
    save_file(sd, tmp_path / "m.safetensors")
    res = convert(tmp_path / "m.safetensors", None, dry_run=True, model=False)
    plan, chunk = res.plan, 1024
    ops = sorted(plan.ops, key=lambda op: (op.outputs[0].shard, op.outputs[0].offset))
    want = set()
    for op in ops:
        out, src = op.outputs[0], op.sources[0]
        at = len(plan.shards[out.shard].header) + out.offset
        for t in execute.plan_tasks(op, chunk):
            assert t.copy
            want.update((src.offset + b, at + b) for b in range(t.start, t.stop))
    units = [u for batch in execute.batches(plan, ops, chunk) for u in batch]
    assert all(isinstance(u, execute._Copy) for u in units)
    got = [(u.src + b, u.dst + b) for u in units for b in range(u.n)]
    assert len(got) == len(set(got)) and set(got) == want
    assert len(units) < len(ops)  # small neighbours were merged
    assert max(u.n for u in units) <= 4 * chunk


def _raw_file(path, header_text: str, data: bytes):
    raw = header_text.encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    "header, message",
    [
        # a zero dimension makes the byte count 0 whatever the other dimension: still not a 64-bit size
        ('{"x":{"dtype":"F32","shape":[0,1180591620717411303424],"data_offsets":[0,0]}}', "64 bits"),
        ('{"x":{"dtype":"F32","shape":[true,1],"data_offsets":[0,4]}}', "non-negative integers"),
        ('{"x":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', "non-negative integers"),
        ('{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,true]}}', "data_offsets"),
        ('{"x":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}', "duplicate key 'dtype'"),
        (
            '{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
            "duplicate key 'x'",
        ),
    ],
)
def test_headers_past_the_short_check_still_get_the_full_checks(tmp_path, header, message):
    src = _raw_file(tmp_path / "bad.safetensors", header, b"\0" * 4)
    with pytest.raises(torch2mlx.CheckpointError, match=message):
        convert(src, tmp_path / "out", model=False)


def test_a_nine_dimensional_tensor_takes_the_full_checks_and_converts(tmp_path):
    t = torch.arange(2**9, dtype=torch.int16).reshape((2,) * 9)
    save_file({"nine": t, "one": torch.ones(3)}, tmp_path / "m.safetensors")
    convert(tmp_path / "m.safetensors", tmp_path / "out", model=False)
    check_converted(tmp_path / "out", {"nine": t, "one": torch.ones(3)})


@pytest.mark.parametrize("enabled", [True, False])
def test_conversion_runs_without_automatic_gc_and_restores_the_callers_setting(tmp_path, enabled):
    """Many acyclic plan objects: the cycle detector waits for the end of the run, then is as it was."""
    save_file({f"t{i}": torch.ones(2) for i in range(5)}, tmp_path / "m.safetensors")
    seen = []

    def hook(name, array, dtype):
        seen.append(gc.isenabled())
        return name, array

    (gc.enable if enabled else gc.disable)()
    try:
        convert(tmp_path / "m.safetensors", tmp_path / "out", model=False, hook=hook)
        assert seen == [False] * 5
        assert gc.isenabled() is enabled
        with pytest.raises(torch2mlx.Torch2MLXError):
            convert(tmp_path / "missing", tmp_path / "out2", model=False)
        assert gc.isenabled() is enabled
    finally:
        gc.enable()


def test_dry_run_text_formats_the_rows_it_shows_and_counts_the_rest(tmp_path):
    save_file({f"t{i:03d}": torch.ones(2) for i in range(30)}, tmp_path / "m.safetensors")
    res = convert(tmp_path / "m.safetensors", None, dry_run=True, model=False)
    from torch2mlx.stream.report import format_plan

    lines = format_plan(res.plan, limit=5).splitlines()
    names = [o.name for op in res.plan.ops for o in op.outputs]
    assert [ln.split()[0] for ln in lines[1:6]] == names[:5]
    assert lines[6] == "... 25 more (use --json for all)"
    assert lines[8].startswith("30 output tensors in 1 shard(s)")
    full = format_plan(res.plan).splitlines()
    assert [ln.split()[0] for ln in full[1:31]] == names and "more" not in full[31]
