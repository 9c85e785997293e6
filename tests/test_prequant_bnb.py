"""bitsandbytes checkpoints (NF4 / FP4, with and without double quantization; LLM.int8) in.

Oracle: bitsandbytes itself, whose CPU path quantizes and dequantizes (``quantize_4bit`` /
``dequantize_4bit``, ``int8_vectorwise_quant`` / ``int8_vectorwise_dequant``). A tiny Llama's Linears
are quantized by it and saved under the names transformers gives a bnb model (``weight``,
``weight.absmax``, ``weight.quant_map``, ``weight.nested_*``, ``weight.quant_state.bitsandbytes__nf4``;
``weight`` + ``SCB`` + ``weight_format``). Our exact dequantization must equal bitsandbytes' bit for bit
(float32); the default output is ``mx.quantize`` of it, with the error measured.
"""

from __future__ import annotations

import json
import logging

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

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
F = pytest.importorskip("bitsandbytes.functional")

# name -> (kind, blocksize, double quantization)
CASES = {
    "nf4-b64": ("nf4", 64, False),
    "nf4-b64-double": ("nf4", 64, True),
    "fp4-b128-double": ("fp4", 128, True),
    "nf4-b256": ("nf4", 256, False),
    "int8": ("int8", None, False),
}


def reference_4bit(q, st) -> np.ndarray:
    """The format's description: codes of the flattened weight, high nibble first, times their block's absmax."""
    raw = q.numpy().reshape(-1)
    codes = np.stack([raw >> 4, raw & 15], -1).reshape(-1)
    absmax = st.absmax.numpy()
    if st.nested:
        a2 = st.state2
        absmax = a2.code.numpy()[absmax] * np.repeat(a2.absmax.numpy(), a2.blocksize)[: absmax.size]
        absmax = absmax + np.float32(st.offset.item())
    v = st.code.numpy()[codes].reshape(-1, st.blocksize) * absmax[:, None]
    return v.reshape(tuple(st.shape))


def write_bnb_llama(root, kind, blocksize, double):
    """A tiny float32 Llama with every decoder Linear quantized by bitsandbytes.

    Returns (dir, {module: bitsandbytes' own float32 dequantization (out, in)})."""
    model = L.build_model("llama", seed=7, config=R.llama_config())
    tensors, deq = {}, {}
    for name, p in model.state_dict().items():
        base = name[: -len(".weight")]
        if not (name.endswith(".weight") and base.rsplit(".", 1)[-1] in R.LINEARS):
            tensors[name] = p.detach().clone()
            continue
        w = p.detach().clone()
        if kind == "int8":
            q, scb, _ = F.int8_vectorwise_quant(w)
            tensors.update({name: q, base + ".SCB": scb, base + ".weight_format": torch.tensor(0, dtype=torch.uint8)})
            deq[base] = F.int8_vectorwise_dequant(q, scb).numpy()
            continue
        q, st = F.quantize_4bit(w, blocksize=blocksize, quant_type=kind, compress_statistics=double)
        tensors[name] = q
        tensors.update({f"{name}.{k}": v for k, v in st.as_dict(packed=True).items()})
        theirs, ref = F.dequantize_4bit(q, st).numpy(), reference_4bit(q, st)
        if blocksize <= w.shape[1]:
            np.testing.assert_array_equal(theirs, ref)  # the reference is bitsandbytes' dequantization
            deq[base] = theirs
        else:
            # bitsandbytes' CPU kernel misreads blocks spanning rows (its result is farther from the
            # weights than the format's own dequantization): the reference is the oracle there
            assert np.abs(ref - w.numpy()).max() < np.abs(theirs - w.numpy()).max()
            deq[base] = ref
    qc = (
        {"quant_method": "bitsandbytes", "load_in_8bit": True, "load_in_4bit": False}
        if kind == "int8"
        else {
            "quant_method": "bitsandbytes",
            "load_in_4bit": True,
            "load_in_8bit": False,
            "bnb_4bit_quant_type": kind,
            "bnb_4bit_use_double_quant": double,
            "bnb_4bit_compute_dtype": "float32",
            "bnb_4bit_quant_storage": "uint8",
        }
    )
    root.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(root / "model.safetensors"))
    cfg = json.loads(R.llama_config().to_json_string())
    (root / "config.json").write_text(json.dumps(dict(cfg, architectures=["LlamaForCausalLM"], quantization_config=qc)))
    L.save_tokenizer(root)
    return root, deq


