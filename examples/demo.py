"""`make demo`: build a small CNN checkpoint three ways, convert each with `t2mlx stream`, check the result.

1. a zip pickle (torch.save today), 2. a legacy pickle (torch.save with
_use_new_zipfile_serialization=False, as many .pth files in the wild), 3. a
Lightning-style nested .ckpt. torch builds the samples and is the oracle;
the conversion itself runs in a separate process and never imports torch.
Last, the live model goes through the model-level API (torch2mlx.convert) into
one file, which must hold the same tensors as the stream's output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np

OUT = os.path.relpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "demo-out"))


def make_model():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()
    return model


def make_samples(d: str, model) -> dict[str, str]:
    import torch

    sd = model.state_dict()
    paths = {
        "zip": os.path.join(d, "cnn.pt"),
        "legacy": os.path.join(d, "cnn_legacy.pth"),
        "lightning": os.path.join(d, "cnn.ckpt"),
    }
    torch.save(sd, paths["zip"])
    torch.save(sd, paths["legacy"], _use_new_zipfile_serialization=False)
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "state_dict": {"model." + k: v for k, v in sd.items()},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}],
        },
        paths["lightning"],
    )
    return paths


def check(src: str, out: str, prefix: str = "") -> int:
    """Compare every output tensor with torch's tensor under the rule the plan recorded."""
    import json

    import mlx.core as mx
    import torch

    obj = torch.load(src, weights_only=True)
    sd = {k[len(prefix) :]: v for k, v in obj.get("state_dict", obj).items()}
    manifest = json.load(open(os.path.join(out, "torch2mlx.json")))
    weights = {}
    for shard in sorted({r["shard"] for r in manifest["tensors"].values()}):
        weights.update(mx.load(os.path.join(out, shard)))
    for name, rec in manifest["tensors"].items():
        ref = sd[name]
        if rec["rule"] == "conv2d":
            ref = ref.permute(0, 2, 3, 1)
        got = np.array(weights[name])
        assert got.shape == tuple(ref.shape) and np.array_equal(got, ref.numpy()), name
    return len(manifest["tensors"])


def check_model_api(model, path: str, stream_out: str) -> int:
    import torch2mlx

    torch2mlx.convert(model, path)
    got = torch2mlx.load_converted(path)
    want = torch2mlx.load_converted(stream_out)
    # With the model, its rules drop BatchNorm's step counter (MLX has none); the stream had no model to ask.
    assert set(want) - set(got) == {k for k in want if k.endswith("num_batches_tracked")} and set(got) <= set(want)
    for k in got:
        assert np.array_equal(np.array(got[k]), np.array(want[k])), k
    return len(got)


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    model = make_model()
    paths = make_samples(OUT, model)
    for kind, src in paths.items():
        out = os.path.join(OUT, f"{kind}-mlx")
        cmd = ["t2mlx", "stream", src, out]
        if kind == "lightning":
            cmd += ["--strip-prefix", "model."]
        print(f"\n$ {' '.join(cmd)}", flush=True)
        exe = os.path.join(os.path.dirname(sys.executable), "t2mlx")
        subprocess.run([exe] + cmd[1:], check=True)
        n = check(src, out, "model." if kind == "lightning" else "")
        print(f"check: {n} tensors bit-identical to torch.load (conv weights in MLX's O,H,W,I layout)")
    print("\n>>> torch2mlx.convert(model, 'model-api.safetensors')   # the live nn.Module, same pipeline")
    n = check_model_api(model, os.path.join(OUT, "model-api.safetensors"), os.path.join(OUT, "zip-mlx"))
    print(f"check: {n} tensors bit-identical to the stream's output (the model's rules dropped num_batches_tracked)")
    print(f"\ndemo outputs in {OUT}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
