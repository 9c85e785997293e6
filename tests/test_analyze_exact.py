"""t2mlx stream on checkpoints saved from real (small, randomly initialized) torch models writes exactly the
layouts the registry claims: every output equals the layout change applied in torch, bit for bit, and MLX
layers loaded with the converted weights compute what the torch layers compute."""

import json

import mlx.core as mx
import mlx.nn as mnn
import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.numpy import load_file

from torch2mlx.cli import main


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=96, n_positions=24, bos_token_id=0, eos_token_id=0)
    )


def _whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    return WhisperForConditionalGeneration(
        WhisperConfig(
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            num_mel_bins=16,
            vocab_size=96,
            max_source_positions=16,
            max_target_positions=16,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
            suppress_tokens=[],
            begin_suppress_tokens=[],
        )
    )


def _resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    return ResNetForImageClassification(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck", num_labels=3)
    )


def _mobilenet():
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    return MobileNetV2ForImageClassification(MobileNetV2Config(depth_multiplier=0.25, image_size=32, num_labels=3))


def _torch_layout(model) -> dict:
    """What MLX stores for each state-dict tensor, computed in torch from the module types (not the registry)."""
    from transformers.pytorch_utils import Conv1D

    out = {}
    for mname, mod in model.named_modules():
        own = dict(mod.named_parameters(recurse=False)) | dict(mod.named_buffers(recurse=False))
        for pname, t in own.items():
            name = f"{mname}.{pname}" if mname else pname
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and pname == "num_batches_tracked":
                continue
            if pname == "weight" and isinstance(mod, nn.Conv2d):
                t = t.permute(0, 2, 3, 1)
            elif pname == "weight" and isinstance(mod, nn.Conv1d):
                t = t.permute(0, 2, 1)
            elif pname == "weight" and isinstance(mod, Conv1D):
                t = t.t()
            out[name] = t.detach().contiguous().numpy()
    return out


def _randomize_stats(model):
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_()
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    return model.eval()


def _save(model, path, pickle=False):
    model.save_pretrained(path)
    if pickle:  # the same checkpoint as a torch.save pickle, read by the torch-free unpickler
        (path / "model.safetensors").unlink()
        torch.save(
            {
                k: v.contiguous()
                for k, v in model.state_dict().items()
                if k in _torch_layout(model) or k.endswith("num_batches_tracked")
            },
            path / "pytorch_model.bin",
        )


def _checkpoint_names(path):
    if (path / "model.safetensors").exists():
        with safe_open(str(path / "model.safetensors"), "np") as f:
            return set(f.keys())
    return set(torch.load(path / "pytorch_model.bin", weights_only=True))


@pytest.mark.parametrize(
    "make,pickle",
    [(_gpt2, False), (_whisper, False), (_resnet, True), (_mobilenet, False)],
    ids=["gpt2-conv1d", "whisper", "resnet-pickle", "mobilenet_v2"],
)
def test_stream_writes_the_layouts_torch_computes(tmp_path, make, pickle):
    torch.manual_seed(0)
    model = _randomize_stats(make())
    src, out = tmp_path / "src", tmp_path / "out"
    _save(model, src, pickle)
    assert main(["stream", str(src), str(out), "-q"]) == 0
    got = load_file(str(out / "model.safetensors"))
    want = _torch_layout(model)
    saved = _checkpoint_names(src)
    assert set(got) == {n for n in saved if not n.endswith("num_batches_tracked")}
    for name, arr in got.items():
        assert arr.dtype == want[name].dtype and arr.shape == want[name].shape, name
        np.testing.assert_array_equal(arr, want[name], err_msg=name)
    manifest = json.loads((out / "torch2mlx.json").read_text())
    assert {r["rule_source"] for r in manifest["tensors"].values()} == {"model"}
    dropped = {d["source"] for d in manifest["dropped"]}
    assert dropped == {n for n in saved if n.endswith("num_batches_tracked")}


def test_mlx_layers_compute_what_torch_layers_compute_with_streamed_weights(tmp_path):
    torch.manual_seed(0)
    gpt2, whisper, resnet = _gpt2().eval(), _whisper().eval(), _randomize_stats(_resnet())
    weights = {}
    for tag, model in (("g", gpt2), ("w", whisper), ("r", resnet)):
        _save(model, tmp_path / tag)
        assert main(["stream", str(tmp_path / tag), str(tmp_path / f"{tag}-mlx"), "-q"]) == 0
        weights[tag] = load_file(str(tmp_path / f"{tag}-mlx" / "model.safetensors"))

    def check(torch_layer, mlx_layer, prefix, w, x, channels_last=False):
        mlx_layer.load_weights(
            [(k[len(prefix) :], mx.array(v)) for k, v in w.items() if k.startswith(prefix)], strict=True
        )
        with torch.no_grad():
            want = torch_layer(torch.from_numpy(x)).numpy()
        xm = np.moveaxis(x, 1, -1) if channels_last else x
        got = np.array(mlx_layer(mx.array(xm)))
        np.testing.assert_allclose(got, np.moveaxis(want, 1, -1) if channels_last else want, rtol=1e-4, atol=1e-5)

    rng = np.random.default_rng(0)
    check(
        gpt2.transformer.h[0].attn.c_attn,
        mnn.Linear(32, 96),
        "transformer.h.0.attn.c_attn.",
        weights["g"],
        rng.standard_normal((3, 32)).astype(np.float32),
    )
    check(
        whisper.model.encoder.conv2,
        mnn.Conv1d(32, 32, 3, stride=2, padding=1),
        "model.encoder.conv2.",
        weights["w"],
        rng.standard_normal((2, 32, 12)).astype(np.float32),
        channels_last=True,
    )
    stem = resnet.resnet.embedder.embedder
    check(
        stem.convolution,
        mnn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False),
        "resnet.embedder.embedder.convolution.",
        weights["r"],
        rng.standard_normal((1, 3, 16, 16)).astype(np.float32),
        channels_last=True,
    )
    bn = mnn.BatchNorm(8)
    bn.eval()
    check(
        stem.normalization,
        bn,
        "resnet.embedder.embedder.normalization.",
        weights["r"],
        rng.standard_normal((2, 8, 4, 4)).astype(np.float32),
        channels_last=True,
    )
