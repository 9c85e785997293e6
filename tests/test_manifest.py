"""The manifest module: what it writes is what it reads back, byte for byte; older manifests still read,
verify and go back to torch; and no other module spells the manifest's keys."""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest
import torch
from helpers import MANIFEST, read_json, torch_save

import torch2mlx
from torch2mlx.analysis.stream_inputs import StreamInputs
from torch2mlx.errors import Torch2MLXError
from torch2mlx.stream import ShardWriter, manifest
from torch2mlx.stream import convert as stream_convert
from torch2mlx.stream import to_torch as stream_to_torch
from torch2mlx.stream.options import Options
from torch2mlx.stream.result import manifest as result_manifest
from torch2mlx.stream.verify import verify
from torch2mlx.stream.writers.files import dumps

PACKAGE = pathlib.Path(torch2mlx.__file__).parent


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    torch.manual_seed(0)
    sd = {
        "conv.weight": torch.randn(8, 4, 3, 3),
        "fc.weight": torch.randn(64, 128),
        "fc.bias": torch.randn(64),
        "bn.num_batches_tracked": torch.tensor(3),
        "emb.weight": torch.randn(32, 64).to(torch.bfloat16),
    }
    torch_save(sd, d / "model.pt")
    return d / "model.pt", sd


def _outputs(src_path, tmp_path) -> dict[str, pathlib.Path]:
    """One output of every kind that writes a manifest."""
    out = {k: tmp_path / k for k in ("fwd", "q4", "zarr", "transform", "back", "writer")}
    stream_convert(src_path, out["fwd"], model=False, exclude=[r"num_batches_tracked$"])
    stream_convert(src_path, out["q4"], model=False, q_bits=4)
    stream_convert(src_path, out["zarr"], model=False, format="zarr")
    stream_convert(src_path, out["transform"], model=False, hook=lambda n, v, d: (n, v))
    stream_to_torch(out["q4"], out["back"], format="bin")
    with ShardWriter(out["writer"]) as w:
        w.add("x", np.arange(6, dtype=np.float32))
    return out


def test_read_then_write_gives_the_same_bytes_for_every_kind_of_output(src, tmp_path):
    for kind, out in _outputs(src[0], tmp_path).items():
        raw = (out / MANIFEST).read_bytes()
        m = manifest.read(out)
        assert m.to_dict() == json.loads(raw), kind
        assert list(m.to_dict()) == list(json.loads(raw)), kind  # key order too
        assert (dumps(m.to_dict()) + "\n").encode() == raw, kind
        (tmp_path / "copy" / kind).mkdir(parents=True)
        manifest.write(tmp_path / "copy" / kind, m)
        assert (tmp_path / "copy" / kind / MANIFEST).read_bytes() == raw, kind


def test_fields_say_what_each_output_is(src, tmp_path):
    out = _outputs(src[0], tmp_path)
    fwd, q4, zarr, tf, back, writer = (
        manifest.read(out[k]) for k in ("fwd", "q4", "zarr", "transform", "back", "writer")
    )
    assert fwd.finished and fwd.complete is True and not fwd.to_torch and not fwd.is_zarr
    assert fwd.version == torch2mlx.__version__ and fwd.source == str(src[0])
    assert set(fwd.tensors) == set(src[1]) - {"bn.num_batches_tracked"}
    assert fwd.dropped == [{"source": "bn.num_batches_tracked", "why": fwd.dropped[0]["why"]}]
    assert manifest.dropped_sources(fwd) == ["bn.num_batches_tracked"]
    assert list(fwd.source_files) == ["model.pt"] and fwd.source_files["model.pt"]["bytes"] == src[0].stat().st_size
    assert set(fwd.shards) == {"model.safetensors"} and len(fwd.plan_sha256) == 64
    assert fwd.source_key == "" and fwd.key() == ""  # the pickle's top level holds the weights
    assert fwd.source_layout is None and fwd.transform is None
    assert q4.tensors["fc.weight"]["quantization"]["bits"] == 4
    assert zarr.is_zarr and zarr.compressor and zarr.plan_sha256 is None
    assert zarr.tensors["fc.weight"]["array"] and "shard" not in zarr.tensors["fc.weight"]
    assert tf.transform is True and manifest.transformed(tf) == []  # handed back untouched
    assert back.to_torch and back.format == "bin" and back.model is None and back.use_model is True
    assert back.source_layout == "mlx"
    assert writer.tensors["x"]["shape"] == [6] and writer.source is None and writer.complete is None
    assert writer.finished  # no complete key: not marked unfinished


