"""Open a checkpoint file or directory: the list of tensor entries, with no tensor data read."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.entry import TensorEntry
from ..errors import CheckpointError, Torch2MLXError
from . import npz, pickled, remote, safetensors, unpickler, zarr_store

if TYPE_CHECKING:
    from .gguf import GGUFSource

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_SUFFIXES = (".safetensors", ".npz") + PICKLE_SUFFIXES
FORMATS_READ = ", ".join(WEIGHT_SUFFIXES) + ", .gguf, a zarr store"  # for errors and --help
# Files in model directories that hold training state, not weights.
NOT_WEIGHTS = ("optimizer.pt", "scheduler.pt", "training_args.bin", "rng_state.pth", "scaler.pt")
SIDECAR_SUFFIXES = (".json", ".txt", ".model", ".py", ".jinja", ".tiktoken", ".md")
# The manifest a conversion leaves beside its weights (written by stream/manifest.py, which takes its name
# from here): read by the way back and --resume, never copied as a sidecar.
MANIFEST_NAME = "torch2mlx.json"
OUR_FILES = (MANIFEST_NAME,)
MAX_JSON = 100 * 1024 * 1024  # index and config files; the index of a 1T-parameter model is a few MB


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
    layout: str = "torch"  # "mlx" when the source is already in MLX layout (mx.savez, format=mlx shards)
    # Pickles: the key path the weights were taken from ("" the whole object), recorded in the
    # manifest so verify and --resume read the same tensors. None for formats without nesting.
    key: str | None = None
    # A remote source: the temporary directory its sidecars (config, tokenizer, index) were fetched into.
    local_dir: str | None = None
    # A GGUF source: its architecture and the GGML type of each block-quantized entry (formats/gguf.py).
    gguf: GGUFSource | None = None

    @property
    def config_dir(self) -> str:
        """The directory whose config.json ``config`` came from: ``path``, or a single file's directory."""
        if self.local_dir is not None:
            return self.local_dir
        return self.path if os.path.isdir(self.path) else os.path.dirname(os.path.abspath(self.path))

    @property
    def folder(self) -> str | None:
        """The local directory of the source's small files (index, config, ``torch2mlx.json``): the source
        directory itself, the fetched copy for a remote source, None for a single local file."""
        if self.local_dir is not None:
            return self.local_dir
        return self.path if os.path.isdir(self.path) else None

    @property
    def remote(self) -> bool:
        """Tensor bytes are read by range from a URL (``hf://``, ``https://``, fsspec), not from local files."""
        return self.local_dir is not None

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def __len__(self):
        return len(self.entries)

    def __repr__(self) -> str:
        # The dataclass repr would print every entry and the whole config: unreadable for a real model.
        from ..core.sizes import human_bytes

        size = human_bytes(self.nbytes) + (f" ({self.nbytes:,} bytes)" if self.nbytes >= 1024 else "")
        return (
            f"<Checkpoint {self.path!r}: {self.format}, {len(self.entries)} tensors, {size} in "
            f"{_count(self.files, 'file')}"
            + (f", {_count(self.sidecars, 'sidecar file')}" if self.sidecars else "")
            + ">"
        )

    def tensors(self, upcast: bool = False):
        """Yield ``(name, mx.array)`` one tensor at a time, holding the tensor's values.

        Dtypes MLX lacks arrive as a conversion stores them: float8 as bfloat16
        (exact), complex128 as complex64. ``upcast`` widens bfloat16/float8 to float32.
        """
        from ..core.values import to_mx
        from .data import DataReader

        with DataReader() as reader:
            for e in self.entries:
                yield e.name, to_mx(reader.read_all(e), e.dtype, upcast)


def _count(items, what: str) -> str:
    return f"{len(items)} {what}" + ("" if len(items) == 1 else "s")


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
    raise CheckpointError(path, f"unknown checkpoint format (torch2mlx reads {FORMATS_READ}, or a directory of these)")


