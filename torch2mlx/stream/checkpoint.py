"""Open a checkpoint file or directory: the list of tensor entries, with no tensor data read."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..errors import CheckpointError, Torch2MLXError
from .entry import TensorEntry
from .readers import npz, pickled, safetensors, unpickler, zarr_store

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_SUFFIXES = (".safetensors", ".npz") + PICKLE_SUFFIXES
# Files in model directories that hold training state, not weights.
NOT_WEIGHTS = ("optimizer.pt", "scheduler.pt", "training_args.bin", "rng_state.pth", "scaler.pt")
SIDECAR_SUFFIXES = (".json", ".txt", ".model", ".py", ".jinja", ".tiktoken", ".md")
OUR_FILES = ("torch2mlx.json",)
MAX_JSON = 100 * 1024 * 1024   # index and config files; the index of a 1T-parameter model is a few MB


@dataclass
class Checkpoint:
    """What a source holds: tensor entries (metadata only), sidecar files, notes for the report."""

    path: str
    entries: list[TensorEntry]
    files: list[str]
    format: str
    sidecars: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    config: dict | None = None
    layout: str = "torch"     # "mlx" when the source is already in MLX layout (mx.savez, format=mlx shards)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def __len__(self):
        return len(self.entries)

    def tensors(self, upcast: bool = False):
        """Yield ``(name, numpy array)`` one tensor at a time.

        bfloat16/float8 arrive as their raw bits (uint16/uint8) unless
        ``upcast`` is set, which widens them exactly to float32.
        """
        from .data import DataReader
        from .casts import to_f32
        with DataReader() as reader:
            for e in self.entries:
                arr = reader.read_all(e)
                if upcast and e.dtype.is_float and not e.dtype.exact_numpy:
                    arr = to_f32(arr, e.dtype)
                yield e.name, arr


def _file_format(path: str) -> str:
    if path.endswith(".safetensors"):
        return "safetensors"
    if path.endswith(".npz"):
        return "npz"
    if path.endswith(PICKLE_SUFFIXES):
        return "pickle"
    # Unknown suffix: sniff the first bytes.
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PK\x03\x04" or (len(head) >= 2 and head[0] == 0x80):
        return "pickle"
    raise CheckpointError(path, "unknown checkpoint format (expected .safetensors, .bin, .pt, .pth or .ckpt)")


def _read_file(path: str, key: str | None) -> tuple[list[TensorEntry], list[str], dict, str]:
    fmt = _file_format(path)
    if fmt == "safetensors":
        entries, meta = safetensors.read_entries(path)
        return entries, [], meta, "safetensors"
    if fmt == "npz":
        entries, notes = npz.read_entries(path)
        return entries, notes, {}, "npz"
    entries, notes = pickled.read_entries(path, key)
    return entries, notes, {}, "pickle"


def _read_json(path: str):
    """A small JSON file's value; ValueError for one too big, invalid or nested too deeply.

    Read with a cap: a sparse file can claim terabytes while costing its maker nothing.
    """
    with open(path, "rb") as f:
        raw = f.read(MAX_JSON + 1)
    if len(raw) > MAX_JSON:
        raise ValueError(f"larger than the {MAX_JSON}-byte limit")
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _load_index(path: str) -> dict[str, str]:
    try:
        index = _read_json(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(path, f"unreadable index file ({e})") from None
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise CheckpointError(path, "index file has no weight_map of tensor name -> file")
    for v in wm.values():
        if os.path.isabs(v) or ".." in v.replace("\\", "/").split("/"):
            raise CheckpointError(path, f"index names a file outside its directory: {v!r}")
    return wm


def _find_index(d: str, names: list[str]) -> str | None:
    for suffix in (".safetensors.index.json", ".bin.index.json", ".pt.index.json", ".pth.index.json"):
        found = sorted(n for n in names if n.endswith(suffix))
        if found:
            preferred = [n for n in found if n.startswith(("model.", "pytorch_model."))]
            return os.path.join(d, (preferred or found)[0])
    return None


def _weight_files(d: str, names: list[str], notes: list[str]) -> list[str]:
    st = sorted(n for n in names if n.endswith(".safetensors"))
    pk = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES + (".npz",)) and n not in NOT_WEIGHTS)
    skipped = sorted(n for n in names if n in NOT_WEIGHTS)
    if skipped:
        notes.append(f"{d}: skipped training-state files {', '.join(skipped)}")
    if st and pk:
        notes.append(f"{d}: both safetensors and pickle weights present; reading the safetensors ({len(pk)} pickle file(s) ignored)")
        return st
    return st or pk


def open_checkpoint(path: str, key: str | None = None, allow_globals=()) -> Checkpoint:
    """Open a checkpoint file or directory. Raises Torch2MLXError for anything a user can fix.

    A pickle that calls a global other than a known data constructor is refused; ``allow_globals``
    (``"module.qualname"`` names) accepts such calls as inert placeholders. Nothing is ever executed.
    """
    with unpickler.allowing(allow_globals):
        return _open(path, key)


def _open(path: str, key: str | None) -> Checkpoint:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise Torch2MLXError(f"{path}: no such file or directory")
    if os.path.isdir(path) and zarr_store.is_zarr(path):
        entries, notes, attrs = zarr_store.read_entries(path)
        ck = Checkpoint(path, entries, [], "zarr", notes=notes, metadata=attrs,
                        layout=_layout("zarr", attrs))
        _check_names(ck)
        return ck
    if os.path.isfile(path):
        entries, notes, meta, fmt = _read_file(path, key)
        ck = Checkpoint(path, entries, [path], fmt, notes=notes, metadata=meta, layout=_layout(fmt, meta))
        _check_names(ck)
        return ck
    if not os.path.isdir(path):
        raise Torch2MLXError(f"{path}: not a regular file or directory")
    names = sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))
    notes: list[str] = []
    index_path = _find_index(path, names)
    weight_map = None
    if index_path:
        weight_map = _load_index(index_path)
        files = sorted(set(weight_map.values()))
        for f in files:
            if not os.path.isfile(os.path.join(path, f)):
                raise CheckpointError(index_path, f"names shard {f!r}, which does not exist")
        notes.append(f"{path}: using index {os.path.basename(index_path)} ({len(files)} shard(s))")
    else:
        files = _weight_files(path, names, notes)
        if not files:
            raise CheckpointError(path, "directory holds no weight files (.safetensors, .bin, .pt, .pth, .ckpt)")
    entries: list[TensorEntry] = []
    meta: dict = {}
    fmts = set()
    for f in files:
        fp = os.path.join(path, f)
        e, n, m, fmt = _read_file(fp, key)
        fmts.add(fmt)
        if weight_map is not None:
            listed = {k for k, v in weight_map.items() if v == f}
            have = {x.name for x in e}
            missing = sorted(listed - have)
            if missing:
                raise CheckpointError(index_path, f"says {missing[0]!r} is in {f}, but that file does not hold it")
            extra = sorted(have - listed)
            if extra:
                notes.append(f"{fp}: {len(extra)} tensor(s) not listed in the index (e.g. {extra[0]!r}); converted anyway")
        entries += e
        notes += n
        meta.update(m)
    used = set(files) | ({os.path.basename(index_path)} if index_path else set())
    sidecars = [os.path.join(path, n) for n in names
                if n not in used and not n.endswith(WEIGHT_SUFFIXES) and not n.endswith(".index.json")
                and n not in OUR_FILES and not n.startswith(".")
                and (n.endswith(SIDECAR_SUFFIXES) or n.startswith("tokenizer"))]
    config = None
    if "config.json" in names:
        try:
            config = _read_json(os.path.join(path, "config.json"))
        except (OSError, ValueError):
            notes.append(f"{path}/config.json is not valid JSON; copied as is")
    ck = Checkpoint(path, entries, [os.path.join(path, f) for f in files], "+".join(sorted(fmts)),
                    sidecars=sidecars, notes=notes, metadata=meta, config=config if isinstance(config, dict) else None,
                    layout=_layout("+".join(sorted(fmts)), meta))
    _check_names(ck)
    return ck


def _layout(fmt: str, meta: dict) -> str:
    return "mlx" if fmt == "npz" or meta.get("format") == "mlx" else "torch"


def _check_names(ck: Checkpoint):
    seen: dict[str, str] = {}
    for e in ck.entries:
        # A pickle's strings may carry lone surrogates (invalid UTF-8 decoded with surrogatepass), and JSON
        # may spell one as "\ud800"; no safetensors header can hold such a name.
        if not e.name.isascii():
            try:
                e.name.encode("utf-8")
            except UnicodeEncodeError:
                raise CheckpointError(e.origin, f"tensor name {e.name!r} is not valid UTF-8") from None
        if e.name in seen:
            raise CheckpointError(e.origin, f"tensor {e.name!r} is also in {seen[e.name]} (duplicate name)")
        seen[e.name] = e.origin
