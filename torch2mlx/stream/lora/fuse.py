"""``--adapter``: LoRA fused into the base weights while they stream, before any quantization.

A fused weight's op gets a ``Fuse`` stage in its transform chain: each block of output rows becomes
``W[rows] + s * B[rows] @ A`` in float32 (DoRA: each row then scaled to ``m / ||row||``, as PEFT's
merge and mlx-lm's fuse do), then is cast or quantized like any other block. ``modules_to_save``
tensors replace the base rows outright. Every adapter tensor must land on a planned base tensor:
one that matches nothing is an error, never a silent no-op.
"""

from __future__ import annotations

import os
import threading
import weakref

import numpy as np

from ...core import casts
from ...errors import Torch2MLXError
from .load import Adapter, LoraModule


class Fuse:
    """The rows of one fused weight (a LoRA module, or a modules_to_save tensor given whole)."""

    def __init__(self, name: str, module: LoraModule | None = None, mult: float = 1.0, full=None):
        self.name = name
        self.full = full  # (DType, array): a modules_to_save tensor
        if module is not None:
            self.sb = (np.float32(module.scale * mult) * module.b32()).astype(np.float32)
            self.a = np.ascontiguousarray(module.a32())
            m = module.magnitude
            md = module.magnitude_dtype
            self.m = None if m is None or md is None else casts.to_f32(m, md).astype(np.float32)
        self.quant_error = 0.0  # largest |dequantized - fused| when the chain quantizes after fusing
        self._lock = threading.Lock()

    def __call__(self, block: np.ndarray, start: int) -> np.ndarray:
        """Rows [start, start + len(block)) fused; ``block`` in float32."""
        stop = start + block.shape[0]
        if self.full is not None:
            dt, arr = self.full
            return np.array(casts.to_f32(arr[start:stop], dt), dtype=np.float32)
        out = block + self.sb[start:stop] @ self.a
        if self.m is not None:
            out *= (self.m[start:stop] / np.linalg.norm(out, axis=1))[:, None]
        return out

    def saw_quantized(self, err: float) -> None:
        with self._lock:
            self.quant_error = max(self.quant_error, err)

    def info(self) -> dict:
        return {"adapter_module": self.name}


def attach_fuses(plan, ad: Adapter, mult: float) -> list[Fuse]:
    """Give the plan's ops of the adapted weights their ``Fuse`` stage; returns the stages."""
    from ..plan import Op
    from ..transforms import Chain

    by_src: dict[str, Op] = {}
    by_out: dict[str, Op] = {}
    for op in plan.ops:
        if len(op.sources) == 1:
            by_src.setdefault(op.sources[0].name, op)
        by_out.setdefault(op.outputs[0].name, op)
    wanted: list[tuple[str, Fuse, tuple]] = [
        (m.path + ".weight", Fuse(m.path, m, mult), (m.b.shape[0], m.a.shape[1])) for m in ad.modules.values()
    ]
    wanted += [(name, Fuse(name, full=(dt, arr)), arr.shape) for name, (dt, arr) in ad.full.items()]
    fuses = []
    for name, fuse, shape in wanted:
        op = by_src.get(name) or by_out.get(name)
        if op is None:
            dropped = next((why for n, why in plan.dropped if n == name), None)
            raise Torch2MLXError(
                f"adapter: {name} matches no tensor of the base"
                + (f" (the base's {name} is dropped: {dropped})" if dropped else "")
            )
        if op.rule != "identity" or len(op.sources) != 1:
            raise Torch2MLXError(
                f"adapter: {name}: the base tensor is converted by rule {op.rule}; only identity fuses"
            )
        if tuple(op.sources[0].shape) != tuple(shape):
            raise Torch2MLXError(
                f"adapter: {name}: the adapter's update is {list(shape)}, the base tensor {list(op.sources[0].shape)}"
            )
        if not op.source_dtype.is_float:
            raise Torch2MLXError(f"adapter: {name}: the base tensor is {op.source_dtype.name}, not floating point")
        chain = op.transform if isinstance(op.transform, Chain) else Chain()
        if op.transform is not None and chain is not op.transform:
            raise Torch2MLXError(f"adapter: {name}: the base tensor is transformed otherwise; cannot fuse")
        if chain.fuse is not None:
            raise Torch2MLXError(f"adapter: {name}: two adapter tensors land on it")
        chain.fuse = fuse
        op.transform = chain
        op.transform_info = chain.info()
        fuses.append(fuse)
    return fuses


def _close_fds(fds: dict) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


def quantized_view(ck, paths: set[str]):
    """``ck`` with the quantized weights the adapter targets seen as float (dequantized block by block),
    and the quantization each is given back after fusing: (checkpoint, {weight name: QuantSpec})."""
    from ...core.quant_recipes import QuantSpec
    from ...formats.data import DataReader
    from .. import dequant
    from ..reverse_plan import _quant_params

    found, specs = {}, {}
    for base, (w, s, b) in dequant.find(ck.entries).items():
        if base not in paths:
            continue  # not adapted: its packed codes pass through untouched
        q = _quant_params(base, {}, ck.config)
        if q is None:
            raise Torch2MLXError(
                f"{base}.weight is quantized, but config.json does not say with how many bits and which group size"
            )
        found[base] = dequant.check(base, w, s, b, int(q["bits"]), int(q["group_size"]), q.get("mode", "affine"))
        specs[base + ".weight"] = QuantSpec(int(q["group_size"]), int(q["bits"]), q.get("mode", "affine"))
    if not found:
        return ck, specs
    # The dequantizing loaders read through their own reader, as long as the plan lives: its files
    # are closed when the last loader is gone (the finalizer holds the open files, not the reader).
    reader = DataReader()
    weakref.finalize(reader, _close_fds, reader._fds)
    return dequant.view(ck, found, reader), specs


def requantize(plan, specs: dict, max_shard_size: int) -> None:
    """Fused weights of a quantized base go back to its quantization (after fusing, in their chain)."""
    from ...core import dtypes
    from ..plan import Output, assign_shards

    for op in plan.ops:
        out = op.outputs[0]
        spec = specs.get(out.name) or specs.get(op.sources[0].name)
        if spec is None or len(op.outputs) != 1:
            continue
        op.transform.spec = spec
        lead, k = out.shape[:-1], out.shape[-1]
        base = out.name[: -len("weight")]
        op.outputs = [
            Output(out.name, dtypes.get("uint32"), lead + (k * spec.bits // 32,)),
            Output(base + "scales", out.dtype, lead + (k // spec.group_size,)),
            Output(base + "biases", out.dtype, lead + (k // spec.group_size,)),
        ]
        op.transform_info = op.transform.info()
    plan.shards = assign_shards(plan.ops, max_shard_size)
