"""compressed-tensors checkpoints (pack-quantized, int-quantized, naive-quantized) in.

Oracle: the compressed-tensors library itself. Its observers' min/max parameters
(``calculate_qparams``) and its compressors (``compress``) pack a tiny Llama's Linears
exactly as llm-compressor saves them; its ``decompress`` is the dequantization our output
must reproduce (``mx.dequantize``, float32, bit for bit, for the lossless repacks), and
transformers running those decompressed weights gives the reference logits.
"""

from __future__ import annotations

import json

import llm_checkpoints as L
import mlx.core as mx
import numpy as np
import prequant_ref as R
import pytest
import torch
from helpers import assert_one_error, run_main
from mlx.utils import tree_flatten
from mlx_lm.utils import load_model
from safetensors.torch import save_file

from torch2mlx import stream

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors.naive_quantized.base import (  # noqa: E402
    IntQuantizationCompressor,
    NaiveQuantizationCompressor,
)
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor  # noqa: E402
from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme  # noqa: E402
from compressed_tensors.quantization.utils import calculate_qparams  # noqa: E402

COMPRESSORS = {
    "pack-quantized": PackedQuantizationCompressor,
    "int-quantized": IntQuantizationCompressor,
    "naive-quantized": NaiveQuantizationCompressor,
}
# name -> (format, bits, strategy, group size, symmetric)
LOSSLESS = {
    "pack-w4-sym-g128": ("pack-quantized", 4, "group", 128, True),
    "pack-w4-asym-g32": ("pack-quantized", 4, "group", 32, False),
    "pack-w8-sym-channel": ("pack-quantized", 8, "channel", None, True),
    "pack-w3-asym-channel": ("pack-quantized", 3, "channel", None, False),
    "int-w8-sym-channel": ("int-quantized", 8, "channel", None, True),
    "naive-w4-asym-g64": ("naive-quantized", 4, "group", 64, False),
}


def _args(bits, strategy, gs, sym):
    return QuantizationArgs(num_bits=bits, type="int", symmetric=sym, strategy=strategy, group_size=gs)


def write_ctensors_llama(root, fmt, bits, strategy, gs, sym, activations=False):
    """A tiny float32 Llama with every decoder Linear compressed by compressed-tensors (float16 scales).

    Returns (dir, {module: float32 decompressed (out, in)}, transformers' logits on those weights)."""
    args = _args(bits, strategy, gs, sym)
    act = QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="token", dynamic=True)
    scheme = QuantizationScheme(targets=["Linear"], weights=args, input_activations=act if activations else None)
    model = L.build_model("llama", seed=7, config=R.llama_config())
    tensors, deq = {}, {}
    for name, p in model.state_dict().items():
        base = name[: -len(".weight")]
        if not (name.endswith(".weight") and base.rsplit(".", 1)[-1] in R.LINEARS):
            tensors[name] = p.detach().clone()
            continue
        w = p.detach().clone()
        g = w.reshape(w.shape[0], -1, gs if strategy == "group" else w.shape[1])
        scale, zero = calculate_qparams(g.amin(-1), g.amax(-1), args)
        scale = scale.to(torch.float16)  # as llm-compressor saves a float16 model's: exact in float32 products
        sd = {"weight": w, "weight_scale": scale} | ({} if sym else {"weight_zero_point": zero})
        packed = COMPRESSORS[fmt].compress(sd, scheme)
        tensors.update({f"{base}.{k}": v.contiguous() for k, v in packed.items()})
        # the oracle: the library's decompression, in float32 (its scale dtype decides its arithmetic)
        back = COMPRESSORS[fmt].decompress({**packed, "weight_scale": packed["weight_scale"].float()}, scheme)
        deq[base] = back["weight"].float().numpy()
    qc = QuantizationConfig(
        config_groups={"group_0": scheme}, format=fmt, quantization_status="compressed", ignore=["lm_head"]
    ).model_dump(mode="json")
    root.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(root / "model.safetensors"))
    cfg = json.loads(R.llama_config().to_json_string())
    (root / "config.json").write_text(json.dumps(dict(cfg, architectures=["LlamaForCausalLM"], quantization_config=qc)))
    L.save_tokenizer(root)
    model.load_state_dict({**model.state_dict(), **{b + ".weight": torch.from_numpy(w) for b, w in deq.items()}})
    return root, deq, L.torch_logits(model)


def _mlx(out):
    model, cfg = load_model(out)
    return model, cfg, dict(tree_flatten(model.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LOSSLESS))
