"""The recipes reduce the loss on synthetic data, and LoRA merges back into the torch model exactly.

The examples run in quick mode (seconds); the recipe functions are checked directly too.
"""

from __future__ import annotations

import importlib

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from test_examples import examples_on_path  # noqa: F401  (puts examples/ on sys.path for this module)

from torch2mlx.errors import Torch2MLXError
from torch2mlx.recipes import LoRALinear, apply_lora, finetune_classifier, merge_lora


def test_finetune_classifier_example_reduces_loss():
    out = importlib.import_module("finetune_classifier").main(["--quick", "--json"])
    assert out["converted_max_diff"] <= 1e-5
    assert out["loss_after_head"] < 0.5 * out["loss_before"]
    assert out["loss_after_all"] < out["loss_before"]
    assert out["head_parameters"] == 32 * 4 + 4 and out["all_parameters"] > out["head_parameters"]


@pytest.mark.slow
def test_lora_example_reduces_loss_and_merges_back_to_torch():
    out = importlib.import_module("lora_finetune").main(["--quick", "--json"])
    assert out["loss_after"] < 0.5 * out["loss_before"]
    assert out["merged_projections"] == 2 * 4  # 2 layers x query/key/value/out
    assert out["merge_max_diff"] <= 1e-5 and out["torch_max_diff"] <= 1e-4


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.MultiHeadAttention(8, 2, bias=True)
        self.head = nn.Linear(8, 3)

    def __call__(self, x):
        return self.head(self.attention(x, x, x).mean(1))


def test_lora_starts_at_the_base_model_and_trains_only_adapters():
    mx.random.seed(0)
    model = Attn()
    x = mx.random.normal((4, 5, 8))
    base = np.array(model(x))
    from mlx.utils import tree_flatten

    before = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    assert apply_lora(model, rank=2) == 4
    assert np.array_equal(np.array(model(x)), base)  # B = 0: the converted outputs, exactly
    model.freeze()
    for _, m in model.named_modules():
        if isinstance(m, LoRALinear):
            m.unfreeze(recurse=False, keys=["lora_a", "lora_b"])
    labels = np.array([0, 1, 2, 1])
    data = [(np.array(x), labels)] * 8
    res = finetune_classifier(model, data, epochs=5, learning_rate=1e-2, weight_decay=0.0)
    assert res.loss_after < res.loss_before and res.trainable == 4 * 2 * (8 + 8)
    adapted = np.array(model(x))
    merge_lora(model)
    after = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    assert after.keys() == before.keys()  # plain Linear layers again
    assert np.array_equal(after["head.weight"], before["head.weight"])
    assert not np.array_equal(after["attention.query_proj.weight"], before["attention.query_proj.weight"])
    assert np.abs(np.array(model(x)) - adapted).max() <= 1e-6 * np.abs(adapted).max()  # float32 rounding


def test_recipe_errors():
    with pytest.raises(Torch2MLXError, match="no nn.Linear named"):
        apply_lora(nn.Sequential(nn.ReLU()))
    with pytest.raises(Torch2MLXError, match="rank 9"):
        LoRALinear(nn.Linear(4, 4), rank=9)
    with pytest.raises(Torch2MLXError, match="no submodule 'missing'"):
        finetune_classifier(Attn(), [], trainable=["missing"])