def _torch_logits(replaced: dict) -> np.ndarray:
    model = L.build_model("llama", seed=7, config=R.llama_config())
    model.load_state_dict({**model.state_dict(), **{b + ".weight": torch.from_numpy(w) for b, w in replaced.items()}})
    return L.torch_logits(model)


def _mlx(out):
    model, cfg = load_model(out)
    return model, cfg, dict(tree_flatten(model.parameters()))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_dequantization_equals_bitsandbytes(name, tmp_path):
    src, deq = write_bnb_llama(tmp_path / "src", *CASES[name])
    out = tmp_path / "out"
    proc = run_main("stream", src, out, "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    kind, blocksize, _ = CASES[name]
    assert (
        f"BITSANDBYTES (bits={8 if kind == 'int8' else 4}, group_size={blocksize or -1}, checkpoint_format={kind})"
        in proc.stdout
    )
    assert "14 module(s) dequantized exactly (bitsandbytes" in proc.stdout
    model, cfg, weights = _mlx(out)
    assert "quantization" not in cfg and "quantization_config" not in cfg
    for base, w in deq.items():
        np.testing.assert_array_equal(np.array(weights[base + ".weight"]), w, err_msg=base)
    assert np.abs(np.array(model(mx.array(L.PROMPT))) - _torch_logits(deq)).max() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nf4-b64-double", "int8"])
def test_default_requantizes_with_the_error_measured(name, tmp_path):
    kind = CASES[name][0]
    bits = 8 if kind == "int8" else 4
    src, deq = write_bnb_llama(tmp_path / "src", *CASES[name])
    out = tmp_path / "out"
    proc = run_main("stream", src, out)
    assert proc.returncode == 0, proc.stderr
    model, cfg, weights = _mlx(out)
    assert cfg["quantization"] == {"group_size": 64, "bits": bits, "mode": "affine"}
    records = json.loads((out / "torch2mlx.json").read_text())["tensors"]
    written, worst = {}, 0.0
    for base, w in deq.items():
        wq, sq, bq = mx.quantize(mx.array(w), 64, bits)
        for k, want in (("weight", wq), ("scales", sq), ("biases", bq)):
            np.testing.assert_array_equal(np.array(weights[f"{base}.{k}"]), np.array(want), err_msg=f"{base}.{k}")
        written[base] = np.array(mx.dequantize(wq, sq, bq, 64, bits))
        err = float(np.abs(written[base] - w).max())
        assert 0 < err and records[base + ".weight"]["requant_max_abs_error"] == pytest.approx(err, rel=1e-6)
        assert f"requantized {base}.weight: max abs error {err:.3g}" in proc.stdout
        worst = max(worst, err)
    assert run_main("verify", src, out).returncode == 0
    logits = np.array(model(mx.array(L.PROMPT)))
    assert np.abs(logits - _torch_logits(written)).max() <= 2e-3
    print(
        f"{name}: max weight error {worst:.3g}, logits vs bitsandbytes' {np.abs(logits - _torch_logits(deq)).max():.3g}"
    )


def test_q_mode_nvfp4_and_missing_absmax(tmp_path):
    """--q-mode nvfp4 requantizes the exact dequantization as mx.quantize does, its error measured in that mode."""
    src, deq = write_bnb_llama(tmp_path / "src", "nf4", 64, False)
    out = tmp_path / "out"
    assert run_main("stream", src, out, "--quiet", "--q-mode", "nvfp4").returncode == 0
    from safetensors.numpy import load_file

    got = load_file(str(out / "model.safetensors"))
    base = "model.layers.1.mlp.down_proj"
    wq, sq = mx.quantize(mx.array(deq[base]), mode="nvfp4")[:2]
    np.testing.assert_array_equal(got[base + ".weight"], np.array(wq))
    np.testing.assert_array_equal(got[base + ".scales"], np.array(sq))
    back = np.array(mx.dequantize(wq, sq, mode="nvfp4", dtype=mx.float32))
    rec = json.loads((out / "torch2mlx.json").read_text())["tensors"][base + ".weight"]
    assert rec["requant_max_abs_error"] == pytest.approx(float(np.abs(back - deq[base]).max()), rel=1e-6)
    from safetensors.torch import load_file as tload

    sd = tload(str(src / "model.safetensors"))
    del sd[base + ".weight.absmax"]
    save_file(sd, str(src / "model.safetensors"))
    assert_one_error(run_main("stream", src, tmp_path / "o2"), f"without {base}.weight.absmax")