def test_lossless_repack_equals_compressed_tensors_decompress(name, tmp_path):
    fmt, bits, strategy, gs, sym = LOSSLESS[name]
    src, deq, ref = write_ctensors_llama(tmp_path / "src", *LOSSLESS[name], activations=fmt == "int-quantized")
    out = tmp_path / "out"
    res = stream.convert(str(src), str(out))
    model, cfg, weights = _mlx(out)
    q = cfg["quantization"]
    assert q["bits"] == bits and q["mode"] == "affine"
    assert "quant_method" not in (cfg.get("quantization_config") or {})
    for base, w in deq.items():
        mgs = q.get(base, q)["group_size"]
        assert mgs == (gs or 128)  # channel-wise: a whole row is several MLX groups of one scale
        got = mx.dequantize(weights[base + ".weight"], weights[base + ".scales"], weights[base + ".biases"], mgs, bits)
        assert got.dtype == mx.float32
        np.testing.assert_array_equal(np.array(got), w, err_msg=base)
    assert np.abs(np.array(model(mx.array(L.PROMPT))) - ref).max() <= 2e-3
    notes = "\n".join(res.plan.notes)
    assert "14 module(s) repacked losslessly" in notes
    assert f"COMPRESSED-TENSORS (bits={bits}" in notes and f"checkpoint_format={fmt}" in notes


@pytest.mark.slow
def test_group_16_is_requantized_with_its_error_measured(tmp_path):
    """Groups of 16 fit no MLX group: exact dequantization, then mx.quantize at group 32, error recorded."""
    src, deq, _ = write_ctensors_llama(tmp_path / "src", "pack-quantized", 4, "group", 16, False)
    out = tmp_path / "out"
    res = stream.convert(str(src), str(out))
    _, cfg, weights = _mlx(out)
    assert cfg["quantization"] == {"group_size": 32, "bits": 4, "mode": "affine"}
    records = json.loads((out / "torch2mlx.json").read_text())["tensors"]
    notes = "\n".join(res.plan.notes)
    for base, w in deq.items():
        wq, sq, bq = mx.quantize(mx.array(w), 32, 4)
        for k, want in (("weight", wq), ("scales", sq), ("biases", bq)):
            np.testing.assert_array_equal(np.array(weights[f"{base}.{k}"]), np.array(want), err_msg=f"{base}.{k}")
        err = float(np.abs(np.array(mx.dequantize(wq, sq, bq, 32, 4)) - w).max())
        assert 0 < err and records[base + ".weight"]["requant_max_abs_error"] == pytest.approx(err, rel=1e-6)
        assert f"requantized {base}.weight: max abs error {err:.3g}" in notes


@pytest.mark.slow
def test_dtype_writes_the_decompressed_weights(tmp_path):
    src, deq, ref = write_ctensors_llama(tmp_path / "src", "pack-quantized", 4, "group", 64, False)
    out = tmp_path / "out"
    assert run_main("stream", src, out, "--quiet", "--dtype", "float32").returncode == 0
    model, cfg, weights = _mlx(out)
    assert "quantization" not in cfg and "quantization_config" not in cfg
    for base, w in deq.items():
        np.testing.assert_array_equal(np.array(weights[base + ".weight"]), w)
    assert np.abs(np.array(model(mx.array(L.PROMPT))) - ref).max() <= 1e-4


def test_missing_scale_and_unsupported_format_are_one_line_errors(tmp_path):
    src, _, _ = write_ctensors_llama(tmp_path / "src", "pack-quantized", 4, "group", 128, True)
    from safetensors.torch import load_file

    sd = load_file(str(src / "model.safetensors"))
    del sd["model.layers.0.mlp.up_proj.weight_scale"]
    save_file(sd, str(src / "model.safetensors"))
    assert_one_error(run_main("stream", src, tmp_path / "o1"), "model.layers.0.mlp.up_proj.weight_scale is missing")
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"]["format"] = "sparse-24-bitmask"
    (src / "config.json").write_text(json.dumps(cfg))
    assert_one_error(run_main("stream", src, tmp_path / "o2"), "'sparse-24-bitmask'")


def write_nvfp4_llama(root, unit_global_scale: bool):
    """A tiny float32 Llama with every decoder Linear compressed as compressed-tensors' NVFP4 (NVFP4A16 preset).

    Returns (dir, {module: float32 dequantization by compressed-tensors' own functions}, {module: packed dict})."""
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    from compressed_tensors.quantization.utils import generate_gparam

    scheme = preset_name_to_scheme("NVFP4A16", ["Linear"])
    model = L.build_model("llama", seed=7, config=R.llama_config())
    tensors, deq, packed = {}, {}, {}
    for name, p in model.state_dict().items():
        base = name[: -len(".weight")]
        if not (name.endswith(".weight") and base.rsplit(".", 1)[-1] in R.LINEARS):
            tensors[name] = p.detach().clone()
            continue
        w = p.detach().clone()
        g = w.reshape(w.shape[0], -1, 16)
        gs = torch.ones(1) if unit_global_scale else generate_gparam(w.amin(), w.amax())
        scale, _ = calculate_qparams(g.amin(-1), g.amax(-1), scheme.weights, global_scale=gs)
        sd = NVFP4PackedCompressor.compress({"weight": w, "weight_scale": scale, "weight_global_scale": gs}, scheme)
        tensors.update({f"{base}.{k}": v for k, v in sd.items()})
        packed[base] = sd
        # the library's dequantization, unpacked to float32 (its decompress rounds the result to bfloat16)
        codes = unpack_fp4_from_uint8(sd["weight_packed"], w.shape[0], w.shape[1], dtype=torch.float32)
        deq[base] = dequantize(
            codes, sd["weight_scale"].float(), args=scheme.weights, global_scale=gs, dtype=torch.float32
        ).numpy()
        theirs = NVFP4PackedCompressor.decompress(sd, scheme)["weight"]
        assert torch.equal(theirs, torch.from_numpy(deq[base]).to(theirs.dtype))
    qc = QuantizationConfig(
        config_groups={"group_0": scheme}, format="nvfp4-pack-quantized", quantization_status="compressed"
    ).model_dump(mode="json")
    root.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(root / "model.safetensors"))
    cfg = json.loads(R.llama_config().to_json_string())
    (root / "config.json").write_text(json.dumps(dict(cfg, architectures=["LlamaForCausalLM"], quantization_config=qc)))
    L.save_tokenizer(root)
    return root, deq, packed