def _read_file(path: str, key: str | None) -> tuple[list[TensorEntry], list[str], dict, str, str | None]:
    fmt = _file_format(path)
    if fmt == "safetensors":
        entries, meta = safetensors.read_entries(path)
        return entries, [], meta, "safetensors", None
    if fmt == "npz":
        entries, notes = npz.read_entries(path)
        return entries, notes, {}, "npz", None
    entries, notes, key_path = pickled.read_entries_at(path, key)
    return entries, notes, {}, "pickle", key_path


def _read_json(path: str):
    """A small JSON file's value; ValueError for one too big, invalid or nested too deeply.

    Read with a cap: a sparse file can claim terabytes while costing its maker nothing.
    """
    with open(path, "rb") as f:
        raw = f.read(MAX_JSON + 1)
    if len(raw) > MAX_JSON:
        raise ValueError(f"larger than the {MAX_JSON}-byte limit")
    try:
        # JSON files are UTF-8 (RFC 8259); json.loads of bytes would guess UTF-16/32, importing their codecs
        return json.loads(raw.decode("utf-8"))
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
    for v in dict.fromkeys(wm.values()):
        if os.path.isabs(v) or ".." in v.replace("\\", "/").split("/"):
            raise CheckpointError(path, f"index names a file outside its directory: {v!r}")
    return wm


def _find_index(d: str, names: list[str]) -> str | None:
    """The index to read. As transformers does, the model's safetensors win: a pickle index only without them."""
    has_st = any(n.endswith(".safetensors") and n.startswith(("model.", "model-")) for n in names)
    for suffix in (".safetensors.index.json", ".bin.index.json", ".pt.index.json", ".pth.index.json"):
        if has_st and suffix != ".safetensors.index.json":
            break
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
    return st or pk


def _note_ignored(d: str, names: list[str], files: list[str], index_path: str | None, notes: list[str]) -> None:
    """Say which set of weights was chosen when the directory holds another (transformers prefers safetensors)."""
    used = set(files) | ({os.path.basename(index_path)} if index_path else set())
    other = sorted(
        n
        for n in names
        if n not in used and n not in NOT_WEIGHTS and (n.endswith(WEIGHT_SUFFIXES) or n.endswith(".index.json"))
    )
    if other:
        kind = "+".join(
            sorted(
                {
                    "safetensors" if f.endswith(".safetensors") else "npz" if f.endswith(".npz") else "pickle"
                    for f in files
                }
            )
        )
        shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        notes.append(f"{d}: reading the {kind} weights ({len(files)} file(s)); ignored {shown}")


def open_checkpoint(path: str, key: str | None = None, allow_globals=()) -> Checkpoint:
    """Open a checkpoint file or directory (``torch2mlx.stream.open``): headers only, no tensor data read.

    Args:
        path: a safetensors file, a torch zip or legacy pickle (``.pt``/``.pth``/``.bin``/``.ckpt``), an
            ``.npz``, a zarr store, or a directory of shards (with or without an index).
        key: which entry of a nested checkpoint holds the weights (dotted path); default: found by itself.
        allow_globals: ``"module.qualname"`` pickle globals whose calls are accepted as inert placeholders
            instead of refusing the file. Nothing from a pickle is ever executed.

    Returns:
        Checkpoint: ``entries`` (name, dtype, shape, file, offset), ``tensors()`` (one ``mx.array`` at a time).

    Raises:
        Torch2MLXError: anything a user can fix (no such file, an unreadable header, a pickle that calls
            an unknown global, a nested checkpoint whose weights cannot be found).

    Example:
        >>> ck = torch2mlx.stream.open("./my-model")  # doctest: +SKIP
        >>> [(e.name, e.shape) for e in ck.entries][:2]  # doctest: +SKIP
    """
    with unpickler.allowing(allow_globals):
        return _open(path, key)


