"""MLX -> GGUF with K-quants (``--gguf-type q4_k_m | q5_k_m | q6_k``): llama.cpp's type mix, our own
Q4_K/Q5_K/Q6_K blocks (core/kquants.py) read back by gguf-py, and the file loaded by transformers.

The model is a tiny Llama whose matrices have rows of 256 (one K-quant super-block), 8 layers so that
llama.cpp's ``use_more_bits`` picks some layers and not others, and a feed-forward width of 288 so that
``ffn_down`` (rows of 288) takes llama.cpp's fallback for rows that are not whole super-blocks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_gguf_out import (
    _ok,
    _permute_like_llama_cpp,
    _tokenizer,
    field,
    gguf_logits,
    mlx_logits,
    mlx_weights,
    read_tensors,
    to_gguf,
)

from torch2mlx.core import kquants

gguf = pytest.importorskip("gguf")

N_LAYERS = 8
MORE_BITS = {0, 3, 6, 7}  # llama.cpp's use_more_bits(i, 8): i < 1, i >= 7, (i - 1) % 3 == 2


@pytest.fixture(scope="module")
def mlx32(tmp_path_factory):
    from transformers import AutoModelForCausalLM, LlamaConfig

    root = tmp_path_factory.mktemp("gguf_kq")
    hf = root / "hf"
    hf.mkdir()
    n = _tokenizer(hf)
    cfg = LlamaConfig(
        vocab_size=n,
        hidden_size=256,
        intermediate_size=288,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05) if p.dim() >= 2 else p.normal_(0, 0.1)
    model.save_pretrained(str(hf))
    _ok("stream", hf, root / "mlx", "-q")
    return root / "mlx"


def _expected(gname: str, gtype: str) -> str:
    if not gname.endswith(".weight") or "norm" in gname:
        return "F32"
    base = {"q4_k_m": "Q4_K", "q5_k_m": "Q5_K", "q6_k": "Q6_K"}[gtype]
    want = base
    if gtype != "q6_k":
        if gname == "output.weight":
            want = "Q6_K"
        elif (".attn_v." in gname or ".ffn_down." in gname) and int(gname.split(".")[1]) in MORE_BITS:
            want = "Q6_K"
    if ".ffn_down." in gname:  # rows of 288: llama.cpp's fallback for rows that are not whole super-blocks
        want = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}[want]
    return want


@pytest.mark.parametrize("gtype", ["q4_k_m", "q5_k_m", "q6_k"])
def test_k_quant_mix_reads_back_and_loads(mlx32, gtype, tmp_path):
    out = tmp_path / "m.gguf"
    rep = to_gguf(mlx32, out, "--gguf-type", gtype)
    tensors, r = read_tensors(out)
    ftype = {"q4_k_m": "MOSTLY_Q4_K_M", "q5_k_m": "MOSTLY_Q5_K_M", "q6_k": "MOSTLY_Q6_K"}[gtype]
    assert field(r, "general.file_type") == int(gguf.LlamaFileType[ftype])
    w = mlx_weights(mlx32)
    seen = set()
    for gname, t in tensors.items():
        want = _expected(gname, gtype)
        assert t.tensor_type.name == want, gname
        seen.add(want)
        rec = rep["tensors"][gname]
        if want == "F32":
            continue
        assert rec["how"] == "requantize" and rec["type"] == want
        src = np.array(w[rec["source"]]).astype(np.float32)
        if rec.get("rotary_permuted_heads"):
            src = _permute_like_llama_cpp(src, rec["rotary_permuted_heads"])
        data = np.array(t.data)
        if want in kquants.BLOCK_BYTES:  # our blocks, as they were written
            assert data.tobytes() == kquants.quantize(src, want).tobytes()
        else:  # the fallback types: gguf-py's own quantizer
            assert data.tobytes() == gguf.quants.quantize(src, t.tensor_type).tobytes()
        back = gguf.quants.dequantize(data, t.tensor_type).reshape(src.shape)
        assert rec["max_abs_error"] == float(np.abs(back - src).max())
    assert seen >= ({"Q6_K", "Q8_0"} if gtype == "q6_k" else {gtype[:4].upper(), "Q6_K"})
    assert any("ffn_down" in n and "not whole" in n for n in rep["notes"])
    # transformers' GGUF loader (gguf-py's dequantizers) against the float MLX model, next to gguf-py's own
    # legacy type of the same or fewer bits on the same model (this random tiny model amplifies errors:
    # measured 0.16 for q4_k_m vs 0.24 for q4_0, 0.08 q5_k_m vs 0.11 q5_0, 0.06 q6_k vs 0.09 q5_1)
    ref = mlx_logits(mlx32)
    legacy = {"q4_k_m": "q4_0", "q5_k_m": "q5_0", "q6_k": "q5_1"}[gtype]
    to_gguf(mlx32, tmp_path / "legacy.gguf", "--gguf-type", legacy)
    rel = float(np.abs(gguf_logits(out) - ref).max() / np.abs(ref).max())
    rel_legacy = float(np.abs(gguf_logits(tmp_path / "legacy.gguf") - ref).max() / np.abs(ref).max())
    print(f"MEASURED llama f32 -> {gtype}: max |logit diff| / max |logit| = {rel:.2e} ({legacy}: {rel_legacy:.2e})")
    assert rel <= rel_legacy and rel <= {"q4_k_m": 0.25, "q5_k_m": 0.12, "q6_k": 0.09}[gtype], (rel, rel_legacy)


def test_aliases_and_tied_output(mlx32, tmp_path):
    """q4_k is llama-quantize's alias of Q4_K_M; a tied output (no output.weight) puts Q6_K on token_embd."""
    cfg = json.loads((mlx32 / "config.json").read_text())
    tied = tmp_path / "tied"
    tied.mkdir()
    for f in mlx32.iterdir():
        if f.suffix != ".safetensors":
            (tied / f.name).write_bytes(f.read_bytes())
    import mlx.core as mx

    w = {k: v for k, v in mlx_weights(mlx32).items() if k != "lm_head.weight"}
    mx.save_safetensors(str(tied / "model.safetensors"), w, metadata={"format": "mlx"})
    (tied / "config.json").write_text(json.dumps(dict(cfg, tie_word_embeddings=True)))
    (tied / "model.safetensors.index.json").unlink(missing_ok=True)
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    to_gguf(tied, a, "--gguf-type", "q4_k")
    to_gguf(tied, b, "--gguf-type", "q4_k_m")
    assert a.read_bytes().replace(b"q4_k", b"xxxx") == b.read_bytes().replace(b"q4_k", b"xxxx")
    tensors, _ = read_tensors(b)
    assert "output.weight" not in tensors
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.Q6_K
    assert tensors["blk.1.ffn_gate.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_K
