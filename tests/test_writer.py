"""The MLX safetensors writer: the format's rules, shards, index, manifest, determinism, output directory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import SEED
from helpers import (
    INDEX,
    MANIFEST,
    assert_no_index,
    check_converted,
    check_safetensors_layout,
    convert,
    read_json,
    torch_save,
)

import torch2mlx

UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20}


def mixed_state_dict() -> dict[str, torch.Tensor]:
    """Narrow and wide dtypes interleaved in source order, so a naive layout would misalign."""
    g = torch.Generator().manual_seed(SEED)
    sd = {}
    for i in range(12):
        sd[f"b{i:02d}.flag"] = torch.rand(3 + i, generator=g) > 0.5
        sd[f"b{i:02d}.half"] = torch.randn(5, i + 1, generator=g).half()
        sd[f"b{i:02d}.weight"] = torch.randn(4, 3, 3, 3, generator=g)
        sd[f"b{i:02d}.ids"] = torch.arange(i + 3, dtype=torch.int64)
        sd[f"b{i:02d}.bytes"] = torch.arange(7, dtype=torch.uint8)
        sd[f"b{i:02d}.bf"] = torch.randn(i + 2, generator=g).to(torch.bfloat16)
        sd[f"b{i:02d}.z"] = torch.randn(3, generator=g, dtype=torch.complex64)
    return sd


@pytest.fixture(scope="module")
def mixed_src(tmp_path_factory):
    return torch_save(mixed_state_dict(), tmp_path_factory.mktemp("mixed") / "mixed.pt")


def shard_data_sizes(out) -> dict[str, int]:
    return {
        f: sum(
            r["data_offsets"][1] - r["data_offsets"][0]
            for k, r in check_safetensors_layout(out / f).items()
            if k != "__metadata__"
        )
        for f in sorted(set(read_json(out / INDEX)["weight_map"].values()))
    }


@pytest.mark.parametrize("limit", ["1500", "2KB", "2KiB", "5KB", "5GB"])
def test_shards_index_and_format(mixed_src, out, limit):
    convert(mixed_src, out, max_shard_size=limit)
    m = re.fullmatch(r"(\d+)(\D*)", limit)
    max_bytes = int(m.group(1)) * UNITS[m.group(2) or "B"]
    sizes = shard_data_sizes(out)
    n = len(sizes)
    expected_names = (
        ["model.safetensors"] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    )
    assert sorted(sizes) == expected_names
    total = sum(sizes.values())
    assert n == 1 or all(s <= max_bytes for s in sizes.values()), sizes
    assert (n > 1) == (total > max_bytes)
    index = read_json(out / INDEX)
    assert set(index) == {"metadata", "weight_map"} and index["metadata"]["total_size"] == total
    check_converted(out, mixed_state_dict())


def test_tensor_larger_than_the_shard_limit_gets_a_shard_of_its_own(tmp_path, out):
    g = torch.Generator().manual_seed(SEED)
    sd = {
        "small.a": torch.randn(10, generator=g),
        "big": torch.randn(1000, generator=g),
        "small.b": torch.randn(10, generator=g),
    }
    src = torch_save(sd, tmp_path / "s.pt")
    convert(src, out, max_shard_size="1KB")
    sizes = shard_data_sizes(out)
    assert 4000 in sizes.values() and all(s <= 1000 for s in sizes.values() if s != 4000)
    check_converted(out, sd)


def test_output_is_deterministic(mixed_src, tmp_path):
    outs = []
    for i, workers in enumerate((1, 4, 4)):
        o = tmp_path / f"out{i}"
        convert(mixed_src, o, max_shard_size="3KB", workers=workers)
        outs.append(o)
    files = sorted(p.name for p in outs[0].iterdir())
    assert INDEX in files and MANIFEST in files
    for o in outs[1:]:
        assert sorted(p.name for p in o.iterdir()) == files
        for f in files:
            got = (o / f).read_bytes()
            if f == "README.md":  # the model card names its own OUT (in the command and the snippet)
                got = got.replace(str(o).encode(), str(outs[0]).encode())
            assert got == (outs[0] / f).read_bytes(), f


def test_manifest_lists_every_tensor_and_the_options(mixed_src, out):
    convert(mixed_src, out, max_shard_size="4KB", dtype="float16")
    man = read_json(out / MANIFEST)
    assert set(man["tensors"]) == set(mixed_state_dict()) == set(read_json(out / INDEX)["weight_map"])
    assert man["options"]["dtype"] == "float16"
    check_converted(out, mixed_state_dict(), dtype="float16")  # records, shard bytes and sha256


_ORDER_SCRIPT = textwrap.dedent("""
    import json, os, sys
    src, out, kw = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    events = []
    def hook(event, args):
        if event == "os.rename":
            events.append(["rename", os.fspath(args[1])])
        elif event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            flags = args[2] or 0
            mode = args[1] if isinstance(args[1], str) else ""
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) or any(c in mode for c in "wax+"):
                events.append(["write", os.fspath(args[0])])
    import torch2mlx.stream
    transform = (lambda name, arr, dtype: (name, arr)) if kw.pop("transform", False) else None
    sys.addaudithook(hook)
    torch2mlx.stream.convert(src, out, hook=transform, **kw)
    print(json.dumps([e for e in events if os.path.dirname(os.path.abspath(e[1])) == os.path.abspath(out)]))
