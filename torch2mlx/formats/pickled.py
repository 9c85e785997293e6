"""Entries of a PyTorch pickle checkpoint (zip or legacy), validated against the storage bounds."""

from __future__ import annotations

from ..core.entry import TensorEntry, contiguous_strides
from ..errors import CheckpointError
from . import nested, torchscript
from .torch_legacy import LegacyCheckpoint, is_legacy
from .torch_zip import ZipCheckpoint, is_zip

# Bytes that views repeating their storage's elements (stride 0, overlapping strides) may take once
# written out, per file: 16 bytes of storage can otherwise claim terabytes of output.
REPEAT_LIMIT = 1 << 30


def _entry(ck, name: str, ref, path: str) -> TensorEntry:
    st = ref.storage
    base = ck.storage_offset(st)
    storage_bytes = st.nbytes
    if st.view is not None:
        _vkey, voff, vsize = st.view
        if (
            not all(isinstance(x, int) and x >= 0 for x in (voff, vsize))
            or (voff + vsize) * st.dtype.itemsize > storage_bytes
        ):
            raise CheckpointError(path, f"tensor {name!r}: storage view lies outside its storage")
        base += voff * st.dtype.itemsize
        storage_bytes = vsize * st.dtype.itemsize
    item = ref.dtype.itemsize
    if any(d < 0 for d in ref.shape) or any(s < 0 for s in ref.stride) or ref.storage_offset < 0:
        raise CheckpointError(path, f"tensor {name!r}: negative size, stride or storage offset")
    if 0 in ref.shape:  # no elements, but the offset must still lie in the storage, as torch's always does
        if ref.storage_offset * item > storage_bytes:
            raise CheckpointError(
                path,
                f"tensor {name!r}: empty, with offset {ref.storage_offset} past its storage ({storage_bytes} bytes)",
            )
    else:
        last = ref.storage_offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
        if (last + 1) * item > storage_bytes:
            raise CheckpointError(
                path,
                f"tensor {name!r}: shape {list(ref.shape)} with strides {list(ref.stride)} "
                f"and offset {ref.storage_offset} reaches past its storage ({storage_bytes} bytes)",
            )
    # torch's element counts are int64. Stopping there also keeps millions of dimensions (or huge
    # ones beside a zero) from a quadratic-time product, here and wherever the shape is used.
    count = 1
    for d in ref.shape:
        count *= max(d, 1)
        if count >= 1 << 63:
            raise CheckpointError(path, f"tensor {name!r}: a {len(ref.shape)}-D shape of more than 2**63 elements")
    strides = None if ref.stride == contiguous_strides(ref.shape) else ref.stride
    entry = TensorEntry(
        name,
        ref.dtype,
        ref.shape,
        path=path,
        offset=base + ref.storage_offset * item,
        strides=strides,
        byteorder=ck.byteorder,
        origin=path,
    )
    return (
        entry
        if not entry.contiguous
        else TensorEntry(
            name, ref.dtype, ref.shape, path=path, offset=entry.offset, byteorder=ck.byteorder, origin=path
        )
    )


def open_pickle(path: str):
    """The zip or legacy reader for a torch pickle file (``.load()`` gives its inert object graph)."""
    try:
        if is_zip(path):
            return ZipCheckpoint(path)
        if is_legacy(path):
            return LegacyCheckpoint(path)
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror or e}") from None
    raise CheckpointError(path, "not a PyTorch checkpoint (neither a zip archive nor a pickle)")


def entry_of(ck, name: str, ref) -> TensorEntry:
    """The entry of one tensor record of an opened pickle, checked against its storage."""
    return _entry(ck, name, ref, ck.path)


def read_entries(path: str, key: str | None = None) -> tuple[list[TensorEntry], list[str]]:
    """Entries of a torch pickle checkpoint and notes for the report."""
    return read_entries_at(path, key)[:2]


def read_entries_at(path: str, key: str | None = None) -> tuple[list[TensorEntry], list[str], str]:
    """As ``read_entries``, and the key path the weights were taken from (``""``: the whole object)."""
    ck = open_pickle(path)
    obj, placeholders = ck.load()
    if getattr(ck, "torchscript", False):
        if key:
            raise torchscript.refuse(path, "--key does not apply (its weights are the scripted module's)")
        skipped: list[str]
        refs, how, skipped, key_path = (
            torchscript.state_dict(obj, ck.script_classes, path),
            "a TorchScript module (torch.jit.save; its parameters and buffers, code not run)",
            [],
            "",
        )
        placeholders = set()  # its __torch__ classes are understood, not unknown
    else:
        refs, how, skipped, key_path = nested.select_path(obj, path, key)
    notes = []
    if how != "top-level tensors":
        notes.append(f"{path}: weights taken from {how}")
    if skipped:
        notes.append(f"{path}: {len(skipped)} non-tensor value(s) ignored (e.g. {', '.join(skipped[:3])})")
    if placeholders:
        notes.append(
            f"{path}: {len(placeholders)} unknown class(es) kept as inert placeholders "
            f"(e.g. {', '.join(sorted(placeholders)[:3])})"
        )
    entries = [_entry(ck, name, ref, path) for name, ref in refs.items()]
    repeating = [e for e in entries if e.nbytes > e.span]
    if sum(e.nbytes for e in repeating) > REPEAT_LIMIT:
        raise CheckpointError(
            path,
            f"tensor {repeating[0].name!r} repeats storage elements (stride 0 or overlapping "
            f"strides); written out, the file's repeating views would take "
            f"{sum(e.nbytes for e in repeating)} bytes, over the {REPEAT_LIMIT}-byte limit",
        )
    return entries, notes, key_path
