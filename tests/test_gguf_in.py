"""GGUF -> MLX: tiny HF models written to GGUF with gguf-py, converted, loaded by mlx_lm.

Oracles: transformers' own GGUF loader (``from_pretrained(dir, gguf_file=...)``) for logits,
gguf-py's ``gguf.quants.dequantize`` for every repacked block, the HF model's weights for names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import gguf
import numpy as np
import pytest
from gguf_models import hf_model, random_blocks, write
from helpers import assert_one_error, run_cli

from torch2mlx.core import dtypes, quant
from torch2mlx.core.quant_recipes import QuantSpec
from torch2mlx.stream.gguf_plan import Dequant, Repack, nearest_bits
from torch2mlx.stream.gguf_repack import BITS as LOSSLESS

T = gguf.GGMLQuantizationType
IDS = [[5, 17, 300, 42, 7, 99, 260, 3, 11, 250]]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _raw(qtype: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    try:
        w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        w[0, :32] = 0.0  # an all-zero group
        w[1, :32] = 7.5  # a constant one
        return gguf.quants.quantize(w, T[qtype])
    except NotImplementedError:  # the K-quants: random blocks (every code and sub-scale value occurs)
        return random_blocks(qtype, rows, cols, rng, d=0.01)


@pytest.mark.parametrize("qtype", sorted(LOSSLESS))
def test_repack_dequantizes_to_gguf_py_exactly(qtype):
    import mlx.core as mx

    raw = _raw(qtype, 16, 512)
    want = gguf.quants.dequantize(raw, T[qtype])
    packed, scales, biases = Repack(qtype, dtypes.get("float32"))(raw, None, 0, None)
    assert packed.dtype == np.uint32 and scales.dtype == np.float32
    got = mx.dequantize(mx.array(packed), mx.array(scales), mx.array(biases), group_size=32, bits=LOSSLESS[qtype])
    got = np.array(got)
    assert got.shape == want.shape
    want = want.astype(np.float32)
    assert np.array_equal(got, want)
    # bit for bit, but for the sign of a zero: a block of zeros has d = -0.0 in gguf-py's Q4_0/Q5_0, whose
    # d * (q - 8) gives -0.0 where MLX's d * q + (-8 * d) gives +0.0
    nonzero = want != 0
    assert np.array_equal(got.view(np.uint32)[nonzero], want.view(np.uint32)[nonzero])


@pytest.mark.parametrize("scales", ["float16", "bfloat16"])
def test_rounded_scales_report_the_error_they_make(scales):
    import mlx.core as mx

    raw = _raw("Q4_K", 8, 512)
    want = gguf.quants.dequantize(raw, T.Q4_K)
    t = Repack("Q4_K", dtypes.get(scales))
    packed, s, b = t(raw, None, 0, None)
    mdt = getattr(mx, scales)
    s_mx = mx.array(s.view(np.uint16)).view(mdt) if scales == "bfloat16" else mx.array(s)
    b_mx = mx.array(b.view(np.uint16)).view(mdt) if scales == "bfloat16" else mx.array(b)
    got = np.array(mx.dequantize(mx.array(packed), s_mx, b_mx, group_size=32, bits=4).astype(mx.float32))
    err = float(np.max(np.abs(got - want)))
    assert err > 0
    assert t.info()["gguf"]["max_abs_error"] == pytest.approx(err, rel=0, abs=0)
    assert t.info()["gguf"]["repack"] == "rounded scales"


@pytest.mark.parametrize("qtype", ["Q6_K", "Q3_K", "Q2_K", "IQ4_NL", "TQ2_0"])
def test_requantized_types_measure_their_error(qtype):
    raw = _raw(qtype, 8, 256)
    values = gguf.quants.dequantize(raw, T[qtype])
    bits = nearest_bits(qtype)
    spec = QuantSpec(32, bits)
    t = Dequant(qtype, spec, dtypes.get("float32"))
    packed, s, b = t(raw, None, 0, None)
    back = quant.dequantize(packed, s, b, bits, 32, "float32")
    err = float(np.max(np.abs(back - values)))
    assert t.info()["gguf"]["max_abs_error"] == err
    assert t.info()["gguf"]["max_rel_error"] == pytest.approx(err / float(np.max(np.abs(values))))
    assert {"Q6_K": 6, "Q3_K": 3, "Q2_K": 2, "IQ4_NL": 4, "TQ2_0": 2}[qtype] == bits


# ---------------------------------------------------------------- whole models


def _convert(src, out, *extra):
    proc = run_cli("stream", src, out, "--overwrite", *extra, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def _oracle_logits(path) -> np.ndarray:
    import torch
    import transformers as tf

    m = tf.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    )
    with torch.no_grad():
        return m(torch.tensor(IDS)).logits.float().numpy()


def _mlx_logits(out) -> np.ndarray:
    import mlx.core as mx
    import mlx_lm

    model, tok = mlx_lm.load(str(out))
    text = mlx_lm.generate(model, tok, "hello", max_tokens=3)
    assert isinstance(text, str)
    return np.array(model(mx.array(IDS)).astype(mx.float32))


def _types(*names):
    order = [T[n] for n in names]
    seen = [0]

    def pick(name, shape):
        t = order[seen[0] % len(order)]
        seen[0] += 1
        return t

    return pick


@pytest.mark.parametrize(
    "kind,types,hidden",
    [
        ("llama", ("F32", "F16", "BF16"), 64),
        ("llama", ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"), 64),
        ("llama", ("Q4_K", "Q5_K", "F16"), 256),
        ("qwen2", ("F32", "Q8_0", "Q5_1"), 64),
        ("gemma2", ("F16", "Q4_0", "Q8_0"), 64),
        ("qwen3", ("Q8_0", "F32", "Q5_0"), 512),  # transformers reads no head_dim from GGUF: 128 it is
        ("phi3", ("Q8_0", "F32", "Q4_1"), 64),  # fused qkv_proj and gate_up_proj
        ("gemma3", ("Q8_0", "F32", "Q5_1"), 64),  # q_norm/k_norm also stored + 1
    ],
    ids=["llama-float", "llama-q", "llama-k", "qwen2", "gemma2", "qwen3", "phi3", "gemma3"],
)
def test_logits_match_transformers_gguf_loader(tmp_path, kind, types, hidden):
    src = tmp_path / f"{kind}.gguf"
    write(str(src), kind, hf_model(kind, hidden=hidden), _types(*types))
    out = tmp_path / "out"
    proc = _convert(src, out)
    quantized = [t for t in types if t in LOSSLESS]
    if quantized:
        assert "repacked losslessly" in proc.stdout and "not exact" not in proc.stdout
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["quantization"]["group_size"] == 32
    got, want = _mlx_logits(out), _oracle_logits(src)
    assert np.max(np.abs(got - want)) <= 1e-4


def test_float_weights_keep_hf_names_and_bits(tmp_path):
    """Names back to the HF model's, Q/K un-permuted: the F32 tensors equal the HF weights bit for bit."""
    from safetensors.numpy import load_file

    model = hf_model("llama")
    src = tmp_path / "m.gguf"
    write(str(src), "llama", model)
    _convert(src, tmp_path / "out")
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    want = {k: v.numpy() for k, v in model.state_dict().items()}
    assert sorted(got) == sorted(want)
    for k in want:
        assert np.array_equal(got[k], want[k]), k


