"""Read a LoRA adapter directory (PEFT's or mlx-lm's) into one neutral form, without torch.

Both libraries compute ``y = W x + s * B (A x)``; they differ in names, layout and where the scale lives:

- PEFT: ``adapter_config.json`` + ``adapter_model.safetensors`` (or ``.bin``), tensors
  ``base_model.model.<module>.lora_A.weight`` [r, in] and ``lora_B.weight`` [out, r], DoRA's
  ``lora_magnitude_vector`` [out], ``modules_to_save`` as ``base_model.model.<module>.weight``; the scale of
  each module is ``alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``), both per module through
  ``rank_pattern`` / ``alpha_pattern``.
- mlx-lm: ``adapter_config.json`` (``fine_tune_type``, ``num_layers``, ``lora_parameters`` {rank, scale,
  dropout, keys}) + ``adapters.safetensors``, tensors ``<module>.lora_a`` [in, r], ``lora_b`` [r, out],
  DoRA's ``m`` [out]; one rank and one scale for every module.

``Adapter.modules`` holds every module in PEFT's layout (A [r, in], B [out, r]) with its own rank and
scale, keyed by the module path of the adapter's own naming (PEFT: transformers' names; mlx-lm: MLX's).
Anything neither side can express is refused here, with the reason, never dropped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

from ...core import casts
from ...core.dtypes import DType
from ...errors import Torch2MLXError
from ...formats.checkpoint import open_checkpoint
from ...formats.data import DataReader
from .fold import F32, fold, is_power_of_two

CONFIG = "adapter_config.json"
PEFT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
MLX_FILE = "adapters.safetensors"
UNFOLDED_FILE = "torch2mlx_unfolded.safetensors"  # beside an mlx-lm adapter made from PEFT's (write.as_mlx_lm)
PEFT_PREFIX = "base_model.model."

# PEFT settings that change what the weights mean in ways neither converter nor mlx-lm reproduces.
_PEFT_UNSUPPORTED = {
    "use_qalora": "QA-LoRA (pooled inputs)",
    "layer_replication": "layer replication",
    "target_parameters": "LoRA on nn.Parameter targets",
    "trainable_token_indices": "trainable tokens",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
    "lora_bias": "a trained bias on lora_B",
    "use_bdlora": "block-diagonal LoRA",
}


@dataclass
class LoraModule:
    """One adapted Linear: ``W + scale * B @ A`` (DoRA: rows then scaled to ``magnitude``)."""

    path: str
    a: np.ndarray  # [r, in], values or raw bits of ``dtype``
    b: np.ndarray  # [out, r]
    dtype: DType
    scale: float
    magnitude: np.ndarray | None = None  # DoRA [out], of ``magnitude_dtype``
    magnitude_dtype: DType | None = None

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    def a32(self) -> np.ndarray:
        return casts.to_f32(self.a, self.dtype)

    def b32(self) -> np.ndarray:
        return casts.to_f32(self.b, self.dtype)


@dataclass
class Adapter:
    kind: str  # "peft" | "mlx"
    path: str
    config: dict
    modules: dict[str, LoraModule]
    full: dict[str, tuple[DType, np.ndarray]] = field(default_factory=dict)  # modules_to_save: tensor -> value
    dora: bool = False
    dropout: float = 0.0
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256

    @property
    def sha256(self) -> str:
        """One digest of the adapter's files (their names and digests, in name order)."""
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(f"{name}\0{self.files[name]}\n".encode())
        return h.hexdigest()


def detect(path) -> str | None:
    """ "peft", "mlx" or None: what kind of adapter directory ``path`` is."""
    path = os.fspath(path)
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, CONFIG)):
        return None
    if any(os.path.isfile(os.path.join(path, f)) for f in PEFT_FILES):
        return "peft"
    if os.path.isfile(os.path.join(path, MLX_FILE)):
        return "mlx"
    return None


def load(path) -> Adapter:
    """The adapter in ``path`` (PEFT or mlx-lm). Raises ``Torch2MLXError`` for anything it cannot express."""
    path = os.fspath(path)
    kind = detect(path)
    if kind is None:
        raise Torch2MLXError(
            f"{path}: not a LoRA adapter directory (needs {CONFIG} with "
            f"{' or '.join(PEFT_FILES)} (PEFT) or {MLX_FILE} (mlx-lm))"
        )
    config = _read_config(path)
    return _load_peft(path, config) if kind == "peft" else _load_mlx(path, config)


def load_digest(path: str) -> str:
    """``Adapter.sha256`` of the adapter in ``path`` from its files alone (no tensor is read)."""
    kind = detect(path)
    file = MLX_FILE if kind == "mlx" else next(f for f in PEFT_FILES if os.path.isfile(os.path.join(path, f)))
    files = {n: _file_sha(os.path.join(path, n)) for n in (CONFIG, file)}
    return Adapter(kind or "?", path, {}, {}, files=files).sha256


def _read_config(path: str) -> dict:
    f = os.path.join(path, CONFIG)
    try:
        with open(f, encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError) as e:
        raise Torch2MLXError(f"{f}: cannot read ({e})") from None
    if not isinstance(config, dict):
        raise Torch2MLXError(f"{f}: not a JSON object")
    return config


