"""MLX -> GGUF (``t2mlx stream MLX_DIR OUT.gguf --to gguf``), judged by gguf-py and transformers.

Tiny Llama, Qwen2 and Gemma2 models are built with transformers (float32) and a byte-level BPE tokenizer,
converted to MLX with our own stream (quantized with --q-bits for the quantized cases), then written to
GGUF. Oracles: gguf-py's GGUFReader (names, shapes, types, metadata), transformers' GGUF loader
(``from_pretrained(dir, gguf_file=...)``, which undoes llama.cpp's conventions itself) against the MLX
model's logits (mlx-lm), and gguf-py's own quantizers and dequantizers for the bytes.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import assert_one_error, run_main

gguf = pytest.importorskip("gguf")

PROMPT = [[1, 5, 9, 33, 100, 7, 250, 3]]
KINDS = ("llama", "qwen2", "gemma2")
TEXT = "hello world, the lazy fox jumps"


def _tokenizer(d: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(["hello world, the quick brown fox jumps over the lazy dog. " * 3] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(d))
    return len(fast)


def _hf_model(kind: str, d: Path):
    from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, Qwen2Config

    n = _tokenizer(d)
    common = dict(
        vocab_size=n,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg = {
        "llama": LlamaConfig(**common, rope_parameters={"rope_type": "default", "rope_theta": 50000.0}),
        "qwen2": Qwen2Config(**common, tie_word_embeddings=True),  # q/k/v biases, tied output
        "gemma2": Gemma2Config(**common, head_dim=16),
    }[kind]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.08) if p.dim() >= 2 else p.normal_(0, 0.1)
    model.save_pretrained(str(d))
    return model


def _ok(*args) -> str:
    proc = run_main(*args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """kind -> (HF dir, MLX float32 dir, MLX 8-bit group-32 dir, MLX 4-bit group-64 dir)."""
    root = tmp_path_factory.mktemp("gguf_out")
    out = {}
    for kind in KINDS:
        hf = root / f"hf_{kind}"
        hf.mkdir()
        _hf_model(kind, hf)
        dirs = [hf]
        for name, flags in (("f32", []), ("q8", ["--q-bits", "8", "--q-group-size", "32"]), ("q4", ["--q-bits", "4"])):
            _ok("stream", hf, root / f"mlx_{kind}_{name}", "-q", *flags)
            dirs.append(root / f"mlx_{kind}_{name}")
        out[kind] = tuple(dirs)
    return out


def to_gguf(src, out, *flags) -> dict:
    return json.loads(_ok("stream", src, out, "--to", "gguf", "--json", *flags))


def mlx_logits(mlx_dir) -> np.ndarray:
    import mlx_lm

    model, _ = mlx_lm.load(str(mlx_dir))
    return np.array(model(mx.array(PROMPT)).astype(mx.float32))


def gguf_logits(path: Path) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(PROMPT)).logits.numpy()


def read_tensors(path: Path) -> dict:
    r = gguf.GGUFReader(str(path))
    return {t.name: t for t in r.tensors}, r


def field(r, key):
    f = r.fields[key]
    return f.contents()


def mlx_weights(mlx_dir) -> dict:
    out = {}
    for f in sorted(Path(mlx_dir).glob("*.safetensors")):
        out.update(mx.load(str(f)))
    return out


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """transformers' GGUF loader's inverse of llama.cpp's Q/K permutation: the oracle for ours."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    return LlamaTensorProcessor()._reverse_permute_weights(w, heads, heads)


