"""Every multi-source and layout rule through the stream and back: torch -> MLX -> torch, then torch runs it.

What is exact, precisely:
- permutations (convolutions, transposed convolutions, bilinear) and split/concat
  (MultiheadAttention's in_proj) give back torch's tensors bit for bit;
- a ``sum`` (LSTM b_ih + b_hh) cannot be split again: b_ih comes back as the
  sum and b_hh as zeros, so b_ih + b_hh is bit-exact and the layer's outputs agree;
- a GRU gives b_ih + [b_hr, b_hz, 0] and [0, 0, b_hn]: every gate sees the same
  bias sums, the layer's outputs agree to float rounding;
- ``weight_norm`` gives v = the weight and g = its norm: v * g / ||v|| is the
  weight to float rounding, the layer's outputs agree;
- BatchNorm's step counter, which MLX does not keep, comes back as 0.
Every result loads into a fresh model with ``strict=True``.
"""

import json
import os

import pytest
import torch
from helpers import MANIFEST, convert, to_torch
from reverse_helpers import read_torch_output
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.conv1 = nn.Conv1d(8, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3)
        self.deconv = nn.ConvTranspose1d(6, 5, 3)
        self.bn = nn.BatchNorm1d(6)
        self.wn = nn.utils.parametrizations.weight_norm(nn.Conv1d(6, 6, 3, padding=1), dim=2)
        self.lstm = nn.LSTM(8, 6, num_layers=2, batch_first=True)
        self.gru = nn.GRU(8, 6, batch_first=True)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.bil = nn.Bilinear(8, 6, 4)
        self.fc = nn.Linear(6, 3)


def _trained() -> Net:
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t) * 0.5 + (1.0 if name.endswith("running_var") else 0.0))
        net.bn.num_batches_tracked.fill_(7)
    return net.eval()


def _outputs(net: Net) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    seq, img = torch.randn(2, 5, 8, generator=g), torch.randn(2, 3, 6, 6, generator=g)
    feat = torch.randn(2, 6, 5, generator=g)
    with torch.no_grad():
        return {
            "emb": net.emb(torch.tensor([[1, 7, 3]])),
            "conv1": net.conv1(seq.transpose(1, 2)),
            "conv2": net.conv2(img),
            "deconv": net.deconv(feat),
            "bn": net.bn(feat),
            "wn": net.wn(feat),
            "lstm": net.lstm(seq)[0],
            "gru": net.gru(seq)[0],
            "mha": net.mha(seq, seq, seq)[0],
            "bil": net.bil(seq, torch.randn(2, 5, 6, generator=g)),
            "fc": net.fc(feat.transpose(1, 2)),
        }


EXACT = (
    "emb.",
    "conv1.",
    "conv2.",
    "deconv.",
    "mha.",
    "bil.",
    "fc.",
    "bn.running",
    "bn.weight",
    "bn.bias",
    "lstm.weight",
    "gru.weight",
)


@pytest.fixture(scope="module")
def net_and_mlx(tmp_path_factory):
    d = tmp_path_factory.mktemp("rules")
    net = _trained()
    torch.save(net.state_dict(), d / "net.pt")
    res = convert(d / "net.pt", d / "mlx", model=f"{__name__}:Net")
    assert res.plan.rules_by_source() == {"model": len(res.plan.ops)}
    return net, d


def _check(net: Net, back: dict[str, torch.Tensor]) -> None:
    sd = net.state_dict()
    fresh = Net().eval()
    fresh.load_state_dict(back, strict=True)
    for name, t in sd.items():
        if name.startswith(EXACT):
            assert torch.equal(back[name], t), name
    for k in (0, 1):
        b_ih, b_hh = f"lstm.bias_ih_l{k}", f"lstm.bias_hh_l{k}"
        assert torch.equal(back[b_ih] + back[b_hh], sd[b_ih] + sd[b_hh]) and not back[b_hh].any()
    h = 6
    assert torch.equal(back["gru.bias_hh_l0"][: 2 * h], torch.zeros(2 * h))
    assert torch.equal(back["gru.bias_hh_l0"][2 * h :], sd["gru.bias_hh_l0"][2 * h :])
    assert torch.allclose(
        back["gru.bias_ih_l0"][: 2 * h], sd["gru.bias_ih_l0"][: 2 * h] + sd["gru.bias_hh_l0"][: 2 * h]
    )
    assert torch.equal(back["gru.bias_ih_l0"][2 * h :], sd["gru.bias_ih_l0"][2 * h :])
    torch.testing.assert_close(fresh.wn.weight, net.wn.weight, rtol=1e-6, atol=1e-6)
    assert fresh.bn.num_batches_tracked.item() == 0
    want, got = _outputs(net), _outputs(fresh)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_rules_from_the_manifest_take_the_model_back(net_and_mlx, tmp_path, fmt):
    net, d = net_and_mlx
    res = to_torch(d / "mlx", tmp_path / "back", format=fmt)
    assert not res.plan.warnings, res.plan.warnings
    _check(net, read_torch_output(tmp_path / "back", fmt))


def test_rules_from_the_model_class_when_there_is_no_manifest(net_and_mlx, tmp_path):
    net, d = net_and_mlx
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in os.listdir(d / "mlx"):
        if f != MANIFEST:
            (bare / f).write_bytes((d / "mlx" / f).read_bytes())
    res = to_torch(bare, tmp_path / "back", model=f"{__name__}:Net")
    assert {op.rule_source for op in res.plan.ops} == {"model", "default"}  # default: the restored counter
    assert not res.plan.warnings, res.plan.warnings
    back = read_torch_output(tmp_path / "back")
    _check(net, back)
    via_manifest = to_torch(d / "mlx", tmp_path / "m")
    assert via_manifest.plan.rules_by_source()["manifest"] == len(back) - 1
    for k, v in read_torch_output(tmp_path / "m").items():
        assert torch.equal(back[k], v), k


def test_rule_counts_cover_every_kind(net_and_mlx):
    _, d = net_and_mlx
    rules = {r["rule"] for r in json.loads((d / "mlx" / MANIFEST).read_text())["tensors"].values()}
    assert {
        "conv1d",
        "conv2d",
        "conv_transpose1d",
        "bilinear",
        "split",
        "sum",
        "gru_input_bias",
        "weight_norm",
    } <= rules, rules
