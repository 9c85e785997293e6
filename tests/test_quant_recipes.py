"""Selection rule, mixed recipes and config block against mlx-lm's own quantize_model."""

import numpy as np
import pytest

from torch2mlx.core import quant
from torch2mlx.core.quant_recipes import (
    QuantSpec,
    Recipe,
    decide,
    is_quantizable,
    layer_location,
    mixed_recipe,
    quantization_config,
    with_quantization,
)

mx = pytest.importorskip("mlx.core")
mlx_lm_utils = pytest.importorskip("mlx_lm.utils")
from mlx.utils import tree_flatten  # noqa: E402
from mlx_lm.convert import mixed_quant_predicate_builder  # noqa: E402
from mlx_lm.models import llama  # noqa: E402


def tiny_llama(layers=16, tied=False):
    # intermediate 96: down_proj's input dim divides by 32 but not by 64.
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=128,
        num_hidden_layers=layers,
        intermediate_size=96,
        num_attention_heads=4,
        rms_norm_eps=1e-5,
        vocab_size=256,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    mx.random.seed(layers)
    return llama.Model(args)


def mlx_lm_quantize(model, group_size, bits, recipe_name=None):
    predicate = mixed_quant_predicate_builder(recipe_name, model, group_size) if recipe_name else None
    return mlx_lm_utils.quantize_model(model, {}, group_size, bits, quant_predicate=predicate)


def ours(model, recipe, with_types=True):
    """(decisions {name: spec}, config block) from names, shapes, dtypes [and module types]."""
    types = {p: type(m).__name__ for p, m in model.named_modules()}
    decisions, explicit = {}, {}
    for name, v in tree_flatten(model.parameters()):
        mtype = types.get(name.rsplit(".", 1)[0]) if with_types else None
        spec, is_entry = decide(name, tuple(v.shape), str(v.dtype).split(".")[-1], recipe, mtype)
        if spec:
            decisions[name] = spec
            if is_entry:
                explicit[name[: -len(".weight")]] = spec
    return decisions, quantization_config(recipe, explicit)


def quantized_modules(qmodel):
    return {p: QuantSpec(m.group_size, m.bits, m.mode) for p, m in qmodel.named_modules() if hasattr(m, "bits")}


CASES = [  # (layers, tied, group, bits, recipe)
    (16, False, 64, 4, None),
    (8, True, 32, 3, None),
    (16, False, 64, None, "mixed_3_6"),
    (16, True, 32, 2, "mixed_2_6"),
    (24, False, 64, None, "mixed_4_6"),
    (9, False, 128, None, "mixed_3_4"),
]


@pytest.mark.parametrize("layers,tied,gs,bits,name", CASES)
def test_decisions_and_config_match_mlx_lm(layers, tied, gs, bits, name):
    model = tiny_llama(layers, tied)
    paths = [p for p, _ in model.named_modules()]
    if name:
        recipe = mixed_recipe(name, len(model.layers), layer_location(paths), gs, bits)
    else:
        recipe = Recipe(QuantSpec(gs, bits))
    decisions, block = ours(model, recipe)
    heuristic, _ = ours(model, recipe, with_types=False)
    originals = {k: np.array(v) for k, v in tree_flatten(model.parameters())}

    qmodel, config = mlx_lm_quantize(model, gs, bits, name)
    expected = quantized_modules(qmodel)
    assert {n[: -len(".weight")]: s for n, s in decisions.items()} == expected
    assert heuristic == decisions
    assert config["quantization"] == block
    assert with_quantization({"model_type": "llama"}, block)["quantization_config"] == config["quantization_config"]

    # And the weights mlx-lm stores are exactly ours.
    qparams = dict(tree_flatten(qmodel.parameters()))
    for n, spec in decisions.items():
        p = n[: -len(".weight")]
        packed, scales, biases = quant.quantize(originals[n], spec.bits, spec.group_size, "float32")
        assert (packed == np.array(qparams[p + ".weight"])).all()
        assert (scales == np.array(qparams[p + ".scales"])).all()
        assert (biases == np.array(qparams[p + ".biases"])).all()


def test_selection_rule_without_a_model():
    assert is_quantizable("model.layers.0.mlp.up_proj.weight", (11008, 4096), "BF16")
    assert is_quantizable("model.embed_tokens.weight", (32000, 4096), "bfloat16")
    assert not is_quantizable("model.layers.0.mlp.up_proj.bias", (11008,), "BF16")
    assert not is_quantizable("model.norm.weight", (4096,), "BF16")
    assert not is_quantizable("x.weight", (64, 100), "F32")  # 100 % 64
    assert is_quantizable("x.weight", (64, 96), "F32", group_size=32)
    assert not is_quantizable("x.weight", (64, 128), "I64")
    assert not is_quantizable("conv.weight", (64, 3, 128), "F32")  # 3-D: a conv?
    assert is_quantizable("mlp.switch_mlp.up_proj.weight", (8, 64, 128), "F32", "SwitchLinear")
    assert not is_quantizable("conv.weight", (64, 3, 128), "F32", "Conv1d")
    assert is_quantizable("h.0.attn.c_attn.weight", (768, 2304), "F32", "Conv1D")  # HF GPT-2 Conv1D


def test_per_layer_false_keeps_a_layer():
    recipe = Recipe(QuantSpec(64, 4), per_layer=lambda p: not p.endswith("mlp.gate"))
    assert decide("layers.0.mlp.gate.weight", (8, 128), "F32", recipe) == (None, False)
    assert decide("layers.0.mlp.up.weight", (8, 128), "F32", recipe) == (QuantSpec(64, 4), False)
    eight = Recipe(QuantSpec(64, 4), per_layer=lambda p: QuantSpec(128, 8) if p == "lm_head" else True)
    assert decide("lm_head.weight", (8, 64), "F32", eight) == (None, False)  # 64 % 128
    assert decide("lm_head.weight", (8, 256), "F32", eight) == (QuantSpec(128, 8), True)


def test_mixed_recipe_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown recipe"):
        mixed_recipe("mixed_1_9", 4, 2)
    with pytest.raises(ValueError, match="expected keys"):
        layer_location(["model.layers.0.mlp.up_proj"])


def test_per_expert_weights_are_named_as_mlx_lm_stacks_them():
    from torch2mlx.core.quant_recipes import loaded_module_path

    assert (
        loaded_module_path("model.layers.3.block_sparse_moe.experts.7.w2")
        == "model.layers.3.block_sparse_moe.switch_mlp.down_proj"
    )
    assert loaded_module_path("model.layers.0.mlp.experts.12.gate_proj") == "model.layers.0.mlp.switch_mlp.gate_proj"
    assert loaded_module_path("model.layers.0.mlp.down_proj") == "model.layers.0.mlp.down_proj"
    # The recipe sees the stacked module: a Mixtral w2 in a "more bits" layer gets the high bits.
    recipe = mixed_recipe("mixed_3_6", num_layers=8, location=2)
    spec, entry = decide("model.layers.0.block_sparse_moe.experts.1.w2.weight", (64, 128), "float32", recipe)
    assert entry and spec.bits == 6
    spec, _ = decide("model.layers.0.block_sparse_moe.experts.1.w1.weight", (128, 64), "float32", recipe)
    assert spec.bits == 3
