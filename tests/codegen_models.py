"""The HuggingFace architectures of the analyzer tests, built tiny from transformers' default configs
(a few layers, dims of 16-64, small vocabularies): real weights on the CPU in well under a second each."""

from __future__ import annotations

from test_analyze_hf import ARCHS

SCALARS = {
    "hidden_size": 32,
    "d_model": 32,
    "n_embd": 32,
    "dim": 32,
    "embed_dim": 32,
    "embedding_size": 32,
    "num_hidden_layers": 2,
    "n_layer": 2,
    "num_layers": 2,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "n_layers": 2,
    "num_decoder_layers": 2,
    "num_attention_heads": 4,
    "n_head": 4,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "n_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "d_kv": 8,
    "d_head": 8,
    "intermediate_size": 64,
    "d_ff": 64,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "n_inner": 64,
    "d_inner": 64,
    "hidden_dim": 64,
    "moe_intermediate_size": 16,
    "num_local_experts": 4,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "vocab_size": 128,
    "max_position_embeddings": 64,
    "n_positions": 64,
    "max_source_positions": 32,
    "max_target_positions": 32,
    "num_mel_bins": 16,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 16,
    "rotary_dim": 4,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "attention_window": 8,
    "window_size": 4,
    "decoder_hidden_size": 32,
    "mm_tokens_per_image": 4,
    "sliding_window": 16,
    "query_pre_attn_scalar": 8,
    "num_labels": 3,
    "type_vocab_size": 2,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "decoder_start_token_id": 0,
}
PER_TYPE = {
    "swin": {"depths": [2, 2], "num_heads": [2, 4], "embed_dim": 16, "patch_size": 4},
    "convnext": {"hidden_sizes": [16, 32], "depths": [1, 1], "num_stages": 2},
    "resnet": {"hidden_sizes": [16, 32], "depths": [1, 1], "embedding_size": 16},
    "mobilenet_v2": {"depth_multiplier": 0.25},
    "segformer": {
        "hidden_sizes": [16, 32],
        "depths": [1, 1],
        "num_attention_heads": [1, 2],
        "num_encoder_blocks": 2,
        "sr_ratios": [2, 1],
        "patch_sizes": [7, 3],
        "strides": [4, 2],
        "mlp_ratios": [2, 2],
    },
    "wav2vec2": {"conv_dim": [16, 16], "conv_kernel": [10, 3], "conv_stride": [5, 2], "num_feat_extract_layers": 2},
    "hubert": {"conv_dim": [16, 16], "conv_kernel": [10, 3], "conv_stride": [5, 2], "num_feat_extract_layers": 2},
    "funnel": {"block_sizes": [1, 1], "block_repeats": [1, 1]},
}
NESTED = ("text_config", "vision_config", "encoder", "decoder", "audio_config")


def shrink(config, model_type: str):
    """Set the size attributes ``config`` has (and those of its sub-configs) to small values."""
    present = config.to_dict()
    for k, v in SCALARS.items():
        if (
            k in present
            and isinstance(getattr(config, k, None), (int, float))
            and not isinstance(getattr(config, k), bool)
        ):
            setattr(config, k, v)
    for k, v in PER_TYPE.get(model_type, {}).items():
        setattr(config, k, v)
    for k in NESTED:
        sub = getattr(config, k, None)
        if sub is not None and hasattr(sub, "to_dict"):
            shrink(sub, getattr(sub, "model_type", ""))
    return config


def tiny_config(model_type: str):
    from transformers import AutoConfig

    config = shrink(AutoConfig.for_model(model_type), model_type)
    config.architectures = [ARCHS[model_type][0]]
    return config


def tiny_model(model_type: str):
    import torch
    import transformers

    torch.manual_seed(0)
    config = tiny_config(model_type)
    return getattr(transformers, config.architectures[0])(config).eval()
