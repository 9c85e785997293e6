"""Example inputs for a transformers model, from its config: what ``generate`` runs once to learn each
module's call (which arguments are tensors) and the shapes its code branches on.

On the meta device (a model built from config.json) the inputs are meta tensors too: nothing is computed.
"""

from __future__ import annotations

import inspect
import math


def _get(config, *names, default=None):
    for c in (
        config,
        getattr(config, "text_config", None),
        getattr(config, "vision_config", None),
        getattr(config, "audio_config", None),
    ):
        for n in names:
            v = getattr(c, n, None) if c is not None else None
            if isinstance(v, int) and not isinstance(v, bool):
                return v
    return default


def transformers_inputs(model) -> dict | None:
    """Keyword inputs for a transformers ``PreTrainedModel`` (None for other models or unknown inputs)."""
    import torch

    config = getattr(model, "config", None)
    name = getattr(model, "main_input_name", None)
    if config is None or name is None:
        return None
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    params = inspect.signature(model.forward).parameters
    vocab = _get(config, "vocab_size", default=100)

    def ids(n):
        return torch.randint(1, max(2, min(vocab, 1000)), (1, n), device=device)

    def image():
        vision = getattr(config, "vision_config", None) or config
        size = getattr(vision, "image_size", None) or 224
        size = size[0] if isinstance(size, (tuple, list)) else size
        return torch.randn(1, getattr(vision, "num_channels", 3), size, size, device=device)

    inputs = {}
    if name == "input_ids":
        inputs["input_ids"] = ids(8)
        if "attention_mask" in params:
            # with a padding mask the model builds its attention mask from it, for any batch; without one,
            # transformers' traced mask code assumes one unpacked sequence per position-id row
            inputs["attention_mask"] = torch.ones(1, 8, dtype=torch.long, device=device)
        image_tokens = any(hasattr(config, a) for a in ("image_token_index", "image_token_id"))
        if "pixel_values" in params and not image_tokens:
            inputs["pixel_values"] = image()
    elif name == "pixel_values":
        inputs["pixel_values"] = image()
    elif name == "input_features":
        mels = _get(config, "num_mel_bins", default=80)
        frames = 2 * _get(config, "max_source_positions", default=1500)
        inputs["input_features"] = torch.randn(1, mels, frames, device=device)
    elif name == "input_values":
        strides = getattr(config, "conv_stride", None) or [320]
        inputs["input_values"] = torch.randn(1, math.prod(strides) * 16, device=device)
    else:
        return None
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        inputs["decoder_input_ids"] = ids(4)
    if "use_cache" in params:  # a forward pass, not generation: no key/value cache objects
        inputs["use_cache"] = False
    return inputs
