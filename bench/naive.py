"""The conversion scripts people write by hand, as benchmark contenders.

    python bench/naive.py torch-load SRC_BIN_DIR OUT     # torch.load + mx.save_safetensors
    python bench/naive.py safe-open  SRC_ST_DIR  OUT     # safe_open + safetensors save_file

Both are written the way such scripts usually are: one input shard at a
time (a whole-model dict would not fit the 10 GB preset next to the other
contenders on a 24 GB machine), every tensor materialised in memory, one
output shard per input shard, plus an index and the config so that the
result is a loadable MLX model directory. They are deliberately not tuned.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys


def _finish(src: str, out: str, weight_map: dict[str, str]) -> None:
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    for side in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(src, side)):
            shutil.copy(os.path.join(src, side), out)


def torch_load(src: str, out: str) -> None:
    import mlx.core as mx
    import torch

    os.makedirs(out)
    shards = sorted(glob.glob(os.path.join(src, "pytorch_model*.bin")))
    weight_map = {}
    for i, path in enumerate(shards):
        state = torch.load(path, map_location="cpu", weights_only=True)
        weights = {}
        for name, t in state.items():
            # numpy has no bfloat16: the usual detour is float32 and back.
            if t.dtype == torch.bfloat16:
                weights[name] = mx.array(t.float().numpy()).astype(mx.bfloat16)
            else:
                weights[name] = mx.array(t.numpy())
        del state
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        mx.save_safetensors(os.path.join(out, fname), weights, metadata={"format": "mlx"})
        weight_map.update(dict.fromkeys(weights, fname))
        del weights
    _finish(src, out, weight_map)


def safe_open_save_file(src: str, out: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    os.makedirs(out)
    shards = sorted(glob.glob(os.path.join(src, "model*.safetensors")))
    weight_map = {}
    for i, path in enumerate(shards):
        tensors = {}
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, os.path.join(out, fname), metadata={"format": "mlx"})
        weight_map.update(dict.fromkeys(tensors, fname))
        del tensors
    _finish(src, out, weight_map)


MODES = {"torch-load": torch_load, "safe-open": safe_open_save_file}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Naive hand-written PyTorch -> MLX conversions (benchmark contenders).")
    ap.add_argument(
        "mode",
        choices=sorted(MODES),
        help="torch-load: torch.load + mx.save_safetensors (reads .bin); "
        "safe-open: safe_open + save_file (reads .safetensors)",
    )
    ap.add_argument("src", help="checkpoint directory")
    ap.add_argument("out", help="output directory (must not exist)")
    a = ap.parse_args(argv)
    MODES[a.mode](a.src, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