# ---- float types: metadata, names, the conventions, logits ---------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_f32_reads_back_and_loads_with_the_mlx_logits(models, kind, tmp_path):
    hf, mlx32, _, _ = models[kind]
    out = tmp_path / "m.gguf"
    rep = to_gguf(mlx32, out, "--gguf-type", "f32")
    tensors, r = read_tensors(out)
    arch = {"llama": "llama", "qwen2": "qwen2", "gemma2": "gemma2"}[kind]
    assert field(r, "general.architecture") == arch == rep["architecture"]
    cfg = json.loads((hf / "config.json").read_text())
    assert field(r, f"{arch}.block_count") == 2
    assert field(r, f"{arch}.embedding_length") == 64
    assert field(r, f"{arch}.feed_forward_length") == 128
    assert field(r, f"{arch}.attention.head_count") == 4
    assert field(r, f"{arch}.attention.head_count_kv") == 2
    assert field(r, f"{arch}.context_length") == 128
    assert field(r, f"{arch}.vocab_size") == cfg["vocab_size"] == 300
    assert field(r, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(cfg["rms_norm_eps"])
    theta = cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]
    assert field(r, f"{arch}.rope.freq_base") == pytest.approx(theta)
    assert field(r, "general.file_type") == int(gguf.LlamaFileType.ALL_F32)
    assert field(r, "tokenizer.ggml.model") == "gpt2"
    assert len(field(r, "tokenizer.ggml.tokens")) == 300 and field(r, "tokenizer.ggml.merges")
    assert field(r, "tokenizer.ggml.bos_token_id") == 1 and field(r, "tokenizer.ggml.eos_token_id") == 2
    # every tensor, named as gguf-py's TensorNameMap names the HF one, with the MLX shape reversed (ggml order)
    w = mlx_weights(mlx32)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], 2)
    want = {tmap.get_name(n, try_suffixes=(".weight", ".bias")): n for n in w}
    assert set(tensors) == set(want)
    heads = {"attn_q": 4, "attn_k": 2}
    for gname, t in tensors.items():
        src = np.array(w[want[gname]])
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert tuple(int(x) for x in t.shape) == tuple(reversed(src.shape))
        got = np.array(t.data).reshape(src.shape)
        part = gname.split(".")[-2]
        if kind == "llama" and part in heads:  # permuted: transformers' inverse gives the MLX rows back
            assert not np.array_equal(got, src)
            np.testing.assert_array_equal(unpermute(got, heads[part]), src)
        elif kind == "gemma2" and gname.endswith("norm.weight"):
            np.testing.assert_array_equal(got, src + np.float32(1))
        else:
            np.testing.assert_array_equal(got, src)
    if kind == "qwen2":
        assert "output.weight" not in tensors and "blk.0.attn_q.bias" in tensors  # tied; biases kept
    ref = mlx_logits(mlx32)
    assert np.abs(gguf_logits(out) - ref).max() <= 1e-4
    from transformers import AutoTokenizer

    ours = AutoTokenizer.from_pretrained(str(out.parent), gguf_file=out.name)
    assert ours(TEXT).input_ids == AutoTokenizer.from_pretrained(str(hf))(TEXT).input_ids


@pytest.mark.parametrize("gtype", ["f16", "bf16"])
@pytest.mark.parametrize("kind", KINDS)
def test_f16_bf16_are_the_mlx_model_rounded(models, kind, gtype, tmp_path):
    """The logits of the MLX model whose matrices are rounded to f16/bf16 (1-D tensors stay F32)."""
    hf, mlx32, _, _ = models[kind]
    out = tmp_path / "m.gguf"
    rep = to_gguf(mlx32, out, "--gguf-type", gtype)
    tensors, r = read_tensors(out)
    want = gguf.GGMLQuantizationType[gtype.upper()]
    for name, t in tensors.items():
        assert t.tensor_type == (want if len(t.shape) > 1 else gguf.GGMLQuantizationType.F32), name
    from transformers import AutoModelForCausalLM

    rounded = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    to = torch.float16 if gtype == "f16" else torch.bfloat16
    with torch.no_grad():
        for p in rounded.parameters():
            if p.dim() >= 2:
                p.copy_(p.to(to).float())
        ref = rounded(torch.tensor(PROMPT)).logits.numpy()
    assert np.abs(gguf_logits(out) - ref).max() <= 1e-4
    worst = max(v["max_abs_error"] for v in rep["tensors"].values())
    assert 0 < worst < (1e-3 if gtype == "f16" else 1e-2)


