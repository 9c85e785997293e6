"""Training recipes for converted models, runnable from examples/ and importable here.

from torch2mlx.recipes import finetune_classifier, lora_finetune, apply_lora, merge_lora
"""

from .classifier import FineTuned, finetune_classifier, mean_loss
from .lora import LoRALinear, apply_lora, lora_finetune, merge_lora

__all__ = ["finetune_classifier", "lora_finetune", "apply_lora", "merge_lora", "LoRALinear", "FineTuned", "mean_loss"]
