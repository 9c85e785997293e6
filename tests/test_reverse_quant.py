"""Quantized MLX checkpoints back to torch: dequantized as ``mx.dequantize`` does, block by block.

Oracles: ``mx.dequantize`` for the values (bit for bit), torch for the layouts,
and for an mlx-lm checkpoint mlx-lm itself (its own ``convert`` makes it, its
own model gives the logits the torch model must reproduce).
"""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import assert_no_index, assert_one_error, convert, read_json, run_main, to_torch
from reverse_helpers import read_torch_output

TORCH_DT = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Half the relative spacing of each dtype's values, doubled for slack.
EPS = {"bfloat16": 2.0**-8, "float16": 2.0**-11, "float32": 2.0**-23}


def _dequantized(mlx_dir, base: str, bits: int, group_size: int) -> torch.Tensor:
    """mx.dequantize of the stored triple, as a torch tensor of the scales' dtype."""
    arrays = {}
    for f in set(read_json(mlx_dir / "model.safetensors.index.json")["weight_map"].values()):
        arrays.update(mx.load(str(mlx_dir / f)))
    w = mx.dequantize(
        arrays[base + ".weight"], arrays[base + ".scales"], arrays[base + ".biases"], group_size=group_size, bits=bits
    )
    if w.dtype == mx.bfloat16:
        return torch.from_numpy(np.array(w.view(mx.int16))).view(torch.bfloat16)
    return torch.from_numpy(np.array(w))


def _bound(mlx_dir, base: str, bits: int, group_size: int, dt: str, w: torch.Tensor) -> torch.Tensor:
    """The affine quantizer's error bound for each element of the MLX-layout weight ``w``.

    Codes 0..2**bits-1 reach the grid ``bias + q * scale``; a value is within half a
    step of it, or, when MLX's snapping of the grid to zero leaves it outside, at its
    distance from the grid's end plus half a step. Storing scale, bias and the result
    in ``dt`` adds a few roundings of ``dt``.
    """
    arrays = {}
    for f in set(read_json(mlx_dir / "model.safetensors.index.json")["weight_map"].values()):
        arrays.update(mx.load(str(mlx_dir / f)))
    s, b = (
        torch.from_numpy(np.array(arrays[base + k].astype(mx.float32))).double().repeat_interleave(group_size, dim=-1)
        for k in (".scales", ".biases")
    )
    ends = torch.stack([b, b + (2**bits - 1) * s])
    w = w.double()
    outside = (ends.min(0).values - w).clamp(min=0) + (w - ends.max(0).values).clamp(min=0)
    return outside + 0.5 * s.abs() + EPS[dt] * (2**bits * s.abs() + 2 * b.abs() + w.abs())


CASES = [
    (2, 32, "bfloat16"),
    (3, 64, "float16"),
    (4, 64, "bfloat16"),
    (5, 128, "float32"),
    (6, 32, "bfloat16"),
    (8, 128, "float16"),
]


@pytest.mark.parametrize("bits, group_size, dt", CASES)
@pytest.mark.slow
def test_ours_dequantize_as_mlx_does_within_the_quantizers_bound(tmp_path, bits, group_size, dt, monkeypatch):
    g = torch.Generator().manual_seed(bits)
    sd = {
        "fc.weight": torch.randn(24, 256, generator=g).to(TORCH_DT[dt]),
        "fc.bias": torch.randn(24, generator=g).to(TORCH_DT[dt]),
        # GPT-2's Conv1D: (in, out), transposed to MLX's (out, in) before it is quantized
        "attn.c_attn.weight": torch.randn(256, 40, generator=g).to(TORCH_DT[dt]),
        "ln.weight": torch.randn(256, generator=g).to(TORCH_DT[dt]),
    }
    torch.save(sd, tmp_path / "m.pt")
    convert(
        tmp_path / "m.pt",
        tmp_path / "mlx",
        model=False,
        q_bits=bits,
        q_group_size=group_size,
        rules=[r"c_attn\.weight=linear_transposed"],
    )
    if bits == 3:  # blocks of a few rows and steps of a few groups: the slices must still line up
        from torch2mlx.stream import dequant, execute

        real = execute.plan_tasks
        monkeypatch.setattr(execute, "plan_tasks", lambda op, chunk: real(op, 2048))
        monkeypatch.setattr(dequant, "_STEP_ELEMENTS", 64)
    res = to_torch(tmp_path / "mlx", tmp_path / "back", format="bin" if bits % 2 else "safetensors")
    assert any("2 quantized weight(s) dequantized" in n for n in res.plan.notes)
    back = read_torch_output(tmp_path / "back", "bin" if bits % 2 else "safetensors")
    assert set(back) == set(sd)
    fc = _dequantized(tmp_path / "mlx", "fc", bits, group_size)
    attn = _dequantized(tmp_path / "mlx", "attn.c_attn", bits, group_size)
    assert torch.equal(back["fc.weight"], fc) and back["fc.weight"].dtype == TORCH_DT[dt]
    assert torch.equal(back["attn.c_attn.weight"], attn.t())
    for k in ("fc.bias", "ln.weight"):
        assert torch.equal(back[k], sd[k])
    for name, base, mlx_layout in (
        ("fc.weight", "fc", sd["fc.weight"]),
        ("attn.c_attn.weight", "attn.c_attn", sd["attn.c_attn.weight"].t()),
    ):
        err = (back[name].double() - sd[name].double()).abs()
        bound = _bound(tmp_path / "mlx", base, bits, group_size, dt, mlx_layout)
        bound = bound.t() if name.startswith("attn") else bound
        assert (err <= bound).all(), f"{name}: error exceeds the bound by {float((err - bound).max())}"