# ---- quantized MLX in, quantized GGUF out --------------------------------------------------


def _deq(w: dict, base: str, bits: int, group: int) -> np.ndarray:
    return np.array(
        mx.dequantize(w[base + ".weight"], w[base + ".scales"], w[base + ".biases"], group_size=group, bits=bits)
    ).astype(np.float32)


@pytest.mark.parametrize(("which", "gtype", "bits", "group"), [("q8", "q8_0", 8, 32), ("q4", "q4_0", 4, 64)])
@pytest.mark.parametrize("kind", KINDS)
def test_quantized_mlx_requantized_with_the_error_reported(models, kind, which, gtype, bits, group, tmp_path):
    """mx.quantize's groups are not symmetric: dequantized, requantized by gguf-py, the error measured."""
    mlx_q = models[kind][2 if which == "q8" else 3]
    out = tmp_path / "m.gguf"
    rep = to_gguf(mlx_q, out, "--gguf-type", gtype)
    tensors, _ = read_tensors(out)
    w = mlx_weights(mlx_q)
    qtype = gguf.GGMLQuantizationType[gtype.upper()]
    arch = rep["architecture"]
    for gname, rec in rep["tensors"].items():
        base = rec["source"][: -len(".weight")]
        if base + ".scales" not in w:
            assert rec["type"] == "F32" and rec["how"] == "cast"
            continue
        assert rec["how"] == "requantize" and tensors[gname].tensor_type == qtype
        src = _deq(w, base, bits, group)
        if rec.get("rotary_permuted_heads"):
            src = _permute_like_llama_cpp(src, rec["rotary_permuted_heads"])
        ours = np.array(tensors[gname].data)
        # the bytes gguf-py writes for the dequantized MLX weight, and the error the report states
        assert ours.tobytes() == gguf.quants.quantize(src, qtype).tobytes()
        back = gguf.quants.dequantize(ours, qtype).reshape(src.shape)
        assert rec["max_abs_error"] == float(np.abs(back - src).max())
        assert rec["max_rel_error"] == pytest.approx(rec["max_abs_error"] / float(np.abs(src).max()))
    ref = mlx_logits(mlx_q)
    rel = float(np.abs(gguf_logits(out) - ref).max() / np.abs(ref).max())
    print(f"MEASURED {arch} {which}->{gtype}: max |logit diff| / max |logit| = {rel:.2e}")
    # as large as quantizing once: MLX's own 8-bit gemma2 is 1.6e-2 of its logits from float32
    assert rel <= (5e-2 if gtype == "q8_0" else 2.5e-1), (arch, rel)


