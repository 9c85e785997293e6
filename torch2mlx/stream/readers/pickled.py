"""Entries of a PyTorch pickle checkpoint (zip or legacy), validated against the storage bounds."""
from __future__ import annotations

from ...errors import CheckpointError
from ..entry import TensorEntry, contiguous_strides
from . import nested
from .torch_legacy import LegacyCheckpoint, is_legacy
from .torch_zip import ZipCheckpoint, is_zip


def _entry(ck, name: str, ref, path: str) -> TensorEntry:
    st = ref.storage
    base = ck.storage_offset(st)
    storage_bytes = st.nbytes
    if st.view is not None:
        _vkey, voff, vsize = st.view
        if not all(isinstance(x, int) and x >= 0 for x in (voff, vsize)) or (voff + vsize) * st.dtype.itemsize > storage_bytes:
            raise CheckpointError(path, f"tensor {name!r}: storage view lies outside its storage")
        base += voff * st.dtype.itemsize
        storage_bytes = vsize * st.dtype.itemsize
    item = ref.dtype.itemsize
    numel = 1
    for d in ref.shape:
        numel *= d
    if any(d < 0 for d in ref.shape) or any(s < 0 for s in ref.stride) or ref.storage_offset < 0:
        raise CheckpointError(path, f"tensor {name!r}: negative size, stride or storage offset")
    if numel:
        last = ref.storage_offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
        if (last + 1) * item > storage_bytes:
            raise CheckpointError(path, f"tensor {name!r}: shape {list(ref.shape)} with strides {list(ref.stride)} "
                                        f"and offset {ref.storage_offset} reaches past its storage ({storage_bytes} bytes)")
    strides = None if ref.stride == contiguous_strides(ref.shape) else ref.stride
    entry = TensorEntry(name, ref.dtype, ref.shape, path=path, offset=base + ref.storage_offset * item,
                        strides=strides, byteorder=ck.byteorder, origin=path)
    return entry if not entry.contiguous else TensorEntry(
        name, ref.dtype, ref.shape, path=path, offset=entry.offset, byteorder=ck.byteorder, origin=path)


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
    ck = open_pickle(path)
    obj, placeholders = ck.load()
    refs, how, skipped = nested.select(obj, path, key)
    notes = []
    if how != "top-level tensors":
        notes.append(f"{path}: weights taken from {how}")
    if skipped:
        notes.append(f"{path}: {len(skipped)} non-tensor value(s) ignored (e.g. {', '.join(skipped[:3])})")
    if placeholders:
        notes.append(f"{path}: {len(placeholders)} unknown class(es) kept as inert placeholders "
                     f"(e.g. {', '.join(sorted(placeholders)[:3])})")
    entries = [_entry(ck, name, ref, path) for name, ref in refs.items()]
    return entries, notes