def test_forward_dtype_change_and_quantization_are_both_undone(tmp_path):
    sd = {"fc.weight": torch.randn(8, 64, dtype=torch.float32)}
    torch.save(sd, tmp_path / "m.pt")
    convert(tmp_path / "m.pt", tmp_path / "mlx", model=False, q_bits=4, dtype="bfloat16")
    to_torch(tmp_path / "mlx", tmp_path / "back")
    got = read_torch_output(tmp_path / "back")["fc.weight"]
    assert got.dtype == torch.float32  # the torch dtype is restored: the bfloat16 values, widened
    assert torch.equal(got, _dequantized(tmp_path / "mlx", "fc", 4, 64).float())


# ---------------------------------------------------------------- mlx-lm's own output


@pytest.fixture(scope="module")
def mlx_lm_dir(tmp_path_factory):
    """A tiny random Llama from a transformers config, quantized by mlx-lm's convert: with its mixed 3/6-bit
    recipe (a config entry per layer) and uniformly at 4 bits (the config's default block alone)."""
    from mlx_lm.convert import convert as mlx_lm_convert
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("mlx_lm")
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        max_position_embeddings=64,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(d / "hf")
    tok = Tokenizer(models.WordLevel({"<unk>": 0} | {f"t{i}": i for i in range(1, 128)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<unk>", eos_token="<unk>"
    ).save_pretrained(d / "hf")
    mlx_lm_convert(
        str(d / "hf"), str(d / "mixed"), quantize=True, q_group_size=32, q_bits=4, quant_predicate="mixed_3_6"
    )
    mlx_lm_convert(str(d / "hf"), str(d / "uniform"), quantize=True, q_group_size=64, q_bits=4)
    return d


def _mlx_lm_logits(path, ids: np.ndarray) -> np.ndarray:
    from mlx_lm.utils import load_model

    model, _ = load_model(path)
    return np.array(model(mx.array(ids)).astype(mx.float32))


@pytest.mark.parametrize("recipe, fmt", [("mixed", "safetensors"), ("mixed", "bin"), ("uniform", "safetensors")])
@pytest.mark.slow
def test_mlx_lm_quantized_llama_loads_strictly_into_transformers(mlx_lm_dir, tmp_path, recipe, fmt):
    from transformers import LlamaConfig, LlamaForCausalLM

    mlx_lm_dir = mlx_lm_dir / recipe
    res = to_torch(mlx_lm_dir, tmp_path / "back", format=fmt)
    assert res.plan.rules_by_source() == {"model": 21} and not res.plan.warnings, res.plan.warnings
    cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    assert "quantization" not in cfg and "quantization_config" not in cfg
    back = read_torch_output(tmp_path / "back", fmt)
    model = LlamaForCausalLM(LlamaConfig.from_json_file(tmp_path / "back" / "config.json")).eval()
    model.load_state_dict(back, strict=True)
    ids = np.array([[1, 5, 9, 33, 2, 77, 100]])
    with torch.no_grad():
        got = model(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(got, _mlx_lm_logits(mlx_lm_dir, ids), rtol=1e-4, atol=1e-5)
    # every quantized weight is mx.dequantize of what mlx-lm stored, with the bits its config gives each layer
    q = json.loads((mlx_lm_dir / "config.json").read_text())["quantization"]
    layers = {
        p: q.get(p, q)
        for p in (
            n[: -len(".scales")]
            for n in read_json(mlx_lm_dir / "model.safetensors.index.json")["weight_map"]
            if n.endswith(".scales")
        )
    }
    assert len(layers) == 16
    # the recipe's two widths come from per-layer entries; the uniform one from the default block alone
    assert {s["bits"] for s in layers.values()} == ({3, 6} if recipe == "mixed" else {4})
    for path, spec in layers.items():
        assert torch.equal(back[path + ".weight"], _dequantized(mlx_lm_dir, path, spec["bits"], spec["group_size"])), (
            path
        )


def test_quantized_without_its_parameters_is_one_error(mlx_lm_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(mlx_lm_dir / "uniform", bare)
    cfg = json.loads((bare / "config.json").read_text())
    for k in ("quantization", "quantization_config"):
        cfg.pop(k)
    (bare / "config.json").write_text(json.dumps(cfg))
    assert_one_error(run_main("stream", bare, tmp_path / "o", "--to", "torch"), "is quantized", "bits")
    assert_no_index(tmp_path / "o")
    cfg["quantization"] = {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    (bare / "config.json").write_text(json.dumps(cfg))
    assert_one_error(run_main("stream", bare, tmp_path / "o", "--to", "torch"), "mxfp4 scales are uint8", "lm_head")