def _open(path: str, key: str | None) -> Checkpoint:
    path = os.fspath(path)
    url = remote.source_url(path)
    if url == path:
        return _open_remote(path, key)
    if url is not None:  # ORG/NAME[@REV] that is no local path
        try:
            return _open_remote(url, key)
        except Torch2MLXError as err:
            raise Torch2MLXError(f"{path}: no such file or directory; as a Hub id: {err}") from None
    if not os.path.exists(path):
        raise Torch2MLXError(f"{path}: no such file or directory")
    if os.path.isdir(path) and zarr_store.is_zarr(path):
        entries, notes, attrs = zarr_store.read_entries(path)
        ck = Checkpoint(path, entries, [], "zarr", notes=notes, metadata=attrs, layout=_layout("zarr", attrs))
        _check_names(ck)
        return ck
    if os.path.isfile(path) and path.endswith(".gguf"):
        from .gguf_meta import open_gguf

        ck = Checkpoint(**open_gguf(path))
        _check_names(ck)
        return ck
    if os.path.isfile(path):
        entries, notes, meta, fmt, key_path = _read_file(path, key)
        # A file inside a model directory (config.json beside it) brings the directory's sidecars, as the
        # directory would: without config.json and the tokenizer, mlx_lm.load cannot use the output.
        sidecars: list[str]
        sidecars, config = [], None
        d = os.path.dirname(os.path.abspath(path))
        if os.path.isfile(os.path.join(d, "config.json")):
            names = sorted(n for n in os.listdir(d) if os.path.isfile(os.path.join(d, n)))
            sidecars, config = _sidecars_and_config(d, names, {os.path.basename(path)}, notes)
            if sidecars:
                notes.append(
                    f"{d}: a single file in a model directory; its sidecars come along "
                    f"({', '.join(os.path.basename(x) for x in sidecars)})"
                )
        ck = Checkpoint(
            path,
            entries,
            [path],
            fmt,
            sidecars=sidecars,
            notes=notes,
            metadata=meta,
            config=config,
            layout=_layout(fmt, meta),
            key=key_path,
        )
        _check_names(ck)
        return ck
    if not os.path.isdir(path):
        raise Torch2MLXError(f"{path}: not a regular file or directory")
    names = sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))
    if not any(n.endswith(WEIGHT_SUFFIXES) for n in names) and any(n.endswith(".gguf") for n in names):
        from .gguf import one_model

        return _open(one_model(path, [n for n in names if n.endswith(".gguf")]), key)
    notes = []
    index_path = _find_index(path, names)
    weight_map = None
    if index_path:
        weight_map = _load_index(index_path)
        files = sorted(set(weight_map.values()))
        for f in files:
            if not os.path.isfile(os.path.join(path, f)):
                raise CheckpointError(index_path, f"names shard {f!r}, which does not exist")
        notes.append(f"{path}: using index {os.path.basename(index_path)} ({len(files)} shard(s))")
        _note_ignored(path, names, files, index_path, notes)
    else:
        files = _weight_files(path, names, notes)
        _note_ignored(path, names, files, None, notes)
        if not files:
            raise CheckpointError(
                path, f"directory holds no weight files (torch2mlx reads {', '.join(WEIGHT_SUFFIXES)}, or a zarr store)"
            )
    entries = []
    meta = {}
    fmts = set()
    key_paths = set()
    listed_in: dict[str, set[str]] = {}
    for k, v in (weight_map or {}).items():
        listed_in.setdefault(v, set()).add(k)
    for f in files:
        fp = os.path.join(path, f)
        e, n, m, fmt, key_path = _read_file(fp, key)
        fmts.add(fmt)
        key_paths.add(key_path)
        if weight_map is not None:
            listed = listed_in.get(f, set())
            have = {x.name for x in e}
            missing = sorted(listed - have)
            if missing:
                raise CheckpointError(index_path, f"says {missing[0]!r} is in {f}, but that file does not hold it")
            extra = sorted(have - listed)
            if extra:
                notes.append(
                    f"{fp}: {len(extra)} tensor(s) not listed in the index (e.g. {extra[0]!r}); converted anyway"
                )
        entries += e
        notes += n
        meta.update(m)
    used = set(files) | ({os.path.basename(index_path)} if index_path else set())
    sidecars, config = _sidecars_and_config(path, names, used, notes)
    ck = Checkpoint(
        path,
        entries,
        [os.path.join(path, f) for f in files],
        "+".join(sorted(fmts)),
        sidecars=sidecars,
        notes=notes,
        metadata=meta,
        config=config,
        layout=_layout("+".join(sorted(fmts)), meta),
        key=key_paths.pop() if len(key_paths - {None}) == 1 and len(key_paths) == 1 else None,
    )
    _check_names(ck)
    return ck


