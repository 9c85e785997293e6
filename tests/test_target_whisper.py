"""--target mlx-whisper: transformers' and OpenAI's Whisper checkpoints -> what mlx_whisper loads.

transformers is the oracle: a tiny random Whisper's encoder output and decoder logits on the log-mel
spectrogram of a generated tone are compared with mlx-whisper's on our output.
"""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from conftest import SEED
from helpers import run_cli
from test_no_torch import no_torch_env  # noqa: F401 - the fixture

mlx_whisper = pytest.importorskip("mlx_whisper")
from mlx_whisper import audio as mw_audio  # noqa: E402
from mlx_whisper.load_models import load_model  # noqa: E402

TOL = 1e-4
DIMS = dict(
    n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4, n_audio_layer=2,
    n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=4, n_text_layer=2,
)  # fmt: skip
# OpenAI's names <- transformers' (the inverse of transformers' convert_openai_to_hf mapping)
HF_TO_OPENAI = (
    ("model.", ""),
    (".layers.", ".blocks."),
    (".self_attn.q_proj.", ".attn.query."),
    (".self_attn.k_proj.", ".attn.key."),
    (".self_attn.v_proj.", ".attn.value."),
    (".self_attn.out_proj.", ".attn.out."),
    (".encoder_attn.q_proj.", ".cross_attn.query."),
    (".encoder_attn.k_proj.", ".cross_attn.key."),
    (".encoder_attn.v_proj.", ".cross_attn.value."),
    (".encoder_attn.out_proj.", ".cross_attn.out."),
    (".self_attn_layer_norm.", ".attn_ln."),
    (".encoder_attn_layer_norm.", ".cross_attn_ln."),
    (".final_layer_norm.", ".mlp_ln."),
    (".fc1.", ".mlp.0."),
    (".fc2.", ".mlp.2."),
    ("encoder.layer_norm.", "encoder.ln_post."),
    ("decoder.layer_norm.", "decoder.ln."),
    ("decoder.embed_tokens.", "decoder.token_embedding."),
    ("encoder.embed_positions.weight", "encoder.positional_embedding"),
    ("decoder.embed_positions.weight", "decoder.positional_embedding"),
)


