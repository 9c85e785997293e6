"""Focused checks of the reader guards, with torch as the oracle where a real file is needed."""
from __future__ import annotations

import copyreg

import pytest
import torch

from hostile_corpus import good_dict
from pickle_asm import REDUCE, call, glob, pickle_of, s, tup
from torch2mlx.errors import CheckpointError
from torch2mlx.stream import open as open_checkpoint
from torch2mlx.stream.readers import unpickler


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
    obj, placeholders = unpickler.load(pickle_of(call(glob("mymodule", "Cfg\x00x"), s("a"))), "test", None)
    assert isinstance(obj, unpickler.Opaque) and placeholders == {"mymodule.Cfg\x00x"}
