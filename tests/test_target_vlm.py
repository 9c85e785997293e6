"""--target mlx-vlm: tiny random LLaVA, Qwen2-VL, Qwen2.5-VL and Gemma 3 built with transformers,
converted, loaded with ``mlx_vlm.load`` and compared with transformers on the same image + prompt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import convert, parse_safetensors, run_cli, to_torch

mlx_vlm = pytest.importorskip("mlx_vlm")
mx = pytest.importorskip("mlx.core")

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _tokenizer(extra: list[str], named: dict | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(40)] + extra
    tk = Tokenizer(models.WordLevel({t: i for i, t in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    kw = {"extra_special_tokens": named} if named else {}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=extra,
        chat_template=TEMPLATE,
        **kw,
    )
    return tok, len(words)


def _llava(out):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok, vocab = _tokenizer(["<image>"])
    vc = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=14
    )
    tc = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=128,
    )
    model = LlavaForConditionalGeneration(
        LlavaConfig(vision_config=vc, text_config=tc, image_token_index=vocab - 1, image_seq_length=4)
    ).eval()
    model.save_pretrained(out)
    ip = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=TEMPLATE,
    ).save_pretrained(out)
    pixels = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    ids = [1, 5, 6] + [vocab - 1] * 4 + [7, 8, 9]
    return model, ids, {"pixel_values": pixels}


def _qwen(out, five: bool):
    from transformers import Qwen2VLImageProcessor

    if five:
        from transformers import Qwen2_5_VLConfig as Config
        from transformers import Qwen2_5_VLForConditionalGeneration as Model

        vision = dict(
            depth=2,
            hidden_size=32,
            out_hidden_size=64,
            intermediate_size=64,
            num_heads=4,
            window_size=56,
            fullatt_block_indexes=[1],
        )
    else:
        from transformers import Qwen2VLConfig as Config
        from transformers import Qwen2VLForConditionalGeneration as Model

        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2)
    vision |= dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    tok, vocab = _tokenizer(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    text = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=256,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg = Config(
        vision_config=vision,
        text_config=text,
        image_token_id=vocab - 2,
        video_token_id=vocab - 1,
        vision_start_token_id=vocab - 4,
        vision_end_token_id=vocab - 3,
    )
    model = Model(cfg).eval()
    model.save_pretrained(out)
    # Qwen2VLProcessor wants a video processor (torchvision); mlx-vlm builds its own from these files
    Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2).save_pretrained(out)
    tok.save_pretrained(out)
    # one 56x56 image: a 4x4 grid of 14x14 patches, two frames each, merged 2x2 into 4 tokens
    pixels = torch.randn(16, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(1))
    ids = [1, 5, vocab - 4] + [vocab - 2] * 4 + [vocab - 3, 7, 8]
    hf = {
        "image_grid_thw": torch.tensor([[1, 4, 4]]),
        "mm_token_type_ids": torch.tensor([[int(i == vocab - 2) for i in ids]]),
    }
    return model, ids, {"pixel_values": pixels} | hf


def _gemma3(out):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor

    names = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tok, vocab = _tokenizer(names, {"boi_token": names[0], "eoi_token": names[1], "image_token": names[2]})
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=56,
        patch_size=14,
        vision_use_head=False,
    )
    text = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,  # mlx-vlm's Gemma 3 needs one full period of its sliding-window pattern
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=vocab,
        max_position_embeddings=256,
        sliding_window=32,
    )
    cfg = Gemma3Config(
        vision_config=vision,
        text_config=text,
        mm_tokens_per_image=4,
        boi_token_index=vocab - 3,
        eoi_token_index=vocab - 2,
        image_token_index=vocab - 1,
    )
    model = Gemma3ForConditionalGeneration(cfg).eval()
    model.save_pretrained(out)
    Gemma3ImageProcessor(size={"height": 56, "width": 56}).save_pretrained(out)
    tok.save_pretrained(out)
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    ids = [1, 5, vocab - 3] + [vocab - 1] * 4 + [vocab - 2, 7, 8]
    return model, ids, {"pixel_values": pixels}


BUILDERS = {
    "llava": _llava,
    "qwen2_vl": lambda out: _qwen(out, False),
    "qwen2_5_vl": lambda out: _qwen(out, True),
    "gemma3": _gemma3,
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def vlm(request, tmp_path_factory):
    torch.manual_seed(0)
    src = tmp_path_factory.mktemp(request.param)
    model, ids, extra = BUILDERS[request.param](src)
    return request.param, src, model, ids, extra


def _hf_logits(model, ids, extra) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), **extra).logits[0].float().numpy()


def _mlx_logits(model, ids, extra) -> np.ndarray:
    kw = {k: mx.array(v.numpy()) for k, v in extra.items() if k not in ("pixel_values", "mm_token_type_ids")}
    pixels, prompt = mx.array(extra["pixel_values"].numpy()), mx.array([ids])
    if model.config.model_type == "gemma3":
        # as mlx-vlm's generation runs it: the merged embeddings through the (causal) language model;
        # Model.__call__ would give the language model the padding mask, which is not causal
        emb = model.get_input_embeddings(prompt, pixels, mask=mx.ones((1, len(ids)), dtype=mx.int32))
        out = model.language_model(prompt, inputs_embeds=emb.inputs_embeds)
    else:
        out = model(prompt, pixel_values=pixels, mask=None, **kw)
    return np.array(getattr(out, "logits", out)[0].astype(mx.float32))


def _header(out) -> dict:
    _, head, _ = parse_safetensors(out / "model.safetensors")
    return {k: v for k, v in head.items() if k != "__metadata__"}


def test_mlx_vlm_loads_and_matches_transformers(vlm, tmp_path):
    kind, src, model, ids, extra = vlm
    out = tmp_path / "out"
    proc = run_cli("stream", src, out, "--target", "mlx-vlm")
    assert proc.returncode == 0, proc.stderr
    assert "target: mlx-vlm" in proc.stdout
    loaded, processor = mlx_vlm.load(str(out))
    assert processor is not None
    got, want = _mlx_logits(loaded, ids, extra), _hf_logits(model, ids, extra)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # the weights are a fixed point of mlx-vlm's sanitize: every written tensor is a model parameter as it is
    from mlx.utils import tree_flatten

    params = dict(tree_flatten(loaded.parameters()))
    for name, rec in _header(out).items():
        assert tuple(params[name].shape) == tuple(rec["shape"]), name
    for f in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        if (src / f).exists():
            assert (out / f).read_bytes() == (src / f).read_bytes(), f


def test_mlx_vlm_is_the_default_for_these_configs(vlm, tmp_path):
    kind, src, *_ = vlm
    res = convert(src, None, dry_run=True)
    assert res.plan.target == "mlx-vlm"


def test_quantizes_the_language_model_only(vlm, tmp_path):
    kind, src, model, ids, extra = vlm
    out = tmp_path / "q"
    proc = run_cli("stream", src, out, "--target", "mlx-vlm", "--q-bits", "8", "--q-group-size", "32")
    assert proc.returncode == 0, proc.stderr
    head = _header(out)
    scaled = {n[: -len(".scales")] for n in head if n.endswith(".scales")}
    assert scaled and all(n.startswith("language_model.") for n in scaled), sorted(scaled)
    assert "language_model.model.layers.0.self_attn.q_proj" in scaled
    vision = [n for n in head if not n.startswith("language_model.")]
    assert vision and all(head[n]["dtype"] != "U32" for n in vision)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization"] == {"group_size": 32, "bits": 8, "mode": "affine"}
    check = run_cli("verify", src, out)  # re-planned from the manifest: the same names, the same codes
    assert check.returncode == 0, check.stdout + check.stderr
    loaded, _ = mlx_vlm.load(str(out))
    import mlx.nn as nn

    assert isinstance(loaded.language_model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    # 8-bit codes of a random model: the logits stay close to the float model's
    got, want = _mlx_logits(loaded, ids, extra), _hf_logits(model, ids, extra)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_back_to_torch(tmp_path):
    torch.manual_seed(0)
    src = tmp_path / "llava"
    model, *_ = _llava(src)
    out = tmp_path / "out"
    convert(src, out, target="mlx-vlm")
    back = tmp_path / "back"
    to_torch(out, back)
    from safetensors.torch import load_file

    got = {}
    for f in back.glob("*.safetensors"):
        got.update(load_file(f))
    want = load_file(src / "model.safetensors")
    assert set(got) == set(want)
    for name, t in want.items():
        assert torch.equal(got[name], t), name


def test_refuses_a_model_mlx_vlm_target_does_not_cover(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    src = tmp_path / "llama"
    LlamaForCausalLM(
        LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=64)
    ).save_pretrained(src)
    proc = run_cli("stream", src, tmp_path / "out", "--target", "mlx-vlm")
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "mlx-vlm" in proc.stderr and "llama" in proc.stderr and not (tmp_path / "out").exists()


def test_refuses_weights_without_config(tmp_path):
    from safetensors.torch import save_file

    src = tmp_path / "w.safetensors"
    save_file({"language_model.model.norm.weight": torch.ones(4)}, src)
    proc = run_cli("stream", src, tmp_path / "out", "--target", "mlx-vlm")
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert "config.json" in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "family,name,want",
    [
        # the legacy top-level prefixes (what transformers 5 still saves) and the model.* ones of 4.5x
        (
            "llava",
            "language_model.model.layers.0.mlp.up_proj.weight",
            "language_model.model.layers.0.mlp.up_proj.weight",
        ),
        (
            "llava",
            "model.language_model.layers.0.mlp.up_proj.weight",
            "language_model.model.layers.0.mlp.up_proj.weight",
        ),
        ("llava", "lm_head.weight", "language_model.lm_head.weight"),
        ("llava", "language_model.lm_head.weight", "language_model.lm_head.weight"),
        (
            "llava",
            "vision_tower.embeddings.patch_embedding.weight",
            "vision_tower.vision_model.embeddings.patch_embedding.weight",
        ),
        (
            "llava",
            "model.vision_tower.vision_model.post_layernorm.bias",
            "vision_tower.vision_model.post_layernorm.bias",
        ),
        ("llava", "model.multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_1.weight"),
        ("qwen", "model.layers.0.self_attn.q_proj.bias", "language_model.model.layers.0.self_attn.q_proj.bias"),
        (
            "qwen",
            "model.language_model.layers.0.self_attn.q_proj.bias",
            "language_model.model.layers.0.self_attn.q_proj.bias",
        ),
        ("qwen", "visual.patch_embed.proj.weight", "vision_tower.patch_embed.proj.weight"),
        ("qwen", "model.visual.merger.mlp.0.weight", "vision_tower.merger.mlp.0.weight"),
        ("qwen", "lm_head.weight", "language_model.lm_head.weight"),
    ],
)
def test_names_as_mlx_vlm_loads_them(family, name, want):
    from torch2mlx.stream.targets.mlx_vlm import vlm_name

    assert vlm_name(name, family) == want
    assert vlm_name(want, family) == want  # a fixed point, as mlx-vlm's sanitize needs


def test_transformers_4_5x_names(tmp_path):
    """A LLaVA saved with the ``model.language_model.*`` / ``model.vision_tower.vision_model.*`` names of
    transformers 4.52+ loads as well, with the same logits."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    src = tmp_path / "llava"
    model, ids, extra = _llava(src)
    renamed = {}
    for name, t in load_file(src / "model.safetensors").items():
        if name.startswith("language_model.model."):
            name = "model.language_model." + name[len("language_model.model.") :]
        elif name.startswith("language_model.lm_head."):
            name = name[len("language_model.") :]
        elif name.startswith("vision_tower."):
            name = "model.vision_tower.vision_model." + name[len("vision_tower.") :]
        else:
            name = "model." + name
        renamed[name] = t
    assert "model.language_model.embed_tokens.weight" in renamed
    save_file(renamed, src / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    convert(src, out, target="mlx-vlm")
    loaded, _ = mlx_vlm.load(str(out))
    np.testing.assert_allclose(_mlx_logits(loaded, ids, extra), _hf_logits(model, ids, extra), atol=1e-4, rtol=0)


def test_one_tensor_under_both_spellings_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    src = tmp_path / "llava"
    _llava(src)
    tensors = load_file(src / "model.safetensors")
    tensors["model.language_model.norm.weight"] = tensors["language_model.model.norm.weight"].clone()
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    proc = run_cli("stream", src, tmp_path / "out", "--target", "mlx-vlm", "--no-model")
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert "language_model.model.norm.weight" in proc.stderr and not (tmp_path / "out").exists()
