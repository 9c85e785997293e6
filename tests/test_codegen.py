"""torch2mlx.generate: MLX source from torch models. For fx-traceable models the generated module, with weights
from torch2mlx.convert loaded strictly, computes what torch computes (fp32, 1e-5); where tracing fails the
source says what is left and why."""

from __future__ import annotations

import re

import mlx.core as mx
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from codegen_helpers import TOL, imports, load, max_error, randomize_stats, to_mx

import torch2mlx
from torch2mlx.errors import Torch2MLXError

torch.manual_seed(0)


# ------------------------------------------------------------------ the five acceptance models


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 5)
        )

    def forward(self, x):
        return F.log_softmax(self.net(x), dim=-1)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc(x.view(x.size(0), -1))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 16, 1))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32, 1))
        self.layer3 = nn.Sequential(BasicBlock(32, 64, 2), BasicBlock(64, 64, 1))
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class TransformerClassifier(nn.Module):
    def __init__(self, vocab=50, d=32, heads=4, layers=2, classes=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, 16, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, 64, dropout=0.1, batch_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, ids):
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]
        return self.head(self.encoder(x).mean(dim=1))


class CausalSelfAttention(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.n_head, self.n_embd = h, d

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class GPTBlock(nn.Module):
    """A GPT-2 decoder block in plain torch (nanoGPT's)."""

    def __init__(self, d=32, h=4):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, h)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.ModuleDict(
            dict(
                c_fc=nn.Linear(d, 4 * d),
                act=nn.GELU(approximate="tanh"),
                c_proj=nn.Linear(4 * d, d),
                dropout=nn.Dropout(0.1),
            )
        )

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        m = self.mlp
        return x + m.dropout(m.c_proj(m.act(m.c_fc(self.ln_2(x)))))


