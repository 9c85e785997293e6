"""TorchScript archives (``torch.jit.save``): every parameter and buffer under its module name, or one clear refusal.

torch is the oracle: ``torch.jit.load(f).state_dict()`` is what the conversion must hold, bit for bit."""

from __future__ import annotations

import zipfile

import pytest
import torch
from conftest import SEED
from helpers import assert_no_index, assert_one_error, check_converted, convert, run_cli, run_main
from test_no_torch import no_torch_env  # noqa: F401  (fixture)
from torch import nn

import torch2mlx


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.blocks = nn.ModuleList([nn.Linear(4, 4, bias=False), nn.Linear(4, 4).to(torch.bfloat16)])
        self.head = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
        self.shared = self.head[0]  # one module, two names
        self.register_buffer("scale", torch.tensor([0.5, 2.0]))
        self.register_buffer("cache", torch.arange(3.0), persistent=False)  # TorchScript keeps it in state_dict
        self.plain = torch.full((5,), 7.0)  # a tensor attribute, not a buffer

    def forward(self, x):
        h = self.bn(self.conv(x)).mean((2, 3))
        for i, b in enumerate(self.blocks):
            h = b(h.to(b.weight.dtype)).float() if i else b(h)
        return self.head(h) * self.scale[0] + self.shared(h).sum() + self.plain.sum() + self.cache.sum()


def _net() -> nn.Module:
    torch.manual_seed(SEED)
    m = Net()
    m.train()(torch.randn(2, 3, 6, 6))  # BatchNorm statistics move
    return m.eval()


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_archive_converts_its_state_dict_exactly(tmp_path, out, how):
    m = _net()
    sm = torch.jit.script(m) if how == "script" else torch.jit.trace(m, torch.randn(1, 3, 6, 6))
    src = tmp_path / "net.pt"
    torch.jit.save(sm, str(src), _extra_files={"notes.txt": "x" * 1000})
    with zipfile.ZipFile(src) as zf:  # what made the old reader refuse: compressed code/ members
        assert any(i.compress_type != zipfile.ZIP_STORED for i in zf.infolist())
    want = torch.jit.load(str(src)).state_dict()
    assert "plain" not in want and "cache" in want and "shared.weight" in want
    res = convert(src, out, model=False)
    check_converted(out, dict(want))
    assert "TorchScript" in res.report()
    assert not any("placeholder" in n for n in res.plan.notes)
    assert run_main("verify", src, out).returncode == 0


def test_torchscript_archive_converts_without_torch(tmp_path, out, no_torch_env):
    """code/ is read as text, never run: the conversion works in a process where torch cannot be imported."""
    env, marker = no_torch_env
    src = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(_net()), str(src))
    proc = run_cli("stream", src, out, "--no-model", env=env)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    check_converted(out, dict(torch.jit.load(str(src)).state_dict()))


def _rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info, data)


def _drop_buffers_line(name, data):
    if not name.endswith("batchnorm.py"):
        return data
    return b"\n".join(line for line in data.split(b"\n") if not line.startswith(b"  __buffers__"))


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda n, d: None if n.endswith("batchnorm.py") else d, "bn"),  # its class definition is gone
        (_drop_buffers_line, "__buffers__"),  # which tensors count is not said
    ],
)
def test_a_module_we_cannot_account_for_refuses_the_whole_file(tmp_path, out, edit, says):
    src = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(_net()), str(src))
    bad = tmp_path / "bad.pt"
    _rewrite(src, bad, edit)
    err = assert_one_error(run_main("stream", bad, out, "--no-model"), "TorchScript", "torch.jit.load", says)
    assert "nothing was converted" in err
    assert_no_index(out)


def _plus_one(x):
    return x + 1


def test_a_scripted_function_is_a_clear_refusal(tmp_path, out):
    src = tmp_path / "fn.pt"
    torch.jit.save(torch.jit.script(_plus_one), str(src))  # an archive with no module
    assert_one_error(run_main("stream", src, out, "--no-model"), "TorchScript")
    assert_no_index(out)


def test_analyze_of_a_script_module_claims_no_rules_from_the_model(tmp_path, out):
    """Its layers are compiled (RecursiveScriptModule): rules come from shapes, and the report says so."""
    sm = torch.jit.script(_net())
    report = torch2mlx.analyze(sm)
    assert all(t.rule_source != "model" for t in report.tensors)
    assert any("TorchScript" in n for n in report.notes)
    res = torch2mlx.convert(sm, out / "w.safetensors")
    assert "model" not in res.plan.rules_by_source()
    import mlx.core as mx

    w = mx.load(str(out / "w.safetensors"))
    # the conv weight is in MLX's layout (O, H, W, I), as shape inference gives it, not identity
    assert tuple(w["conv.weight"].shape) == (4, 3, 3, 3) and torch.equal(
        torch.from_numpy(__import__("numpy").array(w["conv.weight"])), sm.conv.weight.detach().permute(0, 2, 3, 1)
    )
