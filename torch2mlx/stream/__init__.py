"""The streaming engine's library API, for custom pipelines.

    ck = torch2mlx.stream.open("model_dir")      # metadata only
    for e in ck.entries: ...                      # name, dtype, shape, file, offset
    for name, arr in ck.tensors(): ...            # one tensor in memory at a time, an mx.array
    torch2mlx.stream.convert("model_dir", "out", dtype="float16")          # or options=Options.make(dtype=...)
    torch2mlx.stream.convert(model, "w.safetensors")   # also a state dict or a live nn.Module; one file
    torch2mlx.stream.to_torch("out", "back")                                # MLX -> PyTorch, dequantizing
    torch2mlx.stream.to_gguf("out", "model.gguf", gguf_type="q8_0")          # MLX -> llama.cpp GGUF
    state = torch2mlx.stream.to_torch(weights, model=model)   # no out: {name: torch.Tensor} in memory
    with torch2mlx.stream.ShardWriter("out") as w: w.add("x", array)   # mx.array, torch tensor or numpy

User code sees values as mx.array (bfloat16 included), never raw bits.
Reading and writing never import torch; ``convert`` does only to build the model for exact
rules (``model="pkg.mod:Class"``, or a directory with a config.json whose architecture's rules are not
kept as data, when torch and transformers are installed and no cached analysis matches); ``model=False``
never does. ``to_torch`` without ``out`` imports it to make the tensors it returns.
``torch2mlx.convert`` / ``to_torch`` are these two functions.
ShardWriter.add imports torch only for a torch tensor it is handed.
"""

from ..core.entry import TensorEntry
from ..core.spec import RuleSpec
from ..formats.checkpoint import Checkpoint  # noqa: A001  (mirrors builtins.open on purpose)
from ..formats.checkpoint import open_checkpoint as open
from .convert import convert
from .options import Options, parse_size
from .plan import Plan
from .planner import build as build_plan
from .result import Result
from .to_gguf import to_gguf
from .to_torch import to_torch
from .writers.incremental import ShardWriter

__all__ = [
    "open",
    "convert",
    "to_torch",
    "to_gguf",
    "Checkpoint",
    "TensorEntry",
    "Result",
    "Options",
    "parse_size",
    "Plan",
    "RuleSpec",
    "build_plan",
    "ShardWriter",
]