def _file_sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tensors(path: str, file: str) -> tuple[dict[str, tuple[DType, np.ndarray]], dict[str, str]]:
    f = os.path.join(path, file)
    ck = open_checkpoint(f)
    with DataReader() as reader:
        out = {e.name: (e.dtype, np.ascontiguousarray(reader.read_all(e)).reshape(e.shape)) for e in ck.entries}
    return out, {CONFIG: _file_sha(os.path.join(path, CONFIG)), file: _file_sha(f)}


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's ``get_pattern_key``: the first key matching the end of the module path (whole components)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _need_float(name: str, dt: DType, where: str) -> None:
    if not dt.is_float:
        raise Torch2MLXError(f"{where}: {name} is {dt.name}; LoRA weights must be floating point")


def _load_peft(path: str, config: dict) -> Adapter:
    where = os.path.join(path, CONFIG)
    if config.get("peft_type", "LORA") != "LORA":
        raise Torch2MLXError(f"{where}: peft_type {config.get('peft_type')!r}; only LORA adapters convert")
    for key, what in _PEFT_UNSUPPORTED.items():
        if config.get(key) not in (None, False, [], {}):
            raise Torch2MLXError(f"{where}: {key} ({what}) has no mlx-lm equivalent")
    if config.get("bias", "none") != "none":
        raise Torch2MLXError(f"{where}: bias={config['bias']!r} trains base biases; only bias='none' converts")
    if config.get("fan_in_fan_out"):
        raise Torch2MLXError(f"{where}: fan_in_fan_out (GPT-2 Conv1D weights) is not supported")
    file = next(f for f in PEFT_FILES if os.path.isfile(os.path.join(path, f)))
    tensors, files = _tensors(path, file)
    r0, alpha0 = config.get("r", 8), config.get("lora_alpha", 8)
    rslora = bool(config.get("use_rslora"))
    parts: dict[str, dict[str, tuple[DType, np.ndarray]]] = {}
    full: dict[str, tuple[DType, np.ndarray]] = {}
    for name, (dt, arr) in tensors.items():
        if not name.startswith(PEFT_PREFIX):
            raise Torch2MLXError(f"{path}/{file}: tensor {name!r} does not start with {PEFT_PREFIX!r}")
        rest = name[len(PEFT_PREFIX) :]
        m = re.fullmatch(r"(.+)\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector(?:\.weight)?)", rest)
        if m:
            parts.setdefault(m.group(1), {})[m.group(2).split(".")[0]] = (dt, arr)
        elif re.search(r"\.lora_(embedding_[AB]|A|B)\b", rest):
            raise Torch2MLXError(f"{path}/{file}: {rest}: LoRA on an Embedding or Conv layer is not supported")
        else:
            full[rest] = (dt, arr)  # modules_to_save: the module's whole tensors
    if full and not config.get("modules_to_save"):
        raise Torch2MLXError(f"{path}/{file}: tensor {next(iter(full))!r} is neither LoRA nor in modules_to_save")
    modules = {}
    for mod, p in parts.items():
        if "lora_A" not in p or "lora_B" not in p:
            raise Torch2MLXError(f"{path}/{file}: {mod} has {' and '.join(sorted(p))} but not both lora_A and lora_B")
        (da, a), (db, b) = p["lora_A"], p["lora_B"]
        for n, d in (("lora_A", da), ("lora_B", db)):
            _need_float(f"{mod}.{n}", d, f"{path}/{file}")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise Torch2MLXError(
                f"{path}/{file}: {mod}: lora_A {list(a.shape)} and lora_B {list(b.shape)} are not [r, in] and [out, r]"
            )
        if da != db:
            raise Torch2MLXError(f"{path}/{file}: {mod}: lora_A is {da.name}, lora_B {db.name}")
        r = a.shape[0]
        if r != _pattern_value(config.get("rank_pattern") or {}, mod, r0):
            raise Torch2MLXError(f"{where}: {mod}: rank {r} in the weights, the config says otherwise")
        alpha = _pattern_value(config.get("alpha_pattern") or {}, mod, alpha0)
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        mag = p.get("lora_magnitude_vector")
        if bool(mag) != bool(config.get("use_dora")):
            raise Torch2MLXError(f"{path}/{file}: {mod}: use_dora and lora_magnitude_vector disagree")
        if mag is not None and mag[1].shape != (b.shape[0],):
            raise Torch2MLXError(f"{path}/{file}: {mod}: magnitude {list(mag[1].shape)} is not [{b.shape[0]}]")
        modules[mod] = LoraModule(mod, a, b, da, float(scale), mag[1] if mag else None, mag[0] if mag else None)
    if not modules and not full:
        raise Torch2MLXError(f"{path}/{file}: no LoRA tensors")
    return Adapter(
        "peft", path, config, modules, full, bool(config.get("use_dora")), float(config.get("lora_dropout") or 0), files
    )


