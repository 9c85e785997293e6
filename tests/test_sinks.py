"""The output formats are one table (``stream/sinks.py``): ``convert`` and ``to_torch`` look a format up there,
and what they refuse and list comes from its entries, so a format added to the table is written and named
without another branch anywhere."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import assert_one_error, run_main

from torch2mlx import stream
from torch2mlx.cli import build_parser
from torch2mlx.errors import Torch2MLXError
from torch2mlx.stream import sinks
from torch2mlx.stream.sinks import FORWARD, REVERSE, SINKS, Sink


@pytest.fixture
def src(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    save_file({"a.weight": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.float32)}, str(path))
    return path


def _listing(out: str, seen: list) -> Sink:
    def write(run: sinks.Run) -> None:
        seen.append(run)
        with open(os.path.join(run.out, "names.txt"), "w") as f:
            f.write("\n".join(o.name for op in run.plan.ops for o in op.outputs))

    return Sink("listing", write, (FORWARD,))


def test_a_format_in_the_table_is_what_convert_writes(src, tmp_path, monkeypatch):
    seen: list = []
    monkeypatch.setitem(SINKS, "listing", _listing(str(tmp_path / "out"), seen))
    res = stream.convert(src, tmp_path / "out", format="listing", model=False, workers=3)
    (run,) = seen
    assert run.res is res and run.workers == 3 and run.hook is None and not run.resumable
    assert (tmp_path / "out" / "names.txt").read_text().split("\n") == ["a.weight", "b"]


def test_what_a_sink_cannot_do_is_refused_by_its_entry(src, tmp_path, monkeypatch):
    seen: list = []
    monkeypatch.setitem(SINKS, "listing", _listing(str(tmp_path / "out"), seen))
    with pytest.raises(Torch2MLXError, match=r"^format='listing' does not combine with resume$"):
        stream.convert(src, tmp_path / "o1", format="listing", resume=True, model=False)
    with pytest.raises(Torch2MLXError, match=r"^a hook does not combine with resume or format='zarr' or "):
        stream.convert(src, tmp_path / "o2", format="listing", hook=lambda n, a, d: (n, a), model=False)
    assert not seen and not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_errors_list_the_formats_of_the_table(src, tmp_path, monkeypatch):
    monkeypatch.setitem(SINKS, "listing", _listing(str(tmp_path / "out"), []))
    with pytest.raises(Torch2MLXError) as e:
        stream.convert(src, tmp_path / "out", format="nope", model=False)
    assert str(e.value) == (
        "format must be one of safetensors, zarr, listing (bin: stream.to_torch; gguf: stream.to_gguf), got 'nope'"
    )
    monkeypatch.setitem(SINKS, "back", Sink("back", sinks.write_safetensors, (REVERSE,)))
    with pytest.raises(Torch2MLXError) as e:
        stream.to_torch(src, tmp_path / "out", format="zarr")
    assert str(e.value) == "to_torch writes format safetensors or bin or back, not 'zarr'"


def test_the_cli_offers_the_formats_and_directions_of_the_table(src, tmp_path):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["stream"]
    by_dest = {a.dest: a for a in sub._actions}
    assert tuple(by_dest["format"].choices) == tuple(SINKS) == ("safetensors", "zarr", "bin", "gguf")
    assert tuple(by_dest["to"].choices) == (FORWARD, REVERSE, sinks.GGUF)
    assert sinks.names(FORWARD) == ("safetensors", "zarr") and sinks.names(REVERSE) == ("safetensors", "bin")
    assert_one_error(
        run_main("stream", src, tmp_path / "out", "--format", "bin"), "--format must be one of safetensors, zarr"
    )