def _permute_like_llama_cpp(w: np.ndarray, heads: int) -> np.ndarray:
    """The forward permutation, as the inverse of transformers' inverse (checked to round-trip)."""
    rows = w.shape[0] // heads
    out = w.reshape(heads, 2, rows // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    assert np.array_equal(unpermute(out, heads), w)
    return out


def _symmetric_mlx(mlx32: Path, dst: Path, bits: int, scale_dtype=mx.float32) -> Path:
    """An MLX checkpoint quantized the way a GGUF Q8_0/Q4_0 is (bias = -2^(bits-1) * scale, groups of 32):
    the codes and scales gguf-py's own quantizer gives, as MLX affine triples."""
    import shutil

    from torch2mlx.core.quant import pack_codes

    dst.mkdir()
    for f in mlx32.iterdir():
        if f.suffix == ".json" and f.name not in ("model.safetensors.index.json", "torch2mlx.json"):
            shutil.copy(f, dst / f.name)
    qtype = gguf.GGMLQuantizationType.Q8_0 if bits == 8 else gguf.GGMLQuantizationType.Q4_0
    out = {}
    for name, a in mlx_weights(mlx32).items():
        x = np.array(a)
        if x.ndim != 2 or not name.endswith(".weight") or "norm" in name:
            out[name] = a
            continue
        blocks = gguf.quants.quantize(x, qtype).reshape(x.shape[0], -1, 34 if bits == 8 else 18)
        d = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        if bits == 8:
            codes = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        else:
            qs = blocks[..., 2:]
            codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
        base = name[: -len(".weight")]
        out[name] = mx.array(pack_codes(codes.reshape(x.shape[0], -1), bits))
        out[base + ".scales"] = mx.array(d).astype(scale_dtype)
        out[base + ".biases"] = mx.array(-(2.0 ** (bits - 1)) * d).astype(scale_dtype)
    mx.save_safetensors(str(dst / "model.safetensors"), out, metadata={"format": "mlx"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg["quantization"] = cfg["quantization_config"] = {"group_size": 32, "bits": bits, "mode": "affine"}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("kind", KINDS)
def test_symmetric_groups_of_32_repack_losslessly(models, kind, bits, tmp_path):
    _, mlx32, _, _ = models[kind]
    sym = _symmetric_mlx(mlx32, tmp_path / "sym", bits)
    gtype = "q8_0" if bits == 8 else "q4_0"
    out = tmp_path / "m.gguf"
    rep = to_gguf(sym, out, "--gguf-type", gtype)
    tensors, _ = read_tensors(out)
    w = mlx_weights(sym)
    f32 = mlx_weights(mlx32)
    qtype = gguf.GGMLQuantizationType[gtype.upper()]
    repacked = 0
    for gname, rec in rep["tensors"].items():
        base = rec["source"][: -len(".weight")]
        if base + ".scales" not in w:
            continue
        assert rec["how"] == "repack" and "max_abs_error" not in rec
        repacked += 1
        data = np.array(tensors[gname].data)
        exact = _deq(w, base, bits, 32)  # mx.dequantize of the MLX input, float32 scales
        ref = f32[rec["source"]]
        h = rec.get("rotary_permuted_heads")
        if h:
            exact, ref = _permute_like_llama_cpp(exact, h), _permute_like_llama_cpp(np.array(ref), h)
        np.testing.assert_array_equal(gguf.quants.dequantize(data, qtype).reshape(exact.shape), exact)
        # byte for byte what gguf-py writes for the weight MLX's codes came from
        assert data.tobytes() == gguf.quants.quantize(np.array(ref), qtype).tobytes()
    assert repacked == {"llama": 16, "qwen2": 15, "gemma2": 15}[kind]  # every matrix; gemma2 and qwen2 tie the output
    assert np.abs(gguf_logits(out) - mlx_logits(sym)).max() <= 1e-4


def test_one_asymmetric_group_sends_the_tensor_to_requantization(models, tmp_path):
    _, mlx32, _, _ = models["llama"]
    sym = _symmetric_mlx(mlx32, tmp_path / "sym", 8)
    w = dict(mlx_weights(sym))
    name = "model.layers.1.mlp.down_proj.biases"
    b = np.array(w[name])
    b[-1, -1] += np.float32(1e-3)  # the last group of the last block
    w[name] = mx.array(b)
    mx.save_safetensors(str(sym / "model.safetensors"), w, metadata={"format": "mlx"})
    # symmetric, but a scale float16 cannot hold (Q8_0's d is float16)
    name = "model.layers.0.self_attn.o_proj"
    sc = np.array(w[name + ".scales"])
    sc[0, 0] = np.float32(sc[0, 0]) * np.float32(1 + 2**-20)
    w[name + ".scales"], w[name + ".biases"] = mx.array(sc), mx.array(np.float32(-128) * sc)
    mx.save_safetensors(str(sym / "model.safetensors"), w, metadata={"format": "mlx"})
    rep = to_gguf(sym, tmp_path / "m.gguf", "--gguf-type", "q8_0")
    hows = {r["source"]: r["how"] for r in rep["tensors"].values()}
    assert hows["model.layers.1.mlp.down_proj.weight"] == "requantize"
    assert hows["model.layers.0.self_attn.o_proj.weight"] == "requantize"
    assert hows["model.layers.0.mlp.down_proj.weight"] == "repack"


def test_blocks_stream_and_give_the_same_file(models, tmp_path):
    """Written a few rows at a time (heads kept whole for the permutation), byte for byte the same file."""
    from torch2mlx.formats.checkpoint import open_checkpoint
    from torch2mlx.formats.data import DataReader

    tg = importlib.import_module("torch2mlx.stream.to_gguf")  # the module (the package exports the function)
    from torch2mlx.stream.to_gguf_vocab import tokenizer_metadata
    from torch2mlx.stream.writers import gguf_file

    _, _, mlx8, _ = models["llama"]
    files, biggest = [], {}
    for chunk in (16 << 20, 700):
        ck = open_checkpoint(str(mlx8))
        with DataReader() as reader:

            def counted(e, start, stop, axis=0, chunk=chunk, read_rows=reader.read_rows):
                a = read_rows(e, start, stop, axis)
                biggest[chunk] = max(biggest.get(chunk, 0), a.nbytes)
                return a

            reader.read_rows = counted
            p = tg.plan(ck, reader, "q8_0")
            p.metadata += tokenizer_metadata(ck.folder, p.arch, 300).metadata
            path = tmp_path / f"c{chunk}.gguf"
            gguf_file.write(p, str(path), reader, chunk=chunk)
        files.append(path.read_bytes())
    assert files[0] == files[1]
    # whole tensors at 16 MiB; at 700 bytes a read is a head's 16 rows of 64 floats (the permutation's unit)
    assert biggest[16 << 20] == 300 * 64 * 4 and biggest[700] == 16 * 64 * 4


# ---- what it refuses -----------------------------------------------------------------------


def test_bad_input_is_one_line(models, tmp_path):
    hf, mlx32, _, _ = models["llama"]
    out = tmp_path / "m.gguf"
    cases = [
        (["--gguf-type", "q3_x"], "--gguf-type must be one of"),
        (["--gguf-type", "q8_0", "--to", "torch"], "--gguf-type applies only with --to gguf"),
        (["--dtype", "float16"], "do not apply with --to gguf"),
        (["--format", "bin"], "--to gguf writes --format gguf"),
    ]
    for flags, msg in cases:
        args = ["stream", mlx32, out] + (["--to", "gguf"] if "--to" not in flags else []) + flags
        assert_one_error(run_main(*args), msg)
    assert_one_error(run_main("stream", mlx32, tmp_path, "--to", "gguf"), "is a directory")
    assert_one_error(run_main("stream", mlx32, tmp_path / "m.bin", "--to", "gguf"), "ending in .gguf")
    assert_one_error(run_main("stream", hf, out, "--to", "gguf"), "not an MLX checkpoint")
    assert_one_error(run_main("stream", "--to", "gguf", "--format", "gguf", mlx32, tmp_path / "x"), "ending in .gguf")
    # an architecture llama.cpp's names are not known for here
    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(mlx32, odd)
    cfg = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps(dict(cfg, model_type="bert")))
    assert_one_error(run_main("stream", odd, out, "--to", "gguf"), "model_type 'bert'")
    (odd / "config.json").write_text(json.dumps(cfg))
    tj = json.loads((odd / "tokenizer.json").read_text())
    (odd / "tokenizer.json").write_text(json.dumps(dict(tj, model={"type": "WordLevel", "vocab": {}})))
    assert_one_error(run_main("stream", odd, out, "--to", "gguf"), "a WordLevel tokenizer is not written")
    (odd / "tokenizer.json").write_text(json.dumps(dict(tj, pre_tokenizer=None, decoder=None)))
    assert_one_error(run_main("stream", odd, out, "--to", "gguf"), "neither byte-level nor with byte fallback")
    (odd / "tokenizer.json").write_text("{")
    assert_one_error(run_main("stream", odd, out, "--to", "gguf"), "unreadable tokenizer")
    (odd / "tokenizer.json").unlink()
    assert_one_error(run_main("stream", odd, out, "--to", "gguf"), "no tokenizer.json")
    assert not out.exists()
    _ok("stream", mlx32, out, "--to", "gguf", "-q")
    assert_one_error(run_main("stream", mlx32, out, "--to", "gguf"), "exists; rerun with --overwrite")
    _ok("stream", mlx32, out, "--to", "gguf", "-q", "--overwrite")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_dry_run_plans_without_writing(models, tmp_path):
    out = tmp_path / "m.gguf"
    rep = to_gguf(models["gemma2"][2], out, "--gguf-type", "q8_0", "--dry-run")
    assert rep["dry_run"] and not out.exists() and rep["tensors"]["token_embd.weight"]["type"] == "Q8_0"
    assert rep["tensors"]["output_norm.weight"] == {
        "source": "model.norm.weight",
        "type": "F32",
        "shape": [64],
        "how": "",
        "plus_one": True,
    }


def test_the_cli_offers_gguf_from_the_sinks_table():
    from torch2mlx.cli import build_parser
    from torch2mlx.stream import sinks

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["stream"]
    to = next(a for a in sub._actions if a.dest == "to")
    assert tuple(to.choices) == sinks.directions() == ("mlx", "torch", "gguf")
    assert sinks.names(sinks.GGUF) == ("gguf",)


def test_without_torch(models, tmp_path):
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None
        from torch2mlx.cli import main
        rc = main(sys.argv[1:])
        leaked = sorted(m for m in sys.modules if m.startswith("torch.") and sys.modules[m] is not None)
        print("RC", rc, leaked)
    """)
    out = tmp_path / "m.gguf"
    args = ["stream", str(models["qwen2"][3]), str(out), "--to", "gguf", "--gguf-type", "q4_0", "-q"]
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    assert proc.returncode == 0 and "RC 0 []" in proc.stdout, proc.stdout + proc.stderr
    assert out.exists()


def test_mlx_lm_quantized_output(models, tmp_path):
    """mlx-lm's own 4-bit output (no manifest; bits from config.json; its tokenizer adds a token past the
    embedding): requantized to q4_0, the extra token left out with a warning, transformers loads it."""
    from mlx_lm.convert import convert as mlx_lm_convert

    hf = models["qwen2"][0]
    q = tmp_path / "mlxlm"
    mlx_lm_convert(str(hf), str(q), quantize=True, q_group_size=64, q_bits=4)
    out = tmp_path / "m.gguf"
    rep = to_gguf(q, out, "--gguf-type", "q4_0")
    assert {r["how"] for r in rep["tensors"].values()} == {"requantize", "cast"}
    tokens = json.loads((q / "tokenizer.json").read_text())["added_tokens"]
    if any(t["id"] >= 300 for t in tokens):
        assert any("beyond the model's 300 embedding rows" in w for w in rep["warnings"])
    _, r = read_tensors(out)
    assert len(field(r, "tokenizer.ggml.tokens")) == 300
    ref = mlx_logits(q)
    assert np.abs(gguf_logits(out) - ref).max() / np.abs(ref).max() <= 2.5e-1


def test_sentencepiece_style_tokenizer(models, tmp_path):
    """A byte-fallback BPE vocabulary (Llama 2, Mistral, Gemma) as tokenizer.ggml.model "llama": transformers'
    GGUF loader tokenizes as the original (transformers' own LlamaTokenizer, saved) does."""
    import shutil

    from transformers import AutoTokenizer, LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{i:02X}>": 3 + i for i in range(256)})
    for ch in "\u2581helowrdtqucikbfxjmpsvazyg,.":
        vocab.setdefault(ch, len(vocab))
    merges = [("\u2581", "t"), ("h", "e"), ("\u2581t", "he"), ("l", "l"), ("o", "r"), ("\u2581", "w")]
    merges += [("\u2581w", "or"), ("\u2581", "h"), ("e", "ll"), ("\u2581h", "ell"), ("\u2581hell", "o")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    while len(vocab) < 300:
        vocab[f"x{len(vocab)}"] = len(vocab)
    src = tmp_path / "spm"
    LlamaTokenizer(vocab=vocab, merges=merges).save_pretrained(str(src))
    for f in models["llama"][1].iterdir():
        if not f.name.startswith("tokenizer"):
            shutil.copy(f, src / f.name)
    out = tmp_path / "m.gguf"
    rep = to_gguf(src, out)
    assert rep["tokenizer"].startswith("llama (sentencepiece-style BPE")
    _, r = read_tensors(out)
    assert field(r, "tokenizer.ggml.model") == "llama"
    types = field(r, "tokenizer.ggml.token_type")
    assert types[3:259] == [int(gguf.TokenType.BYTE)] * 256 and types[1] == int(gguf.TokenType.CONTROL)
    assert field(r, "tokenizer.ggml.add_bos_token") is False  # as this tokenizer.json says (no template)
    ref, ours = (
        AutoTokenizer.from_pretrained(str(src)),
        AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=out.name),
    )
    for text in (TEXT, " the  hello\n w\u00f6rld"):
        assert ours(text).input_ids == ref(text).input_ids


@pytest.mark.parametrize("scale_dtype", [mx.bfloat16, mx.float16])
def test_repack_with_half_precision_scales(models, scale_dtype, tmp_path):
    """Scales stored in bfloat16/float16 (mlx-lm keeps them in the model's dtype): still exact in Q8_0's
    float16 d, so still a repack; gguf-py's values are the MLX affine map's, scale * (code - 128), exactly."""
    _, mlx32, _, _ = models["llama"]
    sym = _symmetric_mlx(mlx32, tmp_path / "sym", 8, scale_dtype)
    rep = to_gguf(sym, tmp_path / "m.gguf", "--gguf-type", "q8_0")
    tensors, _ = read_tensors(tmp_path / "m.gguf")
    w = mlx_weights(sym)
    for gname, rec in rep["tensors"].items():
        base = rec["source"][: -len(".weight")]
        if base + ".scales" not in w:
            continue
        assert rec["how"] == "repack", gname
        s, b = w[base + ".scales"].astype(mx.float32), w[base + ".biases"].astype(mx.float32)
        exact = np.array(mx.dequantize(w[base + ".weight"], s, b, group_size=32, bits=8))
        if rec.get("rotary_permuted_heads"):
            exact = _permute_like_llama_cpp(exact, rec["rotary_permuted_heads"])
        got = gguf.quants.dequantize(np.array(tensors[gname].data), gguf.GGMLQuantizationType.Q8_0)
        np.testing.assert_array_equal(got.reshape(exact.shape), exact)


def test_a_failure_while_writing_leaves_nothing(models, tmp_path, monkeypatch):
    """No space left half-way: one line, no OUT, no temporary file; an existing OUT stays as it was."""
    import errno

    from torch2mlx.stream.writers import gguf_file

    values, calls = gguf_file._values, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return values(*a, **k)

    monkeypatch.setattr(gguf_file, "_values", failing)
    out = tmp_path / "m.gguf"
    assert_one_error(run_main("stream", models["llama"][1], out, "--to", "gguf"), "no space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    out.write_bytes(b"old")
    calls.clear()
    assert_one_error(run_main("stream", models["llama"][1], out, "--to", "gguf", "--overwrite"), "no space left")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"] and out.read_bytes() == b"old"