def _sidecars_and_config(d: str, names: list[str], used: set[str], notes: list[str]) -> tuple[list[str], dict | None]:
    """The files of directory ``d`` that go along with its weights (config, tokenizer, ...) and config.json's value."""
    sidecars = [
        os.path.join(d, n)
        for n in names
        if n not in used
        and not n.endswith(WEIGHT_SUFFIXES)
        and not n.endswith(".index.json")
        and n not in OUR_FILES
        and not n.startswith(".")
        and (n.endswith(SIDECAR_SUFFIXES) or n.startswith("tokenizer"))
    ]
    config = None
    if "config.json" in names:
        try:
            config = _read_json(os.path.join(d, "config.json"))
        except (OSError, ValueError):
            notes.append(f"{d}/config.json is not valid JSON; copied as is")
    return sidecars, config if isinstance(config, dict) else None


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


MAX_SIDECAR = 64 * 1024 * 1024  # a remote tokenizer or config larger than this is no sidecar
EAGER_SIDECAR = 64 * 1024  # remote sidecars up to this size are fetched at open; larger ones when copied
_HEAD_GUESS = 1 << 16  # first request for a remote safetensors header: most headers fit
# Bytes of one tensor's header record besides its name: "":{"dtype":"BF16","shape":[8192,28672],
# "data_offsets":[1409286144,1879048192]}, with room for more dimensions and longer numbers.
_RECORD = 96


