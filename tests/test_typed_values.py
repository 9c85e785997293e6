"""User code sees typed values: a bfloat16 tensor never reaches a transform, tensors() or ShardWriter as raw bits.

torch is the oracle: a tied bfloat16 Qwen2 checkpoint saved by transformers, a transform that
casts the norms to float32, and the written values compared bit for bit with torch's ``.float()``.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch
from helpers import INDEX, assert_same, canon_mx, canon_torch, read_json, read_output, rehash_shard, run_cli
from llm_checkpoints import build_model
from safetensors.torch import load_file

import torch2mlx
import torch2mlx.stream as stream
from torch2mlx.stream.verify import verify


@pytest.fixture(scope="module")
def tied_bf16(tmp_path_factory):
    """A Qwen2 with tie_word_embeddings, in bfloat16, as save_pretrained writes it."""
    d = tmp_path_factory.mktemp("qwen2-tied-bf16")
    model = build_model("qwen2").to(torch.bfloat16)
    model.save_pretrained(str(d))
    return d, load_file(str(d / "model.safetensors"))


def _norms_to_f32(name, array, dtype):
    if "norm" in name:
        return name, array.astype(mx.float32), "float32"
    return name, array, dtype


def test_transform_casting_bf16_norms_to_float32_writes_torchs_values(tied_bf16, tmp_path):
    src, sd = tied_bf16
    seen = {}

    def transform(name, array, dtype):
        seen[name] = (array.dtype, dtype)
        return _norms_to_f32(name, array, dtype)

    out = tmp_path / "out"
    res = stream.convert(src, out, hook=transform)
    norms = sorted(n for n in sd if "norm" in n)
    assert len(norms) == 5 and all(seen[n] == (mx.bfloat16, "bfloat16") for n in norms)
    got = read_output(out)
    assert set(got) == set(sd)
    for name, t in sd.items():
        want = t.float() if "norm" in name else t  # torch's own widening, bit for bit
        assert_same(got[name], canon_torch(want), name, nan_bits=True)
    assert read_json(out / INDEX)["weight_map"].keys() == sd.keys()
    # the report counts what was written: five norms now take four bytes an element
    assert res.to_dict()["bytes_out"] == sum(t.numel() * (4 if "norm" in n else 2) for n, t in sd.items())


def test_verify_of_a_transform_output_names_what_it_could_not_recompute(tied_bf16, tmp_path):
    src, sd = tied_bf16
    out = tmp_path / "out"
    stream.convert(src, out, hook=_norms_to_f32)
    rep = verify(src, out)
    norms = sorted(n for n in sd if "norm" in n)
    assert rep.ok and sorted(n for n, _ in rep.unchecked) == norms
    assert rep.checked_tensors == len(sd) - len(norms)  # the untouched tensors are recomputed from the source
    proc = run_cli("verify", src, out)
    assert proc.returncode == 0, proc.stderr
    head = proc.stdout.splitlines()[0]
    assert not head.endswith(": OK") and f"{len(norms)} tensor(s) not recomputed" in head, proc.stdout
    assert "user transform" in proc.stdout and all(n in proc.stdout for n in norms), proc.stdout
    # an untouched tensor that no longer matches its source is still caught
    from safetensors.torch import save_file

    shard = out / "model.safetensors"
    tensors = load_file(str(shard))
    tensors["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"].flip(0).contiguous()
    save_file(tensors, str(shard), metadata={"format": "mlx"})
    rehash_shard(out, "model.safetensors")
    rep = verify(src, out)
    assert not rep.ok and any("model.embed_tokens.weight" in p for p in rep.problems), rep.problems


def test_tensors_yields_typed_bfloat16(tied_bf16):
    src, sd = tied_bf16
    got = dict(stream.open(src).tensors())
    assert set(got) == set(sd)
    for name, t in sd.items():
        assert got[name].dtype == mx.bfloat16, name
        assert_same(canon_mx(got[name]), canon_torch(t), name, nan_bits=True)
    # arithmetic on what the user got is arithmetic on values (1.0 stays 1.0, not 16256.0)
    norm = got["model.norm.weight"].astype(mx.float32)
    assert np.array_equal(np.array(norm), sd["model.norm.weight"].float().numpy())


def test_shard_writer_takes_mx_torch_and_numpy_values(tmp_path):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(5, 7, generator=g).to(torch.bfloat16)
    f8 = torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn)
    wide = torch.randn(3, 3, generator=g)
    out = tmp_path / "w"
    with stream.ShardWriter(out) as w:
        w.add("mx_bf16", mx.array(t.float().numpy()).astype(mx.bfloat16))
        w.add("torch_bf16", t)
        w.add("torch_f8", f8)
        w.add("param", torch.nn.Parameter(wide.clone()))
        w.add("np_cast", wide.numpy(), dtype="bfloat16")  # values cast exactly, as torch's .to()
        w.add("mx_cast", mx.array(wide.numpy()), dtype=mx.float16)
        with pytest.raises(torch2mlx.Torch2MLXError, match="never read as the raw bits of bfloat16"):
            w.add("bits", t.view(torch.int16).numpy().view(np.uint16), dtype="bfloat16")
    want = {"mx_bf16": t, "torch_bf16": t, "param": wide, "np_cast": wide.to(torch.bfloat16), "mx_cast": wide.half()}
    st = load_file(str(out / "model.safetensors"))
    assert set(st) == set(want) | {"torch_f8"}
    assert torch.equal(st["torch_f8"].view(torch.uint8), f8.view(torch.uint8))
    for name, exp in want.items():
        assert st[name].dtype == exp.dtype and torch.equal(st[name].view(torch.uint8), exp.view(torch.uint8)), name


def test_transform_returning_torch_and_numpy(tied_bf16, tmp_path):
    """A transform may hand back a torch tensor or numpy values; both land as written."""
    src, sd = tied_bf16

    def transform(name, array, dtype):
        if name == "model.norm.weight":
            return name, torch.from_numpy(np.array(array.astype(mx.float32))).to(torch.bfloat16) * 2
        if name == "model.layers.0.input_layernorm.weight":
            return name, np.array(array.astype(mx.float32)), "float16"
        return name, array

    out = tmp_path / "out"
    stream.convert(src, out, hook=transform)
    st = load_file(str(out / "model.safetensors"))
    assert torch.equal(st["model.norm.weight"], sd["model.norm.weight"] * 2)
    assert torch.equal(st["model.layers.0.input_layernorm.weight"], sd["model.layers.0.input_layernorm.weight"].half())


def test_hook_with_quantization_is_refused_not_half_written(tied_bf16, tmp_path):
    """A quantized weight is three tensors; a hook sees one, so the scales and biases were lost."""
    src, _ = tied_bf16
    out = tmp_path / "out"
    with pytest.raises(torch2mlx.Torch2MLXError, match="hook cannot be combined with quantization"):
        stream.convert(src, out, hook=lambda n, a, d: (n, a, d), q_bits=4)
    assert not (out / INDEX).exists()