def test_gemma_norms_lose_the_one_llama_cpp_added(tmp_path):
    from safetensors.numpy import load_file

    model = hf_model("gemma2")
    src = tmp_path / "g.gguf"
    write(str(src), "gemma2", model)
    _convert(src, tmp_path / "out")
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    norms = [k for k in got if k.endswith("norm.weight")]
    assert len(norms) == 1 + 4 * 2
    for k in norms:
        w = model.state_dict()[k].numpy()
        assert np.array_equal(got[k], (w + np.float32(1)) - np.float32(1)), k
        assert np.max(np.abs(got[k] - w)) < 1e-6


def test_requantized_and_dequantized_types(tmp_path):
    types = ("Q6_K", "Q3_K", "Q2_K", "Q4_K")
    src = tmp_path / "k.gguf"
    write(str(src), "llama", hf_model("llama", hidden=256), _types(*types))
    want = _oracle_logits(src)
    # default: nearest bits, error measured per tensor
    out = tmp_path / "q"
    proc = _convert(src, out)
    assert "requantized to 6-bit" in proc.stdout and "not exact" in proc.stdout
    man = json.loads((out / "torch2mlx.json").read_text())
    errs = [r["gguf"] for r in man["tensors"].values() if "max_abs_error" in r.get("gguf", {})]
    assert errs and all(e["max_abs_error"] > 0 for e in errs)
    cfg = json.loads((out / "config.json").read_text())["quantization"]
    kinds = {name[: -len(".weight")]: r["gguf"]["type"] for name, r in man["tensors"].items() if "gguf" in r}
    assert set(kinds.values()) == set(types)
    for path, qtype in kinds.items():
        bits = cfg.get(path, cfg)["bits"]
        assert bits == (4 if qtype == "Q4_K" else {"Q6_K": 6, "Q3_K": 3, "Q2_K": 2}[qtype]), path
    got = _mlx_logits(out)
    measured = float(np.max(np.abs(got - want)))
    assert 0 < measured < 0.5 * float(np.max(np.abs(want)))
    # --dtype float32: exact dequantization, the oracle's logits
    out = tmp_path / "f"
    _convert(src, out, "--dtype", "float32")
    assert "quantization" not in json.loads((out / "config.json").read_text())
    assert np.max(np.abs(_mlx_logits(out) - want)) <= 1e-4