def _head_guess(names: list[str] | None) -> int:
    """How many bytes to ask for first: the header's likely size when the index names the file's tensors
    (a 70B model's 30 shards: 4 KiB each, not 64 KiB), else ``_HEAD_GUESS``."""
    if not names:
        return _HEAD_GUESS
    est = 8 + 256 + sum(len(n) + _RECORD for n in names)
    return min(_HEAD_GUESS, -(-est * 5 // 4 // 4096) * 4096)


def _remote_source(f: remote.RemoteFile, guess: int = _HEAD_GUESS):
    """``(size, read)`` for ``safetensors.read_header``: the first request takes the header's likely size,
    a second one what it missed."""
    first = remote.read_bytes(f, 0, min(f.size, guess))

    def read(offset: int, n: int) -> bytes:
        n = min(n, f.size - offset)
        if offset + n <= len(first):
            return first[offset : offset + n]
        if offset < len(first):  # the rest of a header the guess cut short
            return first[offset:] + remote.read_bytes(f, len(first), offset + n - len(first))
        return remote.read_bytes(f, offset, n)

    return f.size, read


def _open_remote(url: str, key: str | None) -> Checkpoint:
    """A remote source: safetensors headers and torch zip directories read by range, small files (index,
    config, tokenizer) fetched whole into a temporary directory, tensor bytes left where they are (read by
    ``DataReader``)."""
    import atexit
    import shutil
    import tempfile

    listing = remote.resolve_url(url)
    names = sorted(n for n in listing.files if "/" not in n)
    if listing.single is not None:
        wanted = [listing.single]
    else:
        wanted = None
    tmp = tempfile.mkdtemp(prefix="t2mlx-remote-")
    atexit.register(shutil.rmtree, tmp, True)
    if (
        wanted is None
        and not any(n.endswith(WEIGHT_SUFFIXES) for n in names)
        and any(n.endswith(".gguf") for n in names)
    ):
        from .gguf import one_model

        wanted = [os.path.basename(one_model(listing.label, [n for n in names if n.endswith(".gguf")]))]
    if wanted and wanted[0].endswith(".gguf"):  # the header by range into a sparse stand-in (gguf_remote.py)
        from .gguf_remote import open_remote

        ck = Checkpoint(**open_remote(listing, wanted[0], os.path.join(tmp, "gguf")), local_dir=tmp)
        _check_names(ck)
        return ck
    small = [
        n
        for n in names
        if (n.endswith(".index.json") or n.endswith(SIDECAR_SUFFIXES) or n.startswith("tokenizer"))
        and not n.endswith(WEIGHT_SUFFIXES)
        and listing.files[n].size <= MAX_SIDECAR
        and (wanted is None or not n.endswith(".index.json"))
    ]
    for n in small:
        rf = listing.files[n]
        # What opening, planning and analyzing read (the index, configs, a conversion's manifest, model code)
        # comes now; a tokenizer of megabytes only when a run copies it (analyze and --dry-run never do).
        if rf.size <= EAGER_SIDECAR or n.endswith((".index.json", ".py")) or n in ("config.json",) + OUR_FILES:
            remote.fetch_to(rf, os.path.join(tmp, n))
        else:
            remote.defer(rf, os.path.join(tmp, n))
    notes: list[str] = []
    index_path = None if wanted else _find_index(tmp, [n for n in names if n in small or n.endswith(WEIGHT_SUFFIXES)])
    if index_path:
        weight_map = _load_index(index_path)
        files = sorted(set(weight_map.values()))
        for f in files:
            if f not in listing.files:
                raise CheckpointError(
                    f"{listing.label}/{os.path.basename(index_path)}",
                    f"names shard {f!r}, which the repo does not hold",
                )
        notes.append(f"{listing.label}: using index {os.path.basename(index_path)} ({len(files)} shard(s))")
    else:
        weight_map = None
        files = wanted or _weight_files(listing.label, names, notes)
        if not files:
            raise CheckpointError(
                listing.label, f"holds no weight files (torch2mlx reads {', '.join(WEIGHT_SUFFIXES)})"
            )
    other = [f for f in files if not f.endswith(WEIGHT_SUFFIXES)]
    if other:
        raise Torch2MLXError(
            f"{listing.label}: {other[0]}: only .safetensors, .npz and torch pickle (.bin/.pt/.pth/.ckpt) "
            "weights are read remotely; download it first (e.g. `hf download`) and convert the folder"
        )
    entries: list[TensorEntry] = []
    meta: dict = {}
    fmts: set[str] = set()
    key_paths: set[str] = set()
    in_file: dict[str, list[str]] = {}
    for k, v in (weight_map or {}).items():
        in_file.setdefault(v, []).append(k)
    for f in files:
        rf = listing.files[f]
        if f.endswith(".safetensors"):
            e, m = safetensors.read_entries(rf.label, _remote_source(rf, _head_guess(in_file.get(f))))
            fmts.add("safetensors")
        elif f.endswith(".npz"):  # the zip's central directory and each member's headers, by range
            e, _ = npz.read_entries(rf.label)
            m = {}
            fmts.add("npz")
        else:  # a zip's central directory, local headers and data.pkl, or a legacy pickle's, by range
            e, pickle_notes, key_path = pickled.read_entries_at(rf.label, key)
            m = {}
            notes += pickle_notes
            fmts.add("pickle")
            key_paths.add(key_path)
        if weight_map is not None:
            missing = sorted({k for k, v in weight_map.items() if v == f} - {x.name for x in e})
            if missing:
                raise CheckpointError(rf.label, f"the index says it holds {missing[0]!r}; it does not")
        entries += e
        meta.update(m)
    used = set(files) | ({os.path.basename(index_path)} if index_path else set())
    sidecars, config = _sidecars_and_config(tmp, sorted(small), used, notes)
    fmt = "+".join(sorted(fmts))
    ck = Checkpoint(
        listing.label,
        entries,
        [listing.files[f].label for f in files],
        fmt,
        sidecars=sidecars,
        notes=notes,
        metadata=meta,
        config=config,
        layout=_layout(fmt, meta),
        key=key_paths.pop() if len(key_paths) == 1 else None,
        local_dir=tmp,
    )
    _check_names(ck)
    return ck
