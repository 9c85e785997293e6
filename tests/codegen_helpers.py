"""Shared by the code generation tests: run generated source against torch (the oracle)."""

from __future__ import annotations

import ast

import mlx.core as mx
import numpy as np
import torch

import torch2mlx

TOL = 1e-5


def randomize_stats(module):
    """Batch norm running statistics away from their defaults, and weights torch left uninitialized
    (``torch.empty``) random; other weights keep torch's init."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.is_floating_point() and t.numel() and not bool((t.abs() < 1e6).all()):
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)  # left uninitialized by torch.empty
    return module.eval()


def load(result, torch_module, tmp_path):
    """The generated root class, built, with ``torch_module``'s converted weights loaded strictly, in eval mode."""
    path = tmp_path / "w.safetensors"
    torch2mlx.convert(torch_module, path, overwrite=True)
    model = result.load()[result.name]()
    model.load_weights(list(torch2mlx.load_converted(path, prefix=result.prefix).items()), strict=True)
    return model.eval()


def to_mx(x):
    if isinstance(x, (tuple, list)):
        return type(x)(to_mx(v) for v in x)
    return mx.array(x.detach().numpy()) if isinstance(x, torch.Tensor) else x


def flat(x):
    """Tensors / arrays of a (nested) result, in order; None entries and non-arrays left out."""
    if isinstance(x, dict):
        return [a for v in x.values() for a in flat(v)]
    if isinstance(x, (tuple, list)):
        return [a for v in x for a in flat(v)]
    if isinstance(x, torch.Tensor):
        return [x.detach().numpy()]
    if isinstance(x, mx.array):
        return [np.array(x)]
    return []


def max_error(got, want) -> float:
    g, w = flat(got), flat(want)
    assert len(g) == len(w) and g, (len(g), len(w))
    for a, b in zip(g, w, strict=True):
        assert a.shape == b.shape, (a.shape, b.shape)
    return max(
        float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
        for a, b in zip(g, w, strict=True)
    )


def imports(source: str) -> set[str]:
    """The modules a generated file imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(node.module)
    return found