def openai_name(name: str) -> str:
    for a, b in HF_TO_OPENAI:
        name = name.replace(a, b, 1) if a == "model." else name.replace(a, b)
    return name


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(SEED)
    cfg = WhisperConfig(
        d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=256, decoder_ffn_dim=256, num_mel_bins=80, max_source_positions=1500,
        max_target_positions=448,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(cfg).eval()
    d = tmp_path_factory.mktemp("whisper") / "hf"
    model.save_pretrained(d)
    return model, d


@pytest.fixture(scope="module")
def reference(hf):
    """transformers' model with the encoder positions mlx-whisper computes for itself (``sinusoids``, not
    loadable: it is not a parameter there). The checkpoint's table is the same formula rounded differently."""
    import copy

    from mlx_whisper.whisper import sinusoids

    model = copy.deepcopy(hf[0])
    table = model.model.encoder.embed_positions.weight
    computed = torch.from_numpy(np.array(sinusoids(*table.shape)))
    assert (table - computed).abs().max() <= 2e-4  # float32 rounding of sin/cos of up to 1500 radians
    with torch.no_grad():
        table.copy_(computed)
    return model


@pytest.fixture(scope="module")
def tone():
    """Two seconds of a 440 Hz tone and its log-mel spectrogram as Whisper takes it (30 s, 3000 frames)."""
    t = np.arange(2 * mw_audio.SAMPLE_RATE) / mw_audio.SAMPLE_RATE
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    mel = mw_audio.log_mel_spectrogram(mw_audio.pad_or_trim(mx.array(wave)), n_mels=80)
    return wave, np.array(mel)  # (3000, 80)


TOKENS = [50258, 50259, 50359, 50363, 440, 1002, 13]  # <|startoftranscript|><|en|><|transcribe|>... text


def hf_outputs(model, mel):
    with torch.no_grad():
        feats = torch.from_numpy(mel.T.copy())[None]  # (1, n_mels, frames)
        enc = model.model.encoder(feats).last_hidden_state
        logits = model(input_features=feats, decoder_input_ids=torch.tensor([TOKENS])).logits
    return enc.numpy(), logits.numpy()


def mlx_outputs(out, mel):
    m = load_model(str(out))
    enc = m.embed_audio(mx.array(mel)[None])
    logits = m.logits(mx.array([TOKENS]), enc)
    return np.array(enc), np.array(logits)


def assert_same_outputs(model, out, mel):
    enc_ref, logits_ref = hf_outputs(model, mel)
    enc, logits = mlx_outputs(out, mel)
    assert enc.shape == enc_ref.shape and logits.shape == logits_ref.shape
    assert np.abs(enc - enc_ref).max() <= TOL
    assert np.abs(logits - logits_ref).max() <= TOL


def test_hf_whisper_default_target_loads_and_matches_transformers(hf, reference, tone, tmp_path):
    model, src = hf
    out = tmp_path / "out"
    proc = run_cli("stream", src, out, "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    assert "target: mlx-whisper" in proc.stdout
    assert "model.encoder.embed_positions.weight: mlx-whisper computes" in proc.stdout
    assert (out / "weights.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert json.loads((out / "config.json").read_text()) == {"model_type": "whisper", **DIMS}
    assert json.loads((out / "torch2mlx.json").read_text())["target"] == "mlx-whisper"
    w = mx.load(str(out / "weights.safetensors"))
    # conv weights channels-last (out, kernel, in), as mlx.nn.Conv1d holds them
    ref = model.state_dict()["model.encoder.conv1.weight"].numpy()
    assert np.array_equal(np.array(w["encoder.conv1.weight"]), ref.transpose(0, 2, 1))
    assert np.array_equal(
        np.array(w["decoder.blocks.1.mlp2.weight"]), model.state_dict()["model.decoder.layers.1.fc2.weight"].numpy()
    )
    assert_same_outputs(reference, out, tone[1])

    # asked for by name: the same bytes; --json says the target too
    named = tmp_path / "named"
    proc = run_cli("stream", src, named, "--target", "mlx-whisper", "--json", "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["target"] == "mlx-whisper"
    assert (named / "weights.safetensors").read_bytes() == (out / "weights.safetensors").read_bytes()


def test_bin_source_float16_by_default(hf, reference, tone, tmp_path):
    model, src = hf
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text((src / "config.json").read_text())
    torch.save(model.state_dict(), d / "pytorch_model.bin")  # with proj_out.weight, the tied copy
    out = tmp_path / "out"
    proc = run_cli("stream", d, out)  # float32 source: float16 unless --dtype says otherwise
    assert proc.returncode == 0, proc.stderr
    assert "float weights written as float16, as mlx_whisper.transcribe computes" in proc.stdout
    assert json.loads((out / "torch2mlx.json").read_text())["options"]["dtype"] == "keep"  # as given
    w = mx.load(str(out / "weights.safetensors"))
    assert {v.dtype for v in w.values()} == {mx.float16}
    assert "proj_out.weight" not in w and "encoder.positional_embedding" not in w
    m = load_model(str(out), dtype=mx.float16)
    logits = m.logits(mx.array([TOKENS]), m.embed_audio(mx.array(tone[1], dtype=mx.float16)[None]))
    _, ref = hf_outputs(reference, tone[1])
    assert np.abs(np.array(logits.astype(mx.float32)) - ref).max() < 0.05  # float16 rounding only


def test_transcribe_runs_on_the_output(hf, tone, tmp_path):
    out, out32 = tmp_path / "out", tmp_path / "out32"
    assert run_cli("stream", hf[1], out).returncode == 0
    res = mlx_whisper.transcribe(tone[0], path_or_hf_repo=str(out), temperature=0.0, language="en")
    assert isinstance(res, dict) and isinstance(res["text"], str)  # random weights: the text is noise
    assert run_cli("stream", hf[1], out32, "--dtype", "float32").returncode == 0
    res = mlx_whisper.transcribe(tone[0], path_or_hf_repo=str(out32), temperature=0.0, language="en", fp16=False)
    assert isinstance(res["text"], str)


def test_quantized_as_mlx_whisper_quantizes(hf, tmp_path):
    """--q-bits: the loader rebuilds QuantizedLinear/QuantizedEmbedding; the codes are nn.quantize's own."""
    import mlx.nn as nn

    float_out, q_out = tmp_path / "f", tmp_path / "q"
    assert run_cli("stream", hf[1], float_out, "--dtype", "float32").returncode == 0
    proc = run_cli("stream", hf[1], q_out, "--q-bits", "8", "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((q_out / "config.json").read_text())
    assert cfg == {"model_type": "whisper", **DIMS, "quantization": {"group_size": 64, "bits": 8}}
    got = load_model(str(q_out))
    assert isinstance(got.decoder.token_embedding, nn.QuantizedEmbedding)
    assert isinstance(got.encoder.blocks[0].attn.query, nn.QuantizedLinear)
    assert got.decoder.positional_embedding.dtype == mx.float32  # a plain array there, never quantized
    ref = load_model(str(float_out))
    nn.quantize(ref, group_size=64, bits=8)
    from mlx.utils import tree_flatten

    mine, theirs = dict(tree_flatten(got.parameters())), dict(tree_flatten(ref.parameters()))
    assert mine.keys() == theirs.keys()
    for k in theirs:
        assert np.array_equal(np.array(mine[k]), np.array(theirs[k])), k


def test_openai_pt_converts_without_torch_and_loads(hf, reference, tone, tmp_path, no_torch_env):  # noqa: F811
    env, marker = no_torch_env
    model, _ = hf
    sd = {openai_name(k): v for k, v in model.state_dict().items() if k != "proj_out.weight"}
    assert "encoder.blocks.0.mlp.0.weight" in sd and "decoder.positional_embedding" in sd
    pt = tmp_path / "tiny.pt"
    torch.save({"dims": dict(DIMS), "model_state_dict": sd}, pt)  # openai-whisper's checkpoint layout
    out = tmp_path / "out"
    proc = run_cli("stream", pt, out, "--dtype", "float32", env=env)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists(), marker.read_text()
    assert "target: mlx-whisper" in proc.stdout
    assert "warning" not in proc.stdout  # the conv rules come from the target's table, not a guess
    assert json.loads((out / "config.json").read_text()) == {"model_type": "whisper", **DIMS}
    assert_same_outputs(reference, out, tone[1])
    # back to torch: OpenAI's names (its state dict's, as read), without the encoder's position table
    back = tmp_path / "back"
    proc = run_cli("stream", out, back, "--to", "torch", env=env)
    assert proc.returncode == 0, proc.stderr
    from safetensors.numpy import load_file

    got = load_file(str(back / "model.safetensors"))
    assert set(got) == set(sd) - {"encoder.positional_embedding"}
    assert all(np.array_equal(got[k], sd[k].numpy()) for k in got)
    assert json.loads((back / "config.json").read_text()) == {"model_type": "whisper", **DIMS}


def test_back_to_torch_gives_transformers_names(hf, tone, tmp_path):
    model, src = hf
    out, back = tmp_path / "out", tmp_path / "back"
    assert run_cli("stream", src, out, "--dtype", "float32").returncode == 0
    proc = run_cli("stream", out, back, "--to", "torch")
    assert proc.returncode == 0, proc.stderr
    assert "not rebuilt: model.encoder.embed_positions.weight" in proc.stdout
    from safetensors.torch import load_file

    got = load_file(back / "model.safetensors")
    sd = model.state_dict()
    assert set(got) == set(sd) - {"proj_out.weight", "model.encoder.embed_positions.weight"}
    for k, v in got.items():
        assert torch.equal(v, sd[k]), k
    # config.json is a WhisperConfig again; transformers rebuilds the sinusoidal table it lacks
    from transformers import WhisperForConditionalGeneration

    again = WhisperForConditionalGeneration.from_pretrained(back).eval()
    assert torch.equal(again.model.encoder.embed_positions.weight, sd["model.encoder.embed_positions.weight"])
    feats = torch.from_numpy(tone[1].T.copy())[None]
    with torch.no_grad():
        a = again(input_features=feats, decoder_input_ids=torch.tensor([TOKENS])).logits
        b = model(input_features=feats, decoder_input_ids=torch.tensor([TOKENS])).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target", "mlx-whisper"], "--target mlx-whisper does not fit this model: config.json describes llama"),
        (["--target", "mlx-whisper", "--to", "torch"], "--target mlx-whisper does not apply"),
        (["--target", "nope"], "invalid choice"),
    ],
)
def test_bad_target_is_one_line(tmp_path, extra, message):
    from safetensors.numpy import save_file

    src = tmp_path / "llama"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    save_file({"model.norm.weight": np.ones(4, np.float32)}, str(src / "model.safetensors"))
    proc = run_cli("stream", src, tmp_path / "out", "--no-model", *extra)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3 if message == "invalid choice" else proc.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_whisper_target_refuses_what_it_cannot_build(hf, tmp_path):
    src = hf[1]
    proc = run_cli("stream", src, tmp_path / "o", "--q-recipe", "mixed_3_6")
    assert proc.returncode != 0 and "mlx-whisper's loader takes one group size and bit width" in proc.stderr
    # a Whisper mlx-whisper's fixed MLP width cannot hold falls back to plain MLX by default
    cfg = json.loads((src / "config.json").read_text()) | {"encoder_ffn_dim": 128}
    from torch2mlx.stream import targets

    assert targets.choose(cfg, None) == "mlx"
    with pytest.raises(Exception, match="MLPs of 4 x d_model"):
        targets.choose(cfg, "mlx-whisper")


def test_default_choice_from_config():
    from torch2mlx.stream import targets

    assert targets.choose({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, None) == "mlx-lm"
    assert targets.choose({"model_type": "bert", "architectures": ["BertModel"]}, None) == "mlx"
    assert targets.choose(None, None) == "mlx"
    assert targets.choose({"model_type": "llama"}, "mlx") == "mlx"


def test_float16_openai_pt_quantized_loads_and_transcribes(hf, tone, tmp_path):
    """OpenAI's checkpoints are float16: kept so; --q-bits 4 as the library takes it."""
    import mlx.nn as nn

    from torch2mlx import stream

    sd = {openai_name(k): v.half() for k, v in hf[0].state_dict().items() if k != "proj_out.weight"}
    pt = tmp_path / "tiny.pt"
    torch.save({"dims": dict(DIMS), "model_state_dict": sd}, pt)
    res = stream.convert(pt, tmp_path / "out", q_bits=4, target="mlx-whisper")
    assert res.plan.target == "mlx-whisper" and res.to_dict()["target"] == "mlx-whisper"
    assert not any("float16, as mlx_whisper.transcribe" in n for n in res.plan.notes)  # float16 already
    m = load_model(str(tmp_path / "out"))
    assert isinstance(m.encoder.blocks[1].mlp2, nn.QuantizedLinear) and m.encoder.blocks[1].mlp2.bits == 4
    text = mlx_whisper.transcribe(tone[0], path_or_hf_repo=str(tmp_path / "out"), temperature=0.0, language="en")
    assert isinstance(text["text"], str)


def test_target_option_checked_and_other_configs_do_not_crash():
    from torch2mlx.errors import Torch2MLXError
    from torch2mlx.stream import Options, targets

    with pytest.raises(Torch2MLXError, match="target must be one of mlx, mlx-lm, mlx-whisper, mlx-vlm"):
        Options.make(target="whisper")
    assert Options.make(target="mlx-whisper").to_dict()["target"] == "mlx-whisper"
    assert "target" not in Options.make().to_dict()  # other runs' manifests unchanged
    # a vision-language config: whatever the mlx-vlm module says, the default choice is one of the targets
    llava = {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]}
    assert targets.choose(llava, None) in targets.TARGETS


def test_hook_refused_for_mlx_whisper(hf, tmp_path):
    from torch2mlx import stream
    from torch2mlx.errors import Torch2MLXError

    with pytest.raises(Torch2MLXError, match="target mlx-whisper reads weights.safetensors"):
        stream.convert(hf[1], tmp_path / "out", hook=lambda n, a, d: (n, a))
    assert not (tmp_path / "out").exists()