""")


@pytest.mark.slow
@pytest.mark.parametrize("transform", [False, True], ids=["plan", "transform"])
def test_index_is_written_after_every_shard(tmp_path, out, transform):
    """The index comes after every shard and sidecar; a manifest saying "complete": true only after the index."""
    from test_readers_dirs import _model_sd, _write_dir

    src = _write_dir(tmp_path / "src", _model_sd(), "safetensors")
    kw = {"max_shard_size": "2KB", "transform": transform}
    proc = subprocess.run(
        [sys.executable, "-c", _ORDER_SCRIPT, str(src), str(out), json.dumps(kw)],
        capture_output=True,
        text=True,
        check=True,
    )
    events = json.loads(proc.stdout)
    index_events = [i for i, (kind, path) in enumerate(events) if path.endswith(INDEX)]
    assert index_events and ["rename", str(out / INDEX)] in events
    # between the index's temp file and the end, only the index and (forward plan) the final manifest
    tail = [path for _, path in events[index_events[0] :]]
    after = {str(out / INDEX), str(out / ("." + INDEX + ".tmp"))}
    if not transform:
        after |= {str(out / MANIFEST), str(out / ("." + MANIFEST + ".tmp"))}
        assert events[-1] == ["rename", str(out / MANIFEST)] and read_json(out / MANIFEST)["complete"] is True
    assert set(tail) <= after, tail
    assert any(p.endswith("config.json") for _, p in events) and any(p.endswith(MANIFEST) for _, p in events)


def test_non_empty_output_needs_overwrite(mixed_src, out):
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(torch2mlx.Torch2MLXError, match="not empty"):
        convert(mixed_src, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_an_earlier_conversion(mixed_src, tmp_path, out):
    convert(mixed_src, out, max_shard_size="2KB")
    assert len(list(out.glob("model-*.safetensors"))) > 2
    sd = {"only": torch.arange(5.0)}
    convert(torch_save(sd, tmp_path / "small.pt"), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", "model.safetensors", INDEX, MANIFEST])
    check_converted(out, sd)


def test_output_directory_holding_the_source_is_refused(tmp_path):
    src = torch_save({"a": torch.ones(2)}, tmp_path / "a.pt")
    with pytest.raises(torch2mlx.Torch2MLXError, match="source"):
        convert(src, tmp_path, overwrite=True)
    assert src.exists() and not (tmp_path / INDEX).exists()


def test_failed_run_leaves_no_index(mixed_src, tmp_path, out):
    """An error half-way (a transform that raises) removes temporaries and writes no index."""
    seen = []

    def boom(name, arr, dtype):
        seen.append(name)
        if len(seen) == 20:
            raise RuntimeError("user code failed")
        return name, arr

    with pytest.raises(RuntimeError, match="user code failed"):
        convert(mixed_src, out, hook=boom, max_shard_size="1KB")
    assert_no_index(out)
    assert not list(out.glob("model*.safetensors"))
