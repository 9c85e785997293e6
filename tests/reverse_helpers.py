"""Reading what ``--to torch`` writes, with torch and safetensors as the readers (never torch2mlx)."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import MANIFEST, file_hash, read_json, shard_hash
from safetensors import safe_open

INDEXES = {"safetensors": "model.safetensors.index.json", "bin": "pytorch_model.bin.index.json"}


def read_torch_output(out, fmt: str = "safetensors") -> dict[str, torch.Tensor]:
    """Every tensor of a ``--to torch`` output, checked against its index and manifest.

    safetensors shards must carry ``{"format": "pt"}``; ``.bin`` shards must load with
    ``torch.load(weights_only=True)``. The manifest's shard sizes and hashes must match.
    """
    out = Path(out)
    index = read_json(out / INDEXES[fmt])
    wm = index["weight_map"]
    got: dict[str, torch.Tensor] = {}
    for shard in sorted(set(wm.values())):
        if fmt == "bin":
            assert shard.startswith("pytorch_model") and shard.endswith(".bin"), shard
            part = torch.load(out / shard, weights_only=True)
        else:
            with safe_open(out / shard, framework="pt") as f:
                assert f.metadata() == {"format": "pt"}, f"{shard}: metadata {f.metadata()}"
                part = {k: f.get_tensor(k) for k in f.keys()}
        for k in part:
            assert wm.get(k) == shard, f"{k} is in {shard} but the index says {wm.get(k)}"
        got.update(part)
    assert set(got) == set(wm), "index names tensors the shards do not hold"
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in got.values())
    man = read_json(out / MANIFEST)
    assert man["to"] == "torch" and man["format"] == fmt and man["complete"] is True
    assert set(man["shards"]) == set(wm.values())
    for f, rec in man["shards"].items():
        alg = shard_hash(man)
        assert rec["bytes"] == (out / f).stat().st_size and rec[alg] == file_hash(out / f, alg), f
    return got
