"""Hostile pickles: refused with one error line naming the file, and the payload never runs."""
from __future__ import annotations

import builtins
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import assert_no_index, assert_one_error, check_converted, run_cli, run_main, torch_save


class Payload:
    """Pickles as ``func(*args)``: what a hostile checkpoint does to run code at load time."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: str) -> dict[str, tuple[Payload, str]]:
    """name -> (payload that would create ``marker``, the global the error must name)."""
    code = f"open({marker!r}, 'w').close()"
    return {
        "os.system": (Payload(os.system, f"touch '{marker}'"), "system"),
        "eval": (Payload(builtins.eval, code), "eval"),
        "exec": (Payload(builtins.exec, code), "exec"),
        "subprocess.Popen": (Payload(subprocess.Popen, ["touch", marker]), "Popen"),
        "subprocess.check_output": (Payload(subprocess.check_output, ["touch", marker]), "check_output"),
        "builtins.open": (Payload(builtins.open, marker, "w"), "open"),
    }


def _hostile_checkpoint(path, fmt, payload, where, protocol=2):
    t = torch.arange(6.0).reshape(2, 3)
    obj = {"top": {"weight": t, "evil": payload},
           "hparams": {"state_dict": {"weight": t}, "hyper_parameters": {"cfg": payload}},
           "list": {"model": {"weight": t}, "callbacks": [1, 2, [payload]]}}[where]
    torch.save(obj, path, pickle_protocol=protocol, _use_new_zipfile_serialization=fmt == "zip")
    return path


@pytest.mark.parametrize("kind", ["os.system", "eval", "exec", "subprocess.Popen", "subprocess.check_output",
                                  "builtins.open"])
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_payload_refused_and_never_run(tmp_path, fmt, kind):
    marker = tmp_path / "PWNED"
    payload, global_name = payloads(str(marker))[kind]
    src = _hostile_checkpoint(tmp_path / f"evil_{fmt}.pt", fmt, payload, "top")
    out = tmp_path / "out"
    # a real process for one payload per format, the same main() in this process for the rest
    proc = (run_cli if kind == "os.system" else run_main)("stream", src, out)
    err = assert_one_error(proc, str(src), global_name)
    assert "refus" in err
    assert not marker.exists(), "the payload ran"
    assert_no_index(out)


@pytest.mark.parametrize("where", ["hparams", "list"])
@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_payload_anywhere_in_the_pickle(tmp_path, fmt, where, protocol):
    """Deep inside training state, GLOBAL (protocol 2) or STACK_GLOBAL (protocol 4), dry run included."""
    marker = tmp_path / "PWNED"
    src = _hostile_checkpoint(tmp_path / f"evil_{fmt}.ckpt", fmt, payloads(str(marker))["os.system"][0], where, protocol)
    for extra in ([], ["--dry-run"], ["--key", "state_dict"]):
        proc = run_main("stream", src, tmp_path / "out", *extra)
        assert_one_error(proc, str(src), "system")
    assert not marker.exists()
    assert_no_index(tmp_path / "out")


def test_hostile_shard_in_a_directory(tmp_path):
    marker = tmp_path / "PWNED"
    src = tmp_path / "model"
    src.mkdir()
    torch_save({"a": torch.ones(2)}, src / "pytorch_model-00001-of-00002.bin")
    bad = _hostile_checkpoint(src / "pytorch_model-00002-of-00002.bin", "legacy", payloads(str(marker))["eval"][0], "top")
    proc = run_cli("stream", src, tmp_path / "out")
    assert_one_error(proc, str(bad), "eval")
    assert not marker.exists()
    assert_no_index(tmp_path / "out")


TRAP = textwrap.dedent("""
    # Importing this module or calling run() proves that torch2mlx executed checkpoint code.
    import os
    open(os.environ["T2MLX_TRAP_MARKER"] + ".imported", "w").close()

    def fire(*args):
        open(os.environ["T2MLX_TRAP_MARKER"] + ".called", "w").close()

    class Config:
        def __setstate__(self, state):
            open(os.environ["T2MLX_TRAP_MARKER"] + ".setstate", "w").close()
""")


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_unknown_importable_globals_stay_inert(tmp_path, fmt, monkeypatch):
    """A global the deny-list does not know (an importable module with side effects) is never imported or called:
    it becomes an inert placeholder and the weights still convert."""
    trap_dir = tmp_path / "site"
    trap_dir.mkdir()
    (trap_dir / "t2m_trap.py").write_text(TRAP)
    marker = tmp_path / "TRAP"
    monkeypatch.setenv("T2MLX_TRAP_MARKER", str(marker))
    monkeypatch.syspath_prepend(str(trap_dir))
    monkeypatch.delitem(sys.modules, "t2m_trap", raising=False)
    import t2m_trap
    assert (tmp_path / "TRAP.imported").exists()
    (tmp_path / "TRAP.imported").unlink()
    cfg = t2m_trap.Config()
    cfg.value = 3
    sd = {"weight": torch.randn(3, 4), "bias": torch.zeros(3)}
    src = torch_save({"state_dict": sd, "hook": Payload(t2m_trap.fire, "x"), "config": cfg}, tmp_path / f"trap_{fmt}.pt", fmt)
    out = tmp_path / "out"
    proc = run_cli("stream", src, out, "--json", env={"PYTHONPATH": str(trap_dir), "T2MLX_TRAP_MARKER": str(marker)})
    assert proc.returncode == 0, proc.stderr
    assert not list(tmp_path.glob("TRAP.*")), "checkpoint code was imported or run"
    assert "t2m_trap" in proc.stdout  # the report names the placeholder
    check_converted(out, sd)  # (torch.load would run the trap: compare with the saved tensors)
