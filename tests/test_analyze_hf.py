"""The HuggingFace architectures: each analyzes at 100% coverage from its config alone, built on the meta
device (transformers' default config, no download), with the rules its layers need."""

import json

import pytest

import torch2mlx

# model_type -> (architectures[0], the non-identity rules its tensors need)
ARCHS = {
    "bert": ("BertForMaskedLM", set()),
    "roberta": ("RobertaForMaskedLM", set()),
    "distilbert": ("DistilBertForMaskedLM", set()),
    "albert": ("AlbertForMaskedLM", set()),
    "deberta": ("DebertaForMaskedLM", set()),
    "deberta-v2": ("DebertaV2ForMaskedLM", set()),
    "electra": ("ElectraForPreTraining", set()),
    "mpnet": ("MPNetForMaskedLM", set()),
    "longformer": ("LongformerForMaskedLM", set()),
    "funnel": ("FunnelModel", set()),
    "camembert": ("CamembertForMaskedLM", set()),
    "data2vec-text": ("Data2VecTextForMaskedLM", set()),
    "gpt2": ("GPT2LMHeadModel", {"linear_transposed"}),
    "gpt_neo": ("GPTNeoForCausalLM", set()),
    "opt": ("OPTForCausalLM", set()),
    "bloom": ("BloomForCausalLM", set()),
    "qwen2": ("Qwen2ForCausalLM", set()),
    "gpt_neox": ("GPTNeoXForCausalLM", set()),
    "codegen": ("CodeGenForCausalLM", set()),
    "falcon": ("FalconForCausalLM", set()),
    "t5": ("T5ForConditionalGeneration", set()),
    "bart": ("BartForConditionalGeneration", set()),
    "pegasus": ("PegasusForConditionalGeneration", set()),
    "vit": ("ViTForImageClassification", {"conv2d"}),
    "clip": ("CLIPModel", {"conv2d"}),
    "swin": ("SwinForImageClassification", {"conv2d"}),
    "convnext": ("ConvNextForImageClassification", {"conv2d"}),
    "dinov2": ("Dinov2Model", {"conv2d"}),
    "beit": ("BeitForImageClassification", {"conv2d"}),
    "segformer": ("SegformerForSemanticSegmentation", {"conv2d", "drop"}),
    "mobilenet_v2": ("MobileNetV2ForImageClassification", {"conv2d", "drop"}),
    "resnet": ("ResNetForImageClassification", {"conv2d", "drop"}),
    "whisper": ("WhisperForConditionalGeneration", {"conv1d"}),
    "wav2vec2": ("Wav2Vec2ForCTC", {"conv1d", "weight_norm"}),
    "hubert": ("HubertForCTC", {"conv1d", "weight_norm"}),
    "xlnet": ("XLNetLMHeadModel", set()),
    # today's decoder families
    "llama": ("LlamaForCausalLM", set()),
    "mistral": ("MistralForCausalLM", set()),
    "mixtral": ("MixtralForCausalLM", set()),
    "gemma2": ("Gemma2ForCausalLM", set()),
    "gemma3": ("Gemma3ForConditionalGeneration", {"conv2d", "split"}),
    "gemma3_text": ("Gemma3ForCausalLM", set()),
    "phi3": ("Phi3ForCausalLM", set()),
    "qwen3": ("Qwen3ForCausalLM", set()),
    "qwen3_moe": ("Qwen3MoeForCausalLM", set()),
}


def _config_dir(tmp_path, model_type, arch):
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
    config.architectures = [arch]
    d = tmp_path / model_type
    d.mkdir()
    config.to_json_file(str(d / "config.json"))
    return d


@pytest.mark.parametrize("model_type", list(ARCHS))
@pytest.mark.slow
def test_architecture_maps_fully_from_config_alone(tmp_path, model_type):
    arch, special = ARCHS[model_type]
    report = torch2mlx.analyze(_config_dir(tmp_path, model_type, arch))
    assert (report.model, report.how) == (arch, "config")
    assert report.coverage == 1.0, [u.key for u in report.layers if not u.supported]
    assert report.unsupported == {}
    assert report.parameters > 1_000_000
    assert {t.rule for t in report.tensors} - {"identity"} == special
    assert {t.rule_source for t in report.tensors} == {"model"}
    d = report.to_dict()
    assert {"coverage", "parameters", "unsupported", "blockers", "tensors"} <= set(d)
    json.dumps(d)


def test_layout_rules_give_mlx_shapes(tmp_path):
    """The rules the report names produce MLX layouts: channels-last convs, Conv1D transposed, MHA split."""
    gpt2 = torch2mlx.analyze(_config_dir(tmp_path, "gpt2", "GPT2LMHeadModel"))
    c_attn = next(t for t in gpt2.tensors if t.sources == ("transformer.h.0.attn.c_attn.weight",))
    assert (c_attn.source_shapes[0], c_attn.shape) == ((768, 2304), (2304, 768))
    whisper = torch2mlx.analyze(_config_dir(tmp_path, "whisper", "WhisperForConditionalGeneration"))
    conv1 = next(t for t in whisper.tensors if t.sources == ("model.encoder.conv1.weight",))
    assert (conv1.source_shapes[0], conv1.shape) == ((384, 80, 3), (384, 3, 80))
    gemma3_dir = _config_dir(tmp_path, "gemma3", "Gemma3ForConditionalGeneration")
    gemma3 = torch2mlx.analyze(gemma3_dir)
    width = json.loads((gemma3_dir / "config.json").read_text())["vision_config"]["hidden_size"]
    split = sorted(
        (t.mlx, t.shape, t.source_shapes[0]) for t in gemma3.tensors if t.rule == "split" and t.mlx.endswith("weight")
    )
    assert [n.rsplit(".", 2)[-2] for n, _, _ in split] == ["key_proj", "query_proj", "value_proj"]
    assert {(s, src) for _, s, src in split} == {((width, width), (3 * width, width))}
    assert any("(1 + weight)" in n for n in gemma3.notes)


def test_a_config_transformers_does_not_know_falls_back_to_headers(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"conv.weight": np.zeros((4, 3, 3, 3), np.float32)}, str(tmp_path / "model.safetensors"))
    report = torch2mlx.analyze(tmp_path)
    assert report.how == "headers" and report.coverage is None
    assert [(t.rule, t.rule_source) for t in report.tensors] == [("conv2d", "inferred")]
    assert any("no-such-model" in n for n in report.notes)
