"""``torch2mlx.export``: now, and as a class decorator with its two triggers (export_mlx(), first eval forward)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as mnn
import numpy as np
import pytest
import torch
from torch import nn

import torch2mlx
from torch2mlx.errors import Torch2MLXError


def _weights(path) -> dict:
    return {k: np.array(v) for k, v in torch2mlx.load_converted(path).items()}


def _decorated(path, **kw):
    @torch2mlx.export(str(path), **kw)
    class Tiny(nn.Module):
        """A Linear and a LazyLinear (whose weight exists only after a forward)."""

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.out = nn.LazyLinear(2)

        def forward(self, x):
            return self.out(torch.relu(self.fc(x)))

    return Tiny


def test_export_now_replaces_the_output(tmp_path):
    m = nn.Conv2d(2, 3, 3)
    res = torch2mlx.export(m, tmp_path / "w.safetensors")
    assert res.plan.rules_by_source() == {"model": 2}
    w = _weights(tmp_path / "w.safetensors")
    assert np.array_equal(w["weight"], m.weight.detach().permute(0, 2, 3, 1).numpy())
    with torch.no_grad():
        m.weight.add_(1.0)
    torch2mlx.export(m, tmp_path / "w.safetensors")  # the export's file: replaced, not refused
    assert np.array_equal(_weights(tmp_path / "w.safetensors")["weight"], m.weight.detach().permute(0, 2, 3, 1).numpy())


def test_export_mlx_method_converts_current_weights(tmp_path):
    Tiny = _decorated(tmp_path / "tiny.safetensors", on_forward=None)
    m = Tiny()
    m(torch.randn(1, 4))  # materializes the lazy layer; no trigger here
    assert not (tmp_path / "tiny.safetensors").exists()
    m.export_mlx()
    w = _weights(tmp_path / "tiny.safetensors")
    assert set(w) == {"fc.weight", "fc.bias", "out.weight", "out.bias"}
    assert np.array_equal(w["out.weight"], m.out.weight.detach().numpy())
    m.export_mlx(tmp_path / "elsewhere.safetensors", dtype="float16")
    assert torch2mlx.load_converted(tmp_path / "elsewhere.safetensors")["fc.weight"].dtype == mx.float16


def test_first_eval_forward_exports_once(tmp_path):
    path = tmp_path / "tiny.safetensors"
    Tiny = _decorated(path)
    m = Tiny()
    x = torch.randn(2, 4)
    m.train()
    m(x)  # training-mode forwards never export
    assert not path.exists()
    m.eval()
    with torch.no_grad():
        want = m(x)
    assert path.exists()
    first = path.read_bytes()
    with torch.no_grad():
        m.fc.weight.add_(1.0)
        m(x)  # once per instance: the new weights stay out
    assert path.read_bytes() == first
    with torch.no_grad():
        m.fc.weight.sub_(1.0)
    mlx_model = mnn.Sequential(mnn.Linear(4, 3), mnn.ReLU(), mnn.Linear(3, 2))
    w = torch2mlx.load_converted(path)
    mlx_model.load_weights(
        [(k.replace("fc.", "layers.0.").replace("out.", "layers.2."), v) for k, v in w.items()], strict=True
    )
    assert np.max(np.abs(np.array(mlx_model(mx.array(x.numpy()))) - want.numpy())) <= 1e-6


def test_always_trigger_exports_on_a_training_forward(tmp_path):
    path = tmp_path / "tiny.safetensors"
    m = _decorated(path, on_forward="always")()
    m(torch.randn(1, 4))
    assert set(_weights(path)) == {"fc.weight", "fc.bias", "out.weight", "out.bias"}


def test_the_decorated_class_stays_a_working_module(tmp_path):
    Tiny = _decorated(tmp_path / "t.safetensors", on_forward=None)
    m = Tiny()
    assert Tiny.__name__ == "Tiny" and Tiny.forward.__name__ == "forward"
    m(torch.randn(1, 4))
    sd = m.state_dict()
    m2 = Tiny()
    m2(torch.randn(1, 4))
    m2.load_state_dict(sd, strict=True)


@pytest.mark.parametrize(
    "bad, why",
    [
        (lambda: torch2mlx.export("w.safetensors")(object), "decorates nn.Module classes"),
        (lambda: torch2mlx.export(nn.Linear(2, 2)), "output path is missing"),
        (lambda: torch2mlx.export(42), "use export"),
        (lambda: torch2mlx.export("w.safetensors", on_forward="sometimes"), "on_forward"),
    ],
)
def test_misuse_is_a_torch2mlx_error(bad, why):
    with pytest.raises(Torch2MLXError, match=why):
        bad()


def test_a_compiled_decorated_model_exports_outside_the_graph(tmp_path):
    path = tmp_path / "c.safetensors"

    @torch2mlx.export(str(path))
    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return torch.relu(self.fc(x))

    m = Small().eval()
    compiled = torch.compile(m, backend="eager")  # dynamo traces forward; the export must not be traced
    with torch.no_grad():
        compiled(torch.randn(2, 4))
    assert np.array_equal(_weights(path)["fc.weight"], m.fc.weight.detach().numpy())