def test_split_gguf_set(tmp_path):
    model = hf_model("qwen2")
    src = tmp_path / "split.gguf"
    write(str(src), "qwen2", model, _types("Q8_0", "F32"), split_max_tensors=10)
    files = sorted(p.name for p in tmp_path.glob("*.gguf"))
    assert files == ["split-00001-of-00003.gguf", "split-00002-of-00003.gguf", "split-00003-of-00003.gguf"]
    out = tmp_path / "out"
    _convert(tmp_path / files[0], out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False  # lm_head is in the last file, not in the first
    got = _mlx_logits(out)
    # the oracle: the same model as one file
    one = tmp_path / "one" / "m.gguf"
    one.parent.mkdir()
    write(str(one), "qwen2", model, _types("Q8_0", "F32"))
    assert np.max(np.abs(got - _oracle_logits(one))) <= 1e-4


def test_stream_process_never_imports_torch(tmp_path):
    src = tmp_path / "m.gguf"
    write(str(src), "llama", hf_model("llama"), _types("Q8_0"))
    code = (
        "import sys\n"
        "from torch2mlx import stream\n"
        f"stream.convert({str(src)!r}, {str(tmp_path / 'out')!r})\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "tokenizer.json").exists()


def test_without_transformers_weights_are_written_and_the_report_says_why(tmp_path):
    fake = tmp_path / "fake"
    (fake / "transformers").mkdir(parents=True)
    (fake / "transformers" / "__init__.py").write_text("raise ImportError('transformers blocked in this test')\n")
    src = tmp_path / "m.gguf"
    write(str(src), "llama", hf_model("llama"))
    env = {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli("stream", src, tmp_path / "out", env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "transformers is not installed" in proc.stdout and "torch2mlx[torch]" in proc.stdout
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert not (tmp_path / "out" / "config.json").exists()


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def good_gguf(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    src = d / "m.gguf"
    write(str(src), "llama", hf_model("llama"), _types("Q8_0", "F32"))
    return src.read_bytes()


def _first_tensor_type_offset(data: bytes) -> int:
    """Byte offset of the first tensor record's GGML type field."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(data)
        f.flush()
        t = gguf.GGUFReader(f.name).tensors[0].field  # parts: name length, name, n_dims, dims, type, offset
        return t.offset + sum(int(p.nbytes) for p in t.parts[:4])


@pytest.mark.parametrize(
    "case,mention",
    [
        ("magic", "not a GGUF file"),
        ("version", "GGUF version 7 is not supported"),
        ("short", "truncated GGUF file"),
        ("truncated", "past the end"),
        ("qtype", "unknown GGML tensor type 250"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, good_gguf, case, mention):
    data = bytearray(good_gguf)
    if case == "magic":
        data[:4] = b"GGUX"
    elif case == "version":
        data[4:8] = (7).to_bytes(4, "little")
    elif case == "short":
        data = data[:10]
    elif case == "truncated":
        data = data[: len(data) - 100]
    elif case == "qtype":
        at = _first_tensor_type_offset(bytes(data))
        data[at : at + 4] = (250).to_bytes(4, "little")
    src = tmp_path / "bad.gguf"
    src.write_bytes(bytes(data))
    proc = run_cli("stream", src, tmp_path / "out", timeout=300)
    assert_one_error(proc, mention)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_verify_recomputes_every_gguf_tensor(tmp_path):
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "m.gguf"
    write(str(src), "llama", hf_model("llama", hidden=256), _types("Q4_K", "Q6_K", "F16"))
    out = tmp_path / "out"
    _convert(src, out)
    proc = run_cli("verify", src, out, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
    # one scale changed: verify names the tensor
    shard = out / "model.safetensors"
    tensors = load_file(str(shard))
    tensors["model.layers.0.self_attn.q_proj.scales"][0, 0] *= 2
    save_file(tensors, str(shard), metadata={"format": "mlx"})
    proc = run_cli("verify", src, out, timeout=600)
    assert proc.returncode != 0
    assert "model.layers.0.self_attn.q_proj" in proc.stdout + proc.stderr


def test_written_blocks_dequantize_to_gguf_py_values(tmp_path):
    """Every repacked tensor of a whole file, read back from OUT by MLX, is gguf-py's dequantization of the
    GGUF tensor (attn_q/attn_k with llama's permutation undone, as transformers' loader undoes it)."""
    import mlx.core as mx

    model = hf_model("llama", hidden=256)
    src = tmp_path / "m.gguf"
    write(str(src), "llama", model, _types(*sorted(LOSSLESS)))
    out = tmp_path / "out"
    _convert(src, out)
    got = mx.load(str(out / "model.safetensors"))
    cfg = model.config
    # the writer's own naming (gguf-py's forward map), read backwards
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    hf_base = {tmap.get_name(k.rpartition(".")[0]): k.rpartition(".")[0] for k in model.state_dict()}
    seen = set()
    for t in gguf.GGUFReader(str(src)).tensors:
        if t.tensor_type.name not in LOSSLESS:
            continue
        want = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        if ".attn_q." in t.name or ".attn_k." in t.name:
            heads = cfg.num_attention_heads if ".attn_q." in t.name else cfg.num_key_value_heads
            want = want.reshape(heads, want.shape[0] // heads // 2, 2, -1).swapaxes(2, 1).reshape(want.shape)
        base = hf_base[t.name.rpartition(".")[0]]
        w, s, b = got[base + ".weight"], got[base + ".scales"], got[base + ".biases"]
        back = np.array(mx.dequantize(w, s, b, group_size=32, bits=LOSSLESS[t.tensor_type.name]))
        assert np.array_equal(back, want), t.name
        seen.add(t.tensor_type.name)
    assert seen == set(LOSSLESS)


def test_without_gguf_py_the_error_says_how_to_install_it(tmp_path, good_gguf):
    fake = tmp_path / "fake"
    (fake / "gguf").mkdir(parents=True)
    (fake / "gguf" / "__init__.py").write_text("raise ImportError('gguf blocked in this test')\n")
    src = tmp_path / "m.gguf"
    src.write_bytes(good_gguf)
    env = {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    assert_one_error(run_cli("stream", src, tmp_path / "out", env=env), "pip install 'torch2mlx[gguf]'")


def test_a_directory_with_one_gguf_model_reads_it_and_refuses_a_choice(tmp_path, good_gguf):
    d = tmp_path / "repo"
    d.mkdir()
    (d / "model-Q8_0.gguf").write_bytes(good_gguf)
    (d / "README.md").write_text("x")
    _convert(d, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").exists()
    (d / "model-F32.gguf").write_bytes(good_gguf)
    err = assert_one_error(run_cli("stream", d, tmp_path / "out2"), "holds 2 GGUF models", "name the file")
    assert "model-F32.gguf" in err and "model-Q8_0.gguf" in err