@pytest.mark.slow
@pytest.mark.parametrize("unit", [True, False], ids=["global-scale-1", "global-scale"])
def test_nvfp4_becomes_mlx_nvfp4(unit, tmp_path):
    """NVFP4 -> mx.quantize(nvfp4) of the exact dequantization. A global scale of 1 gives the source's own
    scales and codes back (error 0; -0 codes become +0); another global scale folds into re-rounded e4m3
    scales, its error measured."""
    src, deq, packed = write_nvfp4_llama(tmp_path / "src", unit)
    out = tmp_path / "out"
    res = stream.convert(str(src), str(out))
    model, cfg, weights = _mlx(out)
    assert cfg["quantization"] == {"group_size": 16, "bits": 4, "mode": "nvfp4"}
    records = json.loads((out / "torch2mlx.json").read_text())["tensors"]
    written = {}
    for base, w in deq.items():
        wq, sq = mx.quantize(mx.array(w), mode="nvfp4")[:2]
        np.testing.assert_array_equal(np.array(weights[base + ".weight"]), np.array(wq), err_msg=base)
        np.testing.assert_array_equal(np.array(weights[base + ".scales"]), np.array(sq), err_msg=base)
        written[base] = np.array(mx.dequantize(wq, sq, mode="nvfp4", dtype=mx.float32))
        err = float(np.abs(written[base] - w).max())
        assert records[base + ".weight"]["requant_max_abs_error"] == pytest.approx(err, rel=1e-6, abs=0)
        if unit:
            assert err == 0
            # the source's codes back, but for the sign of zero (mx.quantize writes -0 as +0)
            got, src_b = np.array(weights[base + ".weight"]).view(np.uint8), packed[base]["weight_packed"].numpy()
            zero = lambda c: np.where((c & 7) == 0, c & 7, c)  # noqa: E731
            np.testing.assert_array_equal(zero(got & 15), zero(src_b & 15))
            np.testing.assert_array_equal(zero(got >> 4), zero(src_b >> 4))
            np.testing.assert_array_equal(np.array(sq), packed[base]["weight_scale"].view(torch.uint8).numpy())
        else:
            assert err > 0
    model_t = L.build_model("llama", seed=7, config=R.llama_config())
    model_t.load_state_dict(
        {**model_t.state_dict(), **{b + ".weight": torch.from_numpy(w) for b, w in written.items()}}
    )
    assert np.abs(np.array(model(mx.array(L.PROMPT))) - L.torch_logits(model_t)).max() <= 2e-3
    assert any("NVFP4" in n and "dequantized exactly" in n for n in res.plan.notes)


def test_dense_format_is_converted_as_float_weights(tmp_path):
    """format "dense" (weights stored unquantized, e.g. an activation-only scheme): nothing to unpack."""
    model = L.build_model("llama", seed=7, config=R.llama_config())
    src = tmp_path / "src"
    src.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(src / "model.safetensors"))
    scheme = QuantizationScheme(targets=["Linear"], weights=_args(8, "channel", None, True))
    qc = QuantizationConfig(config_groups={"group_0": scheme}, format="dense").model_dump(mode="json")
    cfg = json.loads(R.llama_config().to_json_string())
    (src / "config.json").write_text(json.dumps(dict(cfg, architectures=["LlamaForCausalLM"], quantization_config=qc)))
    out = tmp_path / "out"
    proc = run_main("stream", src, out, "--no-model")
    assert proc.returncode == 0, proc.stderr
    assert "pre-quantized" not in proc.stdout
    from safetensors.numpy import load_file

    got = load_file(str(out / "model.safetensors"))
    np.testing.assert_array_equal(
        got["model.layers.0.mlp.up_proj.weight"], model.model.layers[0].mlp.up_proj.weight.detach().numpy()
    )
