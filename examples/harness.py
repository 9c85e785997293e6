"""Shared by the validation examples: train in torch, convert, run in MLX, compare and time both.

Each example defines its torch model, its MLX model and its synthetic data, and calls ``main``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np


def parse(argv, description: str):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="a few training steps on little data (seconds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the measurements as JSON")
    return ap.parse_args(argv)


def train(model, batches, steps: int, lr: float = 1e-3) -> float:
    """A plain torch training loop (Adam, cross-entropy); returns the last loss."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    loss = None
    for step in range(steps):
        x, y = batches(step)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first calls pay for allocation and kernel selection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(
    name: str,
    torch_model,
    mlx_model,
    x_torch: np.ndarray,
    x_mlx: np.ndarray,
    labels: np.ndarray,
    *,
    repeats: int,
    loss: float,
) -> dict:
    """Convert ``torch_model`` with torch2mlx, load it into ``mlx_model``, compare logits on the same data."""
    import mlx.core as mx
    import torch

    import torch2mlx

    torch_model.eval()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, f"{name}.safetensors")
        res = torch2mlx.convert(torch_model, path)
        mlx_model.load_weights(list(torch2mlx.load_converted(path).items()), strict=True)
    mlx_model.eval()
    xt, xm = torch.from_numpy(x_torch), mx.array(x_mlx)

    def torch_forward():
        with torch.no_grad():
            return torch_model(xt)

    def mlx_forward():
        out = mlx_model(xm)
        mx.eval(out)
        return out

    t_logits, m_logits = torch_forward().numpy(), np.array(mlx_forward())
    return {
        "example": name,
        "tensors": len(res.plan.ops),
        "rules": res.plan.rules_by_source(),
        "final_train_loss": round(loss, 4),
        "torch_accuracy": float(np.mean(t_logits.argmax(-1) == labels)),
        "max_logit_diff": float(np.max(np.abs(t_logits - m_logits))),
        "agreement": float(np.mean(t_logits.argmax(-1) == m_logits.argmax(-1))),
        "batch": int(x_torch.shape[0]),
        "torch_forward_ms": 1e3 * _median_seconds(torch_forward, repeats),
        "mlx_forward_ms": 1e3 * _median_seconds(mlx_forward, repeats),
    }


def show(metrics: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    m = metrics
    print(
        f"{m['example']}: {m['tensors']} tensors converted (rules: {m['rules']}), final train loss "
        f"{m['final_train_loss']}, torch accuracy {m['torch_accuracy']:.1%}"
    )
    print(f"  max |logit difference| torch vs MLX: {m['max_logit_diff']:.2e}")
    print(f"  prediction agreement:                {m['agreement']:.1%} of {m['batch']}")
    print(
        f"  forward pass (batch {m['batch']}):        torch {m['torch_forward_ms']:.2f} ms, "
        f"MLX {m['mlx_forward_ms']:.2f} ms"
    )


def main(
    argv, doc: str, name: str, *, data, torch_model, mlx_model, to_mlx, quick: dict, full: dict, lr: float = 1e-3
) -> dict:
    """Parse the options, train ``torch_model()`` on ``data(n, seed, **extra)``, then ``run`` and ``show``.

    ``quick`` / ``full``: ``steps``, ``batch``, ``n_eval`` and any extra keyword arguments for ``data``.
    ``to_mlx`` turns the evaluation inputs into MLX's layout.
    """
    import torch

    args = parse(argv, doc.splitlines()[0])
    torch.manual_seed(args.seed)
    extra = dict(quick if args.quick else full)
    steps, batch, n_eval = extra.pop("steps"), extra.pop("batch"), extra.pop("n_eval")

    def batches(step):
        x, y = data(batch, args.seed * 100003 + step + 1, **extra)
        return torch.from_numpy(x), torch.from_numpy(y)

    model = torch_model()
    loss = train(model, batches, steps, lr)
    x, y = data(n_eval, 10**6 + args.seed, **extra)
    metrics = run(name, model, mlx_model(), x, to_mlx(x), y, repeats=3 if args.quick else 20, loss=loss)
    show(metrics, args.json)
    return metrics