MODELS = {
    "MLP": (MLP, lambda: (torch.randn(4, 12),)),
    "small CNN": (SmallCNN, lambda: (torch.randn(2, 3, 16, 16),)),
    "ResNet-style CNN": (ResNetCNN, lambda: (torch.randn(2, 3, 16, 16),)),
    "TransformerEncoder classifier": (TransformerClassifier, lambda: (torch.randint(0, 50, (3, 10)),)),
    "GPT-2 block": (GPTBlock, lambda: (torch.randn(2, 7, 32),)),
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.slow
def test_generated_module_loads_converted_weights_and_matches_torch(tmp_path, name):
    cls, inputs = MODELS[name]
    torch.manual_seed(1)
    model = randomize_stats(cls())
    result = torch2mlx.generate(model)
    assert result.traced and result.coverage == 1.0 and result.mismatches == []
    assert imports(result.source) <= {"mlx.core", "mlx.nn", "math"}
    assert max(len(line) for line in result.source.splitlines()) <= 120
    compile(result.source, "model_mlx.py", "exec")
    mlx_model = load(result, model, tmp_path)
    x = inputs()
    with torch.no_grad():
        want = model(*x)
    assert max_error(mlx_model(*to_mx(x)), want) <= TOL


def _call_body(source: str, cls: str) -> str:
    return source.split(f"class {cls}(")[1].split("def __call__")[1].split("\nclass ")[0]


def test_channels_last_runs_convert_once_at_each_end():
    """conv -> relu -> pool -> conv -> relu -> pool in one channels-last run: one _cl before, one _cf after
    (the view needs torch's layout), and the image input and logits keep torch's layout."""
    result = torch2mlx.generate(SmallCNN())
    body = _call_body(result.source, "SmallCNN")
    assert body.count("_cl(") == 1 and body.count("_cf(") == 1
    assert body.index("_cf(") > body.index("self.pool(relu_1)") and body.index("_cf(") < body.index("mx.reshape")


def test_instances_differing_in_numbers_share_a_class_with_constructor_arguments():
    result = torch2mlx.generate(ResNetCNN())
    blocks = [c for c in result.classes if c.torch.endswith("BasicBlock")]
    # three shapes of block: identity shortcut, projected shortcut; six instances
    assert len(blocks) == 2 and {tuple(b.params) for b in blocks} == {("in_channels",), ("in_channels", "out_channels")}
    assert "BasicBlock2(in_channels=16, out_channels=32)" in result.source
    assert "self.layer1 = [BasicBlock(in_channels=16) for _ in range(2)]" in result.source


def test_a_bare_sequential_root_is_wrapped_and_loads_under_layers(tmp_path):
    seq = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    randomize_stats(seq)
    result = torch2mlx.generate(seq)
    assert result.prefix == "layers." and result.traced
    model = load(result, seq, tmp_path)
    x = torch.randn(2, 4, 8)
    with torch.no_grad():
        assert max_error(model(mx.array(x.numpy())), seq(x)) <= TOL


# ------------------------------------------------------------------ what cannot be traced or translated


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.gate = nn.Linear(4, 1)

    def forward(self, x, scale: float = 2.0):
        if self.gate(x).mean().item() > 0:
            return self.proj(x) * scale
        return x


def test_data_dependent_forward_is_a_stub_with_its_signature_todo_and_blockers(tmp_path):
    model = DataDependent()
    result = torch2mlx.generate(model)
    assert not result.traced and result.coverage == 1.0
    (root,) = result.classes
    assert root.status == "stub"
    src = result.source
    assert "def __call__(self, x, scale=2.0):" in src
    assert "TODO(torch2mlx): port DataDependent.forward by hand" in src
    assert "data-dependent control flow" in src or ".item()" in src
    assert "analyzer: data_dependent" in src and ".item() steers control flow" in src
    assert "raise NotImplementedError" in src
    # the constructor is still whole: the weights load
    mlx_model = load(result, model, tmp_path)
    with pytest.raises(NotImplementedError):
        mlx_model(mx.zeros((1, 4)))


class Unfolding(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(27, 4)

    def forward(self, x):
        patches = F.unfold(x, 3)
        return self.proj(patches.transpose(1, 2))


def test_an_op_without_translation_is_a_todo_call_in_an_otherwise_translated_body():
    result = torch2mlx.generate(Unfolding())
    (root,) = result.classes
    assert root.status == "partial" and not result.traced
    assert "_todo('torch.nn.functional.unfold'" in result.source
    assert any("unfold" in t for t in result.untranslated)
    assert "self.proj(" in result.source  # the rest is translated
    with pytest.raises(NotImplementedError, match="unfold"):
        result.load()["Unfolding"]()(mx.zeros((1, 3, 5, 5)))


class ShapeBranch(nn.Module):
    """Branches on a size: fx alone cannot trace it; with example inputs the branch is the example's."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        if x.shape[-1] != 8:
            raise ValueError("expected 8 features")
        b, t, _ = x.shape
        return self.proj(x).reshape(b, t * 8)


def test_shape_branches_trace_with_example_inputs_and_are_recorded(tmp_path):
    model = ShapeBranch()
    assert not torch2mlx.generate(model).traced
    result = torch2mlx.generate(model, example_inputs=torch.randn(2, 3, 8))
    assert result.traced
    assert "shape-dependent branches as they took them" in result.source and "x.shape[-1] != 8" in result.source
    mlx_model = load(result, model, tmp_path)
    x = torch.randn(5, 2, 8)  # other leading sizes than the example: sizes stay symbolic
    with torch.no_grad():
        assert max_error(mlx_model(mx.array(x.numpy())), model(x)) <= TOL


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)

    def forward(self, x):
        h = self.a(x)
        h.mul_(2.0)
        h[:, 0] = 0.0
        return torch.cat([h, x.masked_fill(x > 0, -1.0)], dim=-1).sum(dim=-1, keepdim=True)


def test_in_place_changes_are_rebound_so_later_uses_see_them(tmp_path):
    model = InPlace()
    result = torch2mlx.generate(model)
    assert result.traced
    x = torch.randn(3, 6)
    with torch.no_grad():
        assert max_error(load(result, model, tmp_path)(mx.array(x.numpy())), model(x)) <= TOL


def test_generate_refuses_what_is_no_model():
    with pytest.raises(Torch2MLXError, match="cannot generate code"):
        torch2mlx.generate(42)
    with pytest.raises(Torch2MLXError):
        torch2mlx.generate("no_such_pkg.mod:Net")


def test_write_puts_the_source_in_a_file(tmp_path):
    result = torch2mlx.generate(MLP())
    path = result.write(tmp_path / "mlp_mlx.py")
    assert open(path).read() == result.source
    with pytest.raises(Torch2MLXError, match="exists"):
        result.write(path, overwrite=False)


# ------------------------------------------------------------------ the op table behind the translation


def test_translations_take_mlx_names_and_renames_from_the_op_table():
    from torch2mlx.codegen import fx_ops
    from torch2mlx.core import ops

    keys = {op.key for op in fx_ops.FUNCTIONS.values()}
    table = {o.torch: o for o in ops.OPS}
    # every translated torch function is in the op table but torch.diff (MLX has no diff: a helper)
    assert keys - set(table) == {"torch.diff"}
    renamed = [k for k in keys if k in table and table[k].args]
    assert len(renamed) >= 36


OPS_MODEL_CASES = [
    (lambda x: torch.sum(x, dim=1, keepdim=True), "mx.sum(x, axis=1, keepdims=True)"),
    (lambda x: x.view(x.size(0), -1), "mx.reshape("),
    (lambda x: torch.transpose(x, 1, 2), "mx.swapaxes(x, 1, 2)"),
    (lambda x: x.permute(0, 2, 1), "mx.transpose(x, (0, 2, 1))"),
    (lambda x: torch.cat([x, x], dim=-1), "mx.concatenate([x, x], axis=-1)"),
    (lambda x: x.unsqueeze(1).squeeze(1), "mx.expand_dims(x, 1)"),
    (lambda x: torch.clamp(x, min=-0.5, max=0.5), "mx.clip(x, -0.5, 0.5)"),
    (lambda x: F.softmax(x, dim=-1), "mx.softmax(x, axis=-1)"),
    (lambda x: x.flatten(1), "mx.flatten(x, 1)"),
    (lambda x: torch.tril(x, diagonal=-1), "mx.tril(x, k=-1)"),
    (lambda x: x.var(dim=1), "mx.var(x, axis=1, ddof=1)"),
    (lambda x: torch.max(x, dim=1)[0] + x.amax(dim=2).sum(), "_max(x, 1)"),
    (lambda x: x.split(2, dim=1)[1], "_split(x, 2, 1)"),
    (lambda x: x.chunk(2, dim=-1)[0], "_chunk(x, 2, -1)"),
    (lambda x: x.expand(3, -1, -1) * 2, "_expand(x, (3, -1, -1))"),
    (lambda x: F.gelu(x, approximate="tanh"), "nn.gelu_approx(x)"),
    (lambda x: torch.where(x > 0, x, torch.zeros_like(x)), "mx.where("),
    (lambda x: x.float().to(torch.float16).type_as(x), ".astype(mx.float16)"),
    (lambda x: torch.gather(x, 2, torch.zeros(x.shape, dtype=torch.long)), "mx.take_along_axis("),
    (lambda x: F.pad(x, (1, 2)), "_pad(x, (1, 2), 'constant')"),
    (lambda x: torch.topk(x, 2, dim=-1)[1].float(), "_topk(x, 2, axis=-1)"),
    (lambda x: torch.cumsum(x, dim=1), "mx.cumsum(x, axis=1)"),
    (lambda x: torch.repeat_interleave(x, 2, dim=1), "mx.repeat(x, 2, axis=1)"),
]


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("fn,expected", OPS_MODEL_CASES, ids=[e for _, e in OPS_MODEL_CASES])
def test_op_translations_compute_what_torch_computes(fn, expected):
    model = _Lambda(fn)
    result = torch2mlx.generate(model)
    assert result.traced, result.untranslated
    assert expected in result.source
    x = torch.randn(1, 4, 6)
    got = result.load()["_Lambda"]()(mx.array(x.numpy()))
    assert max_error(got, fn(x)) <= TOL


def test_scaled_dot_product_attention_with_masks_matches_torch():
    def attend(q, mask):
        k = torch.flip(q, dims=(2,))
        causal = F.scaled_dot_product_attention(q, k, q, is_causal=True)
        bool_mask = F.scaled_dot_product_attention(q, k, q, attn_mask=mask)
        additive = F.scaled_dot_product_attention(q, k, q, attn_mask=torch.where(mask, 0.0, -1e9), scale=0.3)
        return causal + bool_mask + additive

    class Attend(nn.Module):
        def forward(self, q, mask):
            return attend(q, mask)

    result = torch2mlx.generate(Attend())
    assert (
        result.traced and "mx.fast.scaled_dot_product_attention" in result.source and 'mask="causal"' in result.source
    )
    q = torch.randn(2, 3, 5, 8)
    mask = torch.rand(5, 5) > 0.3
    mask[:, 0] = True  # no row fully masked (torch and MLX differ there)
    got = result.load()["Attend"]()(mx.array(q.numpy()), mx.array(mask.numpy()))
    assert max_error(got, attend(q, mask)) <= TOL


# ------------------------------------------------------------------ every registry layer as a generated module


def _layer_cases():
    import test_registry_layers as reg

    return reg.CASES


class _Case(nn.Module):
    """A registry layer called as its test case calls it (``m(q, kv, kv, need_weights=False)[0]``, ...)."""

    def __init__(self, layer, call):
        super().__init__()
        self.layer = layer
        self.call = call

    def forward(self, x0, x1=None, x2=None):
        return self.call(self.layer, *[x for x in (x0, x1, x2) if x is not None])


@pytest.mark.parametrize("name", list(_layer_cases()))
@pytest.mark.slow
def test_every_registry_layer_generates_a_module_that_matches_torch(tmp_path, name):
    """Each registry layer in a module that calls it: the generated constructor takes the converted weights
    strictly and the call computes torch's call, in torch's layout (channels first)."""
    case = _layer_cases()[name]
    model = _Case(randomize_stats(case.torch()), case.call_t)
    inputs = tuple(torch.from_numpy(a) for a in case.inputs())
    result = torch2mlx.generate(model, example_inputs=inputs)
    assert result.mismatches == [] and result.coverage == 1.0 and result.traced, result.untranslated
    with torch.no_grad():
        want = model(*inputs)
    got = load(result, model, tmp_path)(*to_mx(inputs))
    assert max_error(got, want) <= TOL


def test_multihead_attention_helper_keeps_torchs_masks_and_weights(tmp_path):
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[0, -2:] = True
    causal = torch.triu(torch.ones(5, 7, dtype=torch.bool), 1)

    class Attend(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, q, kv, pad, causal):
            return self.mha(q, kv, kv, key_padding_mask=pad, attn_mask=causal)

    model = Attend()
    result = torch2mlx.generate(model)
    with torch.no_grad():
        want = model(q, kv, pad, causal)
    got = load(result, model, tmp_path)(*to_mx([q, kv, pad, causal]))
    assert max_error(got, want) <= TOL


# ------------------------------------------------------------------ the CLI


def test_cli_codegen_writes_a_module_for_a_class_and_refuses_to_overwrite(tmp_path, capsys):
    from torch2mlx.cli import main

    out = tmp_path / "mlp_mlx.py"
    assert main(["codegen", "test_codegen:MLP", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "coverage:   100.0%" in err and "traced and translated" in err
    ns: dict = {}
    exec(out.read_text(), ns)
    assert sorted(k for k, _ in __import__("mlx.utils").utils.tree_flatten(ns["MLP"]().parameters())) == sorted(
        t.mlx for t in torch2mlx.analyze(MLP()).tensors
    )
    assert main(["codegen", "test_codegen:MLP", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "exists" in err
    assert main(["codegen", "test_codegen:MLP", "-o", str(out), "--overwrite", "--class-name", "Net"]) == 0
    assert "class Net(nn.Module):" in out.read_text()


def test_cli_codegen_with_kwargs_and_input_shapes_prints_to_stdout(capsys):
    from torch2mlx.cli import main

    assert (
        main(
            ["codegen", "torch.nn:Linear", "--kwargs", '{"in_features": 4, "out_features": 2}', "--input-shape", "3,4"]
        )
        == 0
    )
    out = capsys.readouterr()
    assert "nn.Linear(4, 2)" in out.out and "prefix='layers.'" in out.err


def test_cli_codegen_errors_are_one_line(capsys):
    from torch2mlx.cli import main

    assert main(["codegen", "no_such_pkg.mod:Net"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert main(["codegen", "test_codegen:MLP", "--input-shape", "a,b"]) == 1
    assert "--input-shape" in capsys.readouterr().err


# ------------------------------------------------------------------ Lightning Level 2 draft forward


def test_generate_forward_is_the_draft_call_of_the_module(tmp_path):
    from torch2mlx.codegen import generate_forward

    model = GPTBlock()
    method = generate_forward(model)
    assert method.startswith("    def __call__(self, x):") and "self.attn(" in method and "self.mlp['c_fc']" in method
    full = generate_forward(SmallCNN(), helpers=True)
    assert full.startswith("def _cf(x):") and "    def __call__(self, x):" in full
    stub = generate_forward(DataDependent())
    assert "raise NotImplementedError" in stub and "def __call__(self, x, scale=2.0):" in stub
    with pytest.raises(Torch2MLXError):
        generate_forward("not a module")


def test_generated_class_names_do_not_shadow_helpers():
    class MultiheadAttention(nn.Module):  # a model's own class named like a helper
        def __init__(self):
            super().__init__()
            self.inner = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.inner(x, x, x, need_weights=False)[0]

    result = torch2mlx.generate(MultiheadAttention())
    assert result.name == "MultiheadAttention2" and re.search(
        r"^class MultiheadAttention\(nn.Module\)", result.source, re.M
    )
    x = torch.randn(2, 3, 8)
    model = result.load()[result.name]()
    assert model(mx.array(x.numpy())).shape == (2, 3, 8)
    assert np.isfinite(np.array(model(mx.array(x.numpy())))).all()


def test_readme_example_is_what_generate_writes(tmp_path):
    """docs/codegen.md's side-by-side example: its torch model generates exactly the classes it shows, and they
    compute what torch computes."""
    import sys
    import types
    from pathlib import Path

    section = (Path(__file__).resolve().parent.parent / "docs" / "codegen.md").read_text(encoding="utf-8")
    torch_src, mlx_src = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    module = types.ModuleType("model")
    sys.modules["model"] = module
    try:
        exec(compile(torch_src, "model.py", "exec"), module.__dict__)
        net = randomize_stats(module.Net())
        result = torch2mlx.generate(net)
    finally:
        del sys.modules["model"]
    assert result.source[result.source.index("class Block(") :] == mlx_src
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert max_error(load(result, net, tmp_path)(mx.array(x.numpy())), net(x)) <= TOL


def test_single_use_names_are_inlined_but_never_across_a_change_of_their_base():
    from torch2mlx.codegen.render import inline_simple, reroll

    lines = ["a = x[0]", "x[0] = 5", "b = a + 1", "s = y.shape", "t = s[1]", "return t * 2"]
    assert inline_simple(lines) == ["a = x[0]", "x[0] = 5", "b = a + 1", "return y.shape[1] * 2"]
    calls = ["h0 = self.blocks[0](x, m)", "h1 = self.blocks[1](h0, m)", "y = h1 + x"]
    assert reroll(calls, {"self.blocks": 2}) == [
        "h1 = x",
        "for layer in self.blocks:",
        "    h1 = layer(h1, m)",
        "y = h1 + x",
    ]
    assert reroll(calls, {"self.blocks": 3}) == calls  # not the whole list: left as it is
    assert reroll(calls[:2] + ["z = h0"], {"self.blocks": 2}) == calls[:2] + ["z = h0"]  # h0 used later


def test_lightning_exposes_the_draft_forward():
    import torch2mlx.lightning as L
    from torch2mlx.codegen.lightning_forward import generate_forward

    assert L.generate_forward is generate_forward
    assert L.generate_forward(GPTBlock()).startswith("    def __call__(self, x):")
