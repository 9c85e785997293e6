"""Focused checks of the reader guards, with torch as the oracle where a real file is needed."""

from __future__ import annotations

import copyreg

import pytest
import torch
from pickle_asm import EMPTY_TUPLE, NEWOBJ, REDUCE, glob, pickle_of, s, tup

from torch2mlx.errors import CheckpointError
from torch2mlx.formats import unpickler
from torch2mlx.stream import open as open_checkpoint


def test_legacy_whole_module_converts(tmp_path):
    """Legacy torch.save(model) names each module class as a ("module", class, file, source) record."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    path = tmp_path / "model.pt"
    torch.save(model, path, _use_new_zipfile_serialization=False)
    got = dict(open_checkpoint(path).tensors())
    want = model.state_dict()
    assert sorted(got) == sorted(want)
    for name, t in want.items():
        assert (got[name] == t.numpy()).all(), name


def test_global_names_with_any_character_become_placeholders():
    """type() refuses NUL in a class name; a pickle's GLOBAL may still carry one and must stay a placeholder."""
    obj, placeholders = unpickler.load(pickle_of(glob("mymodule", "Cfg\x00x") + EMPTY_TUPLE + NEWOBJ), "test", None)
    assert isinstance(obj, unpickler.Opaque) and placeholders == {"mymodule.Cfg\x00x"}


def test_extension_codes_go_through_find_class():
    """EXT1/2/4 name a global through copyreg's registry; a registered code still reaches find_class."""
    copyreg.add_extension("os", "system", 0xF0)
    try:
        with pytest.raises(CheckpointError, match="the pickle calls os.system"):
            unpickler.load(pickle_of(b"\x82\xf0" + tup(s("true")) + REDUCE), "test", None)
    finally:
        copyreg.remove_extension("os", "system", 0xF0)


def test_build_cannot_change_a_rebuild_function_for_later_loads():
    before = unpickler._rebuild_v2.__defaults__
    attack = pickle_of(glob("torch._utils", "_rebuild_tensor_v2") + tup(b"N", b"}") + b"b")
    with pytest.raises(CheckpointError, match="read-only"):
        unpickler.load(attack, "test", None)
    assert unpickler._rebuild_v2.__defaults__ == before


def test_sparse_config_json_is_not_read_into_memory(tmp_path):
    """A 4 GiB sparse config.json costs nothing to make; parsing it whole would need 4 GiB."""
    from hostile_runner import run_process
    from pickle_asm import safetensors_file

    safetensors_file(
        tmp_path / "model.safetensors", {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)
    )
    with open(tmp_path / "config.json", "wb") as f:
        f.truncate(4 << 30)
    proc = run_process(["stream", tmp_path, "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    assert "config.json is not valid JSON; copied as is" in proc.stdout