def _load_mlx(path: str, config: dict) -> Adapter:
    where = os.path.join(path, CONFIG)
    kind = config.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora"):
        raise Torch2MLXError(f"{where}: fine_tune_type {kind!r} is not a LoRA adapter (lora or dora)")
    params = config.get("lora_parameters")
    if not isinstance(params, dict) or not isinstance(params.get("scale"), (int, float)):
        raise Torch2MLXError(f"{where}: lora_parameters with a numeric scale expected")
    tensors, files = _tensors(path, MLX_FILE)
    parts: dict[str, dict[str, tuple[DType, np.ndarray]]] = {}
    for name, (dt, arr) in tensors.items():
        mod, _, leaf = name.rpartition(".")
        if leaf not in ("lora_a", "lora_b", "m") or not mod:
            raise Torch2MLXError(f"{path}/{MLX_FILE}: {name!r} is not an adapter parameter (lora_a, lora_b, m)")
        _need_float(name, dt, f"{path}/{MLX_FILE}")
        parts.setdefault(mod, {})[leaf] = (dt, arr)
    own = config.get("torch2mlx") or {}
    ranks, scales = own.get("ranks") or {}, own.get("scales") or {}
    unfolded: dict[str, tuple[DType, np.ndarray]] = {}
    if os.path.isfile(os.path.join(path, UNFOLDED_FILE)):
        unfolded, more = _tensors(path, UNFOLDED_FILE)
        files.update(more)
    modules = {}
    for mod, p in parts.items():
        if "lora_a" not in p or "lora_b" not in p:
            raise Torch2MLXError(f"{path}/{MLX_FILE}: {mod} lacks lora_a or lora_b")
        if mod.rsplit(".", 1)[-1].startswith("embed"):
            raise Torch2MLXError(f"{path}/{MLX_FILE}: {mod}: LoRA on an Embedding is not supported")
        (da, la), (db, lb) = p["lora_a"], p["lora_b"]
        if la.ndim != 2 or lb.ndim != 2 or la.shape[1] != lb.shape[0]:
            raise Torch2MLXError(
                f"{path}/{MLX_FILE}: {mod}: lora_a {list(la.shape)} and lora_b {list(lb.shape)} "
                "are not [in, r] and [r, out]"
            )
        if da != db:
            raise Torch2MLXError(f"{path}/{MLX_FILE}: {mod}: lora_a is {da.name}, lora_b {db.name}")
        if ("m" in p) != (kind == "dora"):
            raise Torch2MLXError(f"{path}/{MLX_FILE}: {mod}: fine_tune_type {kind!r} and the 'm' tensors disagree")
        mag = p.get("m")
        modules[mod] = LoraModule(
            mod,
            np.ascontiguousarray(la.T),
            np.ascontiguousarray(lb.T),
            da,
            float(params["scale"]),
            mag[1] if mag else None,
            mag[0] if mag else None,
        )
        # what a PEFT adapter held before ``write.as_mlx_lm`` padded its rank and folded its scale
        if mod in ranks or mod in scales:
            modules[mod] = _unfold(modules[mod], ranks.get(mod), scales.get(mod), unfolded.get(mod + ".lora_b"))
    if not modules:
        raise Torch2MLXError(f"{path}/{MLX_FILE}: no LoRA tensors")
    return Adapter("mlx", path, config, modules, {}, kind == "dora", float(params.get("dropout") or 0), files)


def _unfold(m: LoraModule, rank: int | None, scale: float | None, original=None) -> LoraModule:
    """Undo ``write.as_mlx_lm``'s zero padding and scale folding when that gives back exactly what mlx-lm computes.

    ``original``: the unrounded lora_b ``write.as_mlx_lm`` kept when the fold rounded; used only if folding it
    again still gives the lora_b in the adapter bit for bit (not trained since)."""
    a, b = m.a, m.b
    if rank is not None and rank < a.shape[0]:
        if np.any(casts.to_f32(a[rank:], m.dtype)) or np.any(casts.to_f32(b[:, rank:], m.dtype)):
            return m  # trained since: the padding holds values now
        a, b = np.ascontiguousarray(a[:rank]), np.ascontiguousarray(b[:, :rank])
    out = LoraModule(m.path, a, b, m.dtype, m.scale, m.magnitude, m.magnitude_dtype)
    if scale is None or scale == m.scale:
        return out
    ratio = scale / m.scale
    if not is_power_of_two(ratio):
        if original is None or original[0] != m.dtype or original[1].shape != b.T.shape:
            return out  # the fold rounded: the folded lora_b is what mlx-lm computes with
        orig = np.ascontiguousarray(original[1].T)
        if not np.array_equal(fold(orig, m.dtype, ratio)[0], b):
            return out
        return LoraModule(m.path, a, orig, m.dtype, float(scale), m.magnitude, m.magnitude_dtype)
    b32 = casts.to_f32(b, m.dtype)
    back = casts.cast((b32 / np.float32(ratio)).astype(np.float32), F32, m.dtype)
    if not np.array_equal(casts.to_f32(back, m.dtype) * np.float32(ratio), b32):
        return out
    return LoraModule(m.path, a, back, m.dtype, float(scale), m.magnitude, m.magnitude_dtype)
