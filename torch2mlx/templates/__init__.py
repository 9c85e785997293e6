"""MLX modules for common PyTorch patterns, named so weights converted from the torch module load strictly.

    MLP                 torch: nn.Sequential(Linear, act, [Dropout], Linear, ...) under ``layers``
    TransformerBlock    torch: nn.TransformerEncoderLayer(batch_first=True), pre- or post-norm
    TransformerEncoder  torch: nn.TransformerEncoder (a stack of those, optional final norm)
    ConvBlock           torch: conv -> norm -> activation -> max pool, as attributes conv / norm
    ConvStack           torch: ConvBlocks in an nn.Sequential under ``blocks``
    AdaptiveAvgPool2d   torch: nn.AdaptiveAvgPool2d, any output size (MLX has none)

Inputs are MLX's: batch first, channels last for images (N, H, W, C).
A bare torch ``nn.Sequential`` names its children ``0.``, ``1.``, ...; an MLX list of
layers names them ``layers.0.``: load with ``torch2mlx.load_converted(path, prefix="layers.")``.
"""

from .conv import ConvBlock, ConvStack
from .mlp import MLP
from .pooling import AdaptiveAvgPool2d
from .transformer import TransformerBlock, TransformerEncoder

__all__ = ["MLP", "TransformerBlock", "TransformerEncoder", "ConvBlock", "ConvStack", "AdaptiveAvgPool2d"]