def test_a_run_that_goes_on_is_marked_unfinished_without_records(src, tmp_path):
    res = stream_convert(src[0], None, dry_run=True, model=False)
    res.source_files = {}
    partial = result_manifest(res, Options.make(), complete=False)
    assert partial.complete is False and not partial.finished and partial.tensors is None
    d = partial.to_dict()
    assert "tensors" not in d and d["complete"] is False and list(d)[-1] == "complete"
    keys = list(d)
    keys.insert(keys.index("shards"), "tensors")
    assert list(result_manifest(res, Options.make()).to_dict()) == keys  # finished: the records before the shards


def test_an_older_manifest_still_reads_verifies_and_goes_back_to_torch(src, tmp_path):
    """Older torch2mlx wrote no source identity, plan fingerprint or complete flag; it may also have
    written keys this version does not know: those are kept as they were."""
    out = tmp_path / "old"
    stream_convert(src[0], out, model=False)
    d = read_json(out / MANIFEST)
    for k in ("plan_sha256", "source_files", "complete"):
        del d[k]
    d["from_the_future"] = {"kept": True}
    (out / MANIFEST).write_text(json.dumps(d, indent=2))
    m = manifest.read(out)
    assert m.plan_sha256 is None and m.source_files is None and m.complete is None and m.finished
    assert m.extra == {"from_the_future": {"kept": True}} and m.to_dict() == d and list(m.to_dict()) == list(d)
    rep = verify(src[0], out)
    assert rep.ok, rep.problems
    quick = verify(src[0], out, quick=True)
    assert quick.ok and any("records no source identity" in n for n in quick.notes)
    back = torch2mlx.to_torch(out)
    assert torch.equal(back["conv.weight"], src[1]["conv.weight"])
    assert torch.equal(back["emb.weight"], src[1]["emb.weight"])


def test_reading_a_missing_broken_or_foreign_manifest(tmp_path):
    with pytest.raises(FileNotFoundError):
        manifest.read(tmp_path)
    assert manifest.read_or_none(tmp_path) is None
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError):
        manifest.read(tmp_path)
    assert manifest.read_or_none(tmp_path) is None
    (tmp_path / MANIFEST).write_text("[1, 2]")
    with pytest.raises(TypeError):
        manifest.read(tmp_path)
    assert manifest.read_or_none(tmp_path) is None


def test_records_to_specs_and_back_through_a_plan(src, tmp_path):
    """Records -> specs -> a plan of the same source gives the same records (rule source aside)."""
    res = stream_convert(src[0], None, dry_run=True, model=False, q_bits=4)
    records = res.plan.tensor_records()
    specs, by_mlx = manifest.specs_from_records(records)
    # a quantized weight is one spec: its scales and biases are part of it
    assert {s.out for s in specs} == {n for n, r in records.items() if r.get("role") not in ("scales", "biases")}
    assert "fc.scales" in records and "fc.scales" not in by_mlx and by_mlx["fc.weight"] is records["fc.weight"]
    again = stream_convert(src[0], None, dry_run=True, q_bits=4, model=StreamInputs(specs=specs)).plan.tensor_records()
    strip = lambda rs: {n: {k: v for k, v in r.items() if k != "rule_source"} for n, r in rs.items()}  # noqa: E731
    assert strip(again) == strip(records)
    with pytest.raises(Torch2MLXError, match="no usable source and rule"):
        manifest.specs_from_records({"x": {"source": "x", "rule": "no_such_rule"}})
    with pytest.raises(Torch2MLXError, match="no usable source and rule"):
        manifest.specs_from_records({"x": {"source": None, "rule": "identity"}})


def test_the_schema_names_every_key_written(src, tmp_path):
    fields = {f for f in manifest.Manifest.__dataclass_fields__} - {"extra", "layout"}
    assert {manifest._KEY.get(f, f) for f in fields} == set(manifest.KEYS)
    for kind, out in _outputs(src[0], tmp_path).items():
        assert set(read_json(out / MANIFEST)) <= set(manifest.KEYS), kind


# Keys only the manifest module may spell (the generic ones -- source, options, tensors -- are other
# things' keys too: report JSON, plans).
OWNED = (
    "plan_sha256",
    "source_files",
    "source_key",
    "source_layout",
    "compressor",
    "complete",
    "transformed",
    "model_kwargs",
    "use_model",
)


def test_no_other_module_spells_the_manifests_keys():
    own = PACKAGE / "stream" / "manifest.py"
    pattern = re.compile(r"""["'](%s)["']""" % "|".join(OWNED))
    assert pattern.findall(own.read_text())  # the pattern finds them where they are
    found = []
    for p in sorted(PACKAGE.rglob("*.py")):
        if p != own:
            found += [
                f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}"
                for i, line in enumerate(p.read_text().splitlines(), 1)
                if pattern.search(line)
            ]
    assert not found, "\n".join(found)
