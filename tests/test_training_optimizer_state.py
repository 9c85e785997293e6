"""torch optimizer state and hyper-parameters as MLX's, and back; torch's own training is the oracle.

A torch model trains a few steps; its optimizer is converted (moments laid out by their weights'
rules, hyper-parameters mapped, the step carried) and both frameworks continue on the same inputs:
the parameters must stay together. Quantities MLX cannot continue exactly must be reported.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten
from torch import nn
from training_helpers import TorchNet, inputs, max_gap, mlx_steps, mlx_twin, torch_steps

from torch2mlx.errors import Torch2MLXError
from torch2mlx.training import (
    InexactConversionWarning,
    convert_optimizer,
    convert_optimizer_state,
    optimizer_state_to_torch,
    read_training_checkpoint,
)

CONFIGS = {
    "SGD-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "SGD-nesterov-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "SGD-dampening": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3),
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "Adam-l2-maximize": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2, maximize=True),
    "Adam-decoupled": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1),
    "RMSprop-wd": lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.9, weight_decay=0.01),
    "Adagrad-decay": lambda p: torch.optim.Adagrad(p, lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.slow
def test_mlx_continues_torch_training(name):
    torch.manual_seed(0)
    model = TorchNet()
    opt = CONFIGS[name](model.parameters())
    xs = inputs(8)
    torch_steps(model, opt, xs[:4])
    conv = convert_optimizer(opt, model)
    assert conv.report.exact, str(conv.report)
    twin = mlx_twin(model)
    torch_steps(model, opt, xs[4:])
    mlx_steps(twin, conv.optimizer, xs[4:])
    assert max_gap(twin, model) <= 1e-5
    assert int(conv.optimizer.step.item()) == 8 if "SGD" not in name else True


def test_moments_follow_their_weights_rules():
    torch.manual_seed(0)
    model = TorchNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch_steps(model, opt, inputs(3))
    got = convert_optimizer_state(opt, model)
    st, tst = got.state, {n: opt.state[p] for n, p in model.named_parameters()}
    assert got.kind == "Adam" and got.step == 3 and int(st["step"].item()) == 3
    assert float(st["learning_rate"].item()) == pytest.approx(1e-2)
    conv = tst["conv.weight"]["exp_avg_sq"].permute(0, 2, 3, 1).numpy()  # channels-last, exactly
    assert np.array_equal(np.array(st["conv"]["weight"]["v"]), conv)
    packed = tst["att.in_proj_weight"]["exp_avg"].numpy()  # split in q/k/v rows
    for i, proj in enumerate(("query_proj", "key_proj", "value_proj")):
        assert np.array_equal(np.array(st["att"][proj]["weight"]["m"]), packed[4 * i : 4 * (i + 1)])
    assert np.array_equal(np.array(st["fc"]["bias"]["m"]), tst["fc.bias"]["exp_avg"].numpy())


@pytest.mark.parametrize("name", ["SGD-momentum", "AdamW", "RMSprop-wd", "Adagrad-decay"])
def test_round_trip_torch_mlx_torch_is_exact(name):
    torch.manual_seed(0)
    model = TorchNet()
    opt = CONFIGS[name](model.parameters())
    torch_steps(model, opt, inputs(3))
    mlx_state = convert_optimizer_state(opt, model).state
    back = optimizer_state_to_torch(mlx_state, model, opt)
    want = opt.state_dict()
    assert back["param_groups"] == want["param_groups"]
    assert back["state"].keys() == want["state"].keys()
    for i, s in want["state"].items():
        assert back["state"][i].keys() == s.keys()
        for k, v in s.items():
            assert torch.equal(back["state"][i][k], v), (i, k)


@pytest.mark.parametrize("name", ["SGD-nesterov-wd", "Adam", "AdamW"])
def test_state_trained_in_mlx_goes_back_to_torch(name):
    """torch 3 steps, MLX 3 steps, back to torch for 2 more == torch alone for 8 steps."""
    xs = inputs(8)
    torch.manual_seed(0)
    ref = TorchNet()
    ref_opt = CONFIGS[name](ref.parameters())
    torch_steps(ref, ref_opt, xs)

    torch.manual_seed(0)
    model = TorchNet()
    opt = CONFIGS[name](model.parameters())
    torch_steps(model, opt, xs[:3])
    conv = convert_optimizer(opt, model)
    twin = mlx_twin(model)
    mlx_steps(twin, conv.optimizer, xs[3:6])

    import torch2mlx

    fresh = TorchNet()
    fresh.load_state_dict(torch2mlx.to_torch(dict(tree_flatten(twin.parameters())), model=fresh), strict=True)
    fresh_opt = CONFIGS[name](fresh.parameters())
    fresh_opt.load_state_dict(optimizer_state_to_torch(conv.optimizer, fresh, fresh_opt))
    torch_steps(fresh, fresh_opt, xs[6:])
    gap = max(
        float((a - b).abs().max()) for a, b in zip(fresh.state_dict().values(), ref.state_dict().values(), strict=True)
    )
    assert gap <= 1e-5


def test_param_groups_become_a_multi_optimizer():
    torch.manual_seed(0)
    model = TorchNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW([{"params": rest, "weight_decay": 0.0}, {"params": decay, "weight_decay": 0.1}], lr=1e-2)
    xs = inputs(6)
    torch_steps(model, opt, xs[:3])
    with pytest.raises(Torch2MLXError, match="pass the live optimizer"):
        convert_optimizer_state(opt.state_dict(), model)
    conv = convert_optimizer(opt, model)
    assert isinstance(conv.optimizer, optim.MultiOptimizer)
    assert [o.weight_decay for o in conv.optimizer.optimizers] == [0.0, 0.1]
    assert conv.state.groups == [
        ["conv.bias", "fc.bias"],
        [
            "att.key_proj.weight",
            "att.out_proj.weight",
            "att.query_proj.weight",
            "att.value_proj.weight",
            "conv.weight",
            "fc.weight",
        ],
    ]
    twin = mlx_twin(model)
    torch_steps(model, opt, xs[3:])
    mlx_steps(twin, conv.optimizer, xs[3:])
    assert max_gap(twin, model) <= 1e-5


class _LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 4, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0].pow(2).mean()


def test_summed_lstm_bias_moments_are_reported_not_guessed():
    torch.manual_seed(0)
    model = _LSTMNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch_steps(model, opt, [torch.randn(2, 5, 3) for _ in range(2)])
    with pytest.raises(Torch2MLXError, match=r"bias: rule sum combines rnn.bias_ih_l0, rnn.bias_hh_l0"):
        convert_optimizer_state(opt, model)
    with pytest.warns(InexactConversionWarning, match="rule sum combines"):
        got = convert_optimizer_state(opt, model, strict=False)
    assert not got.report.exact and "bias" not in got.state["rnn"]
    assert np.array_equal(np.array(got.state["rnn"]["Wx"]["m"]), opt.state[model.rnn.weight_ih_l0]["exp_avg"].numpy())


@pytest.mark.parametrize(
    "make, what",
    [
        (lambda p: torch.optim.Adam(p, amsgrad=True), "amsgrad"),
        (lambda p: torch.optim.RMSprop(p, centered=True), "centered"),
        (lambda p: torch.optim.RMSprop(p, momentum=0.9), "momentum"),
    ],
)
def test_updates_mlx_cannot_follow_are_reported(make, what):
    model = TorchNet()
    opt = make(model.parameters())
    torch_steps(model, opt, inputs(1))
    with pytest.raises(Torch2MLXError, match=what):
        convert_optimizer(opt, model)
    with pytest.warns(InexactConversionWarning, match=what):
        conv = convert_optimizer(opt, model, strict=False)
    assert any(what in x for x in conv.report.inexact)


def test_sgd_dampening_without_buffers_is_reported():
    model = TorchNet()
    opt = CONFIGS["SGD-dampening"](model.parameters())
    with pytest.raises(Torch2MLXError, match="damps the first step"):
        convert_optimizer(opt, model)


def test_implementation_flags_are_noted():
    model = TorchNet()
    conv = convert_optimizer(torch.optim.Adam(model.parameters(), foreach=True), model)
    assert conv.report.exact and any("foreach=True" in n for n in conv.report.notes)
    assert conv.optimizer.bias_correction is True


def test_checkpoint_optimizer_state_converts_where_torch_cannot_be_imported(tmp_path):
    """A Lightning-style checkpoint's optimizer_states, read and converted in a process without torch."""
    torch.manual_seed(0)
    model = TorchNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch_steps(model, opt, inputs(3))
    torch.save(
        {"state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()], "global_step": 3},
        tmp_path / "run.ckpt",
    )
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None          # any import of torch fails from here on
        import mlx.core as mx
        from mlx.utils import tree_flatten
        from torch2mlx.training import read_training_checkpoint, convert_optimizer_state
        from torch2mlx.training.names import from_state_dict, count_ids
        ck = read_training_checkpoint({str(tmp_path / "run.ckpt")!r})
        names = from_state_dict(list(ck.state_dict), count_ids(ck.optimizer_states[0]["param_groups"]))
        got = convert_optimizer_state(ck.optimizer_states[0], names)
        mx.savez({str(tmp_path / "state.npz")!r}, **dict(tree_flatten(got.state)))
        print(got.kind, got.step, ck.global_step)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["Adam", "3", "3"]
    # Inferred rules: the conv moment is transposed as the stream would transpose its weight; the
    # packed attention projection keeps torch's name (no model, no split), exactly as its weight would.
    live = dict(tree_flatten(convert_optimizer_state(opt, list(dict(model.named_parameters()))).state))
    saved = dict(np.load(tmp_path / "state.npz"))
    assert saved.keys() == live.keys() and "att.in_proj_weight.m" in saved
    for k in live:
        assert np.array_equal(saved[k], np.array(live[k])), k
    assert saved["conv.weight.v"].shape == (3, 3, 3, 2)


def test_parameters_never_stepped_start_from_zero_in_mlx_too():
    """A parameter without torch state (it got no gradient yet) gets none in MLX; the others convert."""
    unused = nn.Linear(3, 3)
    model = TorchNet()
    opt = torch.optim.Adam(list(model.parameters()) + list(unused.parameters()), lr=1e-2)
    torch_steps(model, opt, inputs(2))
    names = [n for n, _ in model.named_parameters()] + ["unused.weight", "unused.bias"]
    got = convert_optimizer_state(opt.state_dict(), names)
    flat = dict(tree_flatten(got.state))
    assert "conv.weight.m" in flat and not any(k.startswith("unused") for k in flat) and got.report.exact


def test_read_training_checkpoint_fields(tmp_path):
    torch.save(
        {
            "state_dict": {"a": torch.ones(2, dtype=torch.bfloat16)},
            "epoch": 4,
            "global_step": 40,
            "hyper_parameters": {"hidden": 8},
            "optimizer_states": [{"state": {}, "param_groups": []}],
            "lr_schedulers": [{"last_epoch": 3}],
        },
        tmp_path / "x.ckpt",
    )
    ck = read_training_checkpoint(tmp_path / "x.ckpt")
    assert (ck.epoch, ck.global_step, ck.hyper_parameters) == (4, 40, {"hidden": 8})
    assert ck.lr_schedulers == [{"last_epoch": 3}] and ck.optimizer_states[0]["param_groups"] == []
    a = ck.state_dict["a"]
    assert (
        a.dtype.name == "bfloat16"
        and a.to_mlx().dtype == mx.bfloat16
        and a.to_torch().equal(torch.ones(2, dtype=torch.bfloat16))
    )
    with pytest.raises(Torch2MLXError, match="no such file"):
        read_training_checkpoint(tmp_path / "missing.ckpt")


def test_unknown_param_group_keys_are_inexact_not_notes():
    model = TorchNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sd = opt.state_dict()
    sd["param_groups"][0]["trust_ratio"] = 0.02  # e.g. a LARS-style subclass's own hyper-parameter
    with pytest.raises(Torch2MLXError, match="trust_ratio=0.02 is not known"):
        convert_optimizer(sd, model, kind="SGD")
