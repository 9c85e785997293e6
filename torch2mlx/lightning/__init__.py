"""Lightning Level 1 for MLX: write an MLX ``__call__``, keep Lightning's shape of training.

    class NetMLX(MLXModule):
        def __init__(self, hidden=32):
            super().__init__()
            self.net = [nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3)]   # named as the torch module's
        def __call__(self, x):
            for layer in self.net:
                x = layer(x)
            return x

    model = NetMLX.from_checkpoint("run.ckpt", source_class=LitNet)   # weights, optimizer, schedule
    MLXTrainer(max_epochs=5, callbacks=[ModelCheckpoint("ckpts")]).fit(model, train_loader, val_loader)

Importing this module imports MLX (not torch; torch is used only to inspect a source class).
"""

from .callbacks import Callback, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau
from .data import to_mlx
from .module import MLXModule
from .saving import save_weights
from .source import OptimConfig
from .trainer import MLXTrainer

__all__ = [
    "MLXModule",
    "MLXTrainer",
    "Callback",
    "ModelCheckpoint",
    "EarlyStopping",
    "ReduceLROnPlateau",
    "OptimConfig",
    "to_mlx",
    "save_weights",
    "generate_forward",
]


def __getattr__(name):
    # Lightning Level 2: a draft MLX ``__call__`` from a torch module (code generation needs torch,
    # so it loads on first use only).
    if name == "generate_forward":
        from ..codegen.lightning_forward import generate_forward

        return generate_forward
    raise AttributeError(f"module 'torch2mlx.lightning' has no attribute {name!r}")
