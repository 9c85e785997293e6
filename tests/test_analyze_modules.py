"""The analyzer on live modules and class paths: blockers found by AST in forward code, raw parameters,
unsupported layers, weight norm in both forms, wrappers, and MLX names checked against MLX's own modules."""

import inspect

import mlx.core as mx
import mlx.nn as mnn
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mlx.utils import tree_flatten

import torch2mlx
from torch2mlx.errors import Torch2MLXError


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * x

    @staticmethod
    def backward(ctx, g):
        return g


class Blocky(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        n = 0
        n += 1  # a counter, not a tensor
        seen = ()
        seen += (x,)  # a tuple, not a tensor
        h = self.lin(x)
        h += x
        h.add_(1.0)
        if h.sum().item() > 0:
            h = h * 2
        values = h.tolist()
        positive = bool(h.min().item() > 0)
        while positive:
            positive = False
        h = _Square.apply(h)
        if torch.cuda.is_available():
            h = h.cuda()
        self.lin.register_forward_hook(lambda *a: None)
        return F.relu(h, inplace=True), values, n, seen


class Clean(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)
        self.scale = 2.0

    def forward(self, x):
        count = 0
        for _ in range(2):
            count += 1
        return self.b(torch.relu(self.a(x))) * self.scale * count


def test_blockers_are_found_by_what_the_code_does():
    report = torch2mlx.analyze(Blocky())
    kinds = sorted((b.kind, b.detail.split(":")[0]) for b in report.blockers)
    assert kinds == [
        ("autograd_function", "custom autograd function _Square"),
        ("data_dependent", ".item() steers control flow"),
        ("data_dependent", ".item() steers control flow"),
        ("data_dependent", ".tolist() copies to the host"),
        ("device", ".cuda()"),
        ("device", "uses torch.cuda"),
        ("hook", "registers a hook (.register_forward_hook)"),
        ("inplace", "augmented assignment (in place on a tensor)"),
        ("inplace", "in-place tensor method .add_()"),
        ("inplace", "inplace=True"),
    ]
    lines, first = inspect.getsourcelines(Blocky.forward)
    at = {
        first + i
        for i, line in enumerate(lines)
        for snippet in (
            "h += x",
            "h.add_(",
            ".item()",
            ".tolist()",
            "_Square.apply",
            "torch.cuda",
            "h.cuda()",
            "register_forward_hook",
            "inplace=True",
        )
        if snippet in line
    }
    assert {int(b.where.rsplit(":", 1)[1]) for b in report.blockers} == at
    (file,) = {b.where.rsplit(":", 1)[0] for b in report.blockers}
    assert file.endswith("tests/test_analyze_modules.py")
    assert report.coverage == 1.0 and report.unsupported == {}


def test_clean_forward_has_no_blockers_and_live_hooks_are_reported():
    model = Clean()
    assert torch2mlx.analyze(model).blockers == []
    model.b.register_forward_hook(lambda *a: None)
    (hook,) = torch2mlx.analyze(model).blockers
    assert (hook.kind, hook.module, hook.where) == ("hook", "torch.nn.Linear", "b")


class RawParams(nn.Module):
    """A class token, a layer scale and a kernel used through the functional API."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, 6))
        self.gamma = nn.Parameter(torch.randn(6))
        self.kernel = nn.Parameter(torch.randn(6, 3, 3, 3))
        self.register_buffer("position_bias", torch.randn(5))

    def forward(self, x):
        y = F.conv2d(x, self.kernel, padding=1) * self.gamma[:, None, None]
        return y, self.cls_token, self.position_bias


def test_raw_parameters_are_handled_and_functional_conv_kernels_get_the_conv_rule():
    model = RawParams()
    report = torch2mlx.analyze(model)
    assert report.coverage == 1.0 and report.parameters == 6 + 6 + 162
    by = {t.mlx: t for t in report.tensors}
    assert {n: (t.rule, t.rule_source) for n, t in by.items()} == {
        "cls_token": ("identity", "model"),
        "gamma": ("identity", "model"),
        "kernel": ("conv2d", "model"),
        "position_bias": ("identity", "model"),
    }
    kernel = torch2mlx.core.rules.get("conv2d").forward([model.kernel.detach().numpy()])
    x = np.random.default_rng(0).standard_normal((1, 3, 5, 5)).astype(np.float32)
    want = F.conv2d(torch.from_numpy(x), model.kernel, padding=1).detach().numpy()
    got = np.array(mx.conv2d(mx.array(np.moveaxis(x, 1, -1)), mx.array(kernel), padding=1))
    np.testing.assert_allclose(got, np.moveaxis(want, 1, -1), rtol=1e-4, atol=1e-5)


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 4)
        self.rnn = nn.LSTM(4, 3, bidirectional=True)
        self.head = nn.Linear(6, 2)
        self.ortho = nn.utils.parametrizations.orthogonal(nn.Linear(3, 3))


def test_unsupported_layers_count_against_coverage_and_are_blockers():
    report = torch2mlx.analyze(Mixed())
    assert report.unsupported == {"torch.nn.EmbeddingBag": 1, "torch.nn.LSTM": 1, "torch.nn.Linear": 1}
    covered = 6 * 2 + 2  # only the head maps
    assert report.parameters == 40 + 2 * (12 * 4 + 12 * 3 + 24) + covered + 9 + 3
    assert report.coverage == pytest.approx(covered / report.parameters)
    reasons = {b.where: b.detail for b in report.blockers if b.kind == "layer"}
    assert "bidirectional" in reasons["rnn"] and "parametrization" in reasons["ortho"]
    assert "bagged" in reasons["bag"]
    names = {t.mlx for t in report.tensors if t.sources[0].startswith("rnn.")}
    assert names == {"rnn.Wx", "rnn.Wh", "rnn.bias", "rnn.reverse.Wx", "rnn.reverse.Wh", "rnn.reverse.bias"}
    assert {t.rule_source for t in report.tensors if t.sources[0].startswith(("bag.", "ortho.param"))} == {"default"}


def test_weight_norm_in_both_forms():
    new = nn.utils.parametrizations.weight_norm(nn.Conv1d(3, 4, 5), dim=0)
    with pytest.warns(FutureWarning):
        old = nn.utils.weight_norm(nn.Conv1d(3, 4, 5))
    for module, g, v in (
        (new, "parametrizations.weight.original0", "parametrizations.weight.original1"),
        (old, "weight_g", "weight_v"),
    ):
        report = torch2mlx.analyze(module)
        (t,) = [t for t in report.tensors if t.mlx == "weight"]
        assert (t.sources, t.rule, t.args, t.shape) == (
            (g, v),
            "weight_norm",
            {"dim": 0, "layout": "conv1d"},
            (4, 5, 3),
        )
        assert report.blockers == [] and report.coverage == 1.0
        state = {k: v.detach().numpy() for k, v in module.state_dict().items()}
        got = torch2mlx.core.rules.get("weight_norm").forward([state[g], state[v]], t.args)
        np.testing.assert_allclose(got, module.weight.detach().permute(0, 2, 1).numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_wrappers_are_unwrapped():
    inner = Clean()
    for wrapped in (torch.compile(inner), nn.DataParallel(inner)):
        report = torch2mlx.analyze(wrapped)
        assert report.model == "Clean" and {t.mlx for t in report.tensors} == {
            "a.weight",
            "a.bias",
            "b.weight",
            "b.bias",
        }
        assert any("unwrapped" in n for n in report.notes)


def test_class_path_names_match_mlx_transformer():
    kwargs = {"d_model": 16, "nhead": 2, "num_encoder_layers": 2, "num_decoder_layers": 1, "dim_feedforward": 24}
    report = torch2mlx.analyze("torch.nn:Transformer", model_kwargs=kwargs)
    assert report.how == "class" and report.coverage == 1.0
    ours = {t.mlx: t.shape for t in report.tensors}
    theirs = {k: v.shape for k, v in tree_flatten(mnn.Transformer(16, 2, 2, 1, 24).parameters())}
    # MLX builds its attention without biases; every other name and shape is MLX's own.
    extra = {n for n in ours if n not in theirs}
    assert extra and all(n.rsplit(".", 2)[-2:][1] == "bias" and "_proj" in n for n in extra)
    assert {n: ours[n] for n in theirs} == {n: tuple(s) for n, s in theirs.items()}


def test_class_path_errors_are_one_line_user_errors():
    with pytest.raises(Torch2MLXError, match="cannot import"):
        torch2mlx.analyze("no_such_pkg.mod:Net")
    with pytest.raises(Torch2MLXError, match="has no 'Nope'"):
        torch2mlx.analyze("torch.nn:Nope")
    with pytest.raises(Torch2MLXError, match="not a torch.nn.Module"):
        torch2mlx.analyze("torch:Tensor")
    with pytest.raises(Torch2MLXError, match="failed on the meta device"):
        torch2mlx.analyze("torch.nn:Linear", model_kwargs={"wrong": 1})
    with pytest.raises(Torch2MLXError, match="JSON"):
        torch2mlx.analyze("torch.nn:Linear", model_kwargs="{not json")
