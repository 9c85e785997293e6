"""Hostile pickles: refused with one error line naming the file, and the payload never runs."""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import assert_no_index, assert_one_error, check_converted, run_cli, run_main, torch_load, torch_save

import torch2mlx
import torch2mlx.stream
from torch2mlx.stream.verify import verify


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
    obj = {
        "top": {"weight": t, "evil": payload},
        "hparams": {"state_dict": {"weight": t}, "hyper_parameters": {"cfg": payload}},
        "list": {"model": {"weight": t}, "callbacks": [1, 2, [payload]]},
    }[where]
    torch.save(obj, path, pickle_protocol=protocol, _use_new_zipfile_serialization=fmt == "zip")
    return path


@pytest.mark.parametrize(
    "kind", ["os.system", "eval", "exec", "subprocess.Popen", "subprocess.check_output", "builtins.open"]
)
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
    src = _hostile_checkpoint(
        tmp_path / f"evil_{fmt}.ckpt", fmt, payloads(str(marker))["os.system"][0], where, protocol
    )
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
    bad = _hostile_checkpoint(
        src / "pytorch_model-00002-of-00002.bin", "legacy", payloads(str(marker))["eval"][0], "top"
    )
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
@pytest.mark.slow
def test_unknown_importable_globals_are_never_imported(tmp_path, fmt, monkeypatch):
    """A called global no rule knows (an importable module with side effects) refuses the file; allowed with
    --allow-global it becomes an inert placeholder and the weights convert. Neither imports or calls it, and
    an object only made from state (Config: NEWOBJ, then BUILD) is data either way."""
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
    src = torch_save(
        {"state_dict": sd, "hook": Payload(t2m_trap.fire, "x"), "config": cfg}, tmp_path / f"trap_{fmt}.pt", fmt
    )
    env = {"PYTHONPATH": str(trap_dir), "T2MLX_TRAP_MARKER": str(marker)}
    refused = run_cli("stream", src, tmp_path / "refused", env=env)
    assert_one_error(refused, str(src), "the pickle calls t2m_trap.fire", "--allow-global t2m_trap.fire")
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "out"
    proc = run_cli("stream", src, out, "--json", "--allow-global", "t2m_trap.fire", env=env)
    assert proc.returncode == 0, proc.stderr
    assert not list(tmp_path.glob("TRAP.*")), "checkpoint code was imported or run"
    assert "t2m_trap" in proc.stdout  # the report names the placeholder
    check_converted(out, sd)  # (torch.load would run the trap: compare with the saved tensors)


# ---------------------------------------------------------------- calls, by the rule and not by a list

W = [0.0, 1.0, 2.0, 3.0]  # the values pickle_asm's float_bytes(4) storage holds


def _asm():
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "hostile"))
    import pickle_asm

    return pickle_asm


def _with_hparams(path, value: bytes, protocol: int = 2):
    """A Lightning-shaped zip checkpoint, hand-assembled:
    {"state_dict": {"w": tensor}, "hyper_parameters": {"x": value}}."""
    a = _asm()
    w = a.tensor_v2(a.storage_pid("0", numel=4))
    pkl = a.pickle_of(
        a.dict_of(
            [(a.s("state_dict"), a.dict_of([(a.s("w"), w)])), (a.s("hyper_parameters"), a.dict_of([(a.s("x"), value)]))]
        ),
        protocol,
    )
    a.torch_zip(path, pkl, {"0": a.float_bytes(4)})
    return path


def _w(out):
    from safetensors.numpy import load_file

    return load_file(str(out / "model.safetensors"))["w"].reshape(-1).tolist()


# (module, name, how the pickle calls it). Globals that fetch from the network, install packages, run source
# text or write files -- and one no list could name, because it does not exist.
CALLS = [
    ("torch.hub", "load_state_dict_from_url", "reduce"),
    ("pip", "main", "reduce"),
    ("doctest", "debug_script", "reduce"),
    ("logging", "FileHandler", "newobj"),
    ("venv", "create", "inst"),
    ("os", "system", "obj"),
    ("t2m_no_such_module.sub", "helper", "newobj_ex"),
    ("pip", "main", "reduce_no_args"),
    ("pip", "main", "inst_no_args"),
]


def _call(module, name, how, arg: str) -> bytes:
    a = _asm()
    x = a.s(arg)
    return {
        "reduce": a.call(a.glob(module, name), x),
        "reduce_no_args": a.glob(module, name) + a.EMPTY_TUPLE + a.REDUCE,
        "newobj": a.glob(module, name) + a.tup(x) + a.NEWOBJ,
        "newobj_ex": a.stack_global(module, name) + a.tup() + a.dict_of([(a.s("filename"), x)]) + a.NEWOBJ_EX,
        "inst": a.MARK + x + a.inst(module, name),
        "inst_no_args": a.MARK + a.inst(module, name),
        "obj": a.MARK + a.glob(module, name) + x + a.OBJ,
    }[how]


@pytest.mark.parametrize("module,name,how", CALLS, ids=[f"{m}.{n}-{h}" for m, n, h in CALLS])
def test_a_called_global_is_refused_and_allow_global_accepts_it(tmp_path, module, name, how):
    qual = f"{module}.{name}"
    marker = tmp_path / "PWNED"
    imported_before = set(sys.modules)
    src = _with_hparams(tmp_path / "ckpt.pt", _call(module, name, how, str(marker)), protocol=4)
    for argv in (["stream", src, tmp_path / "out"], ["stream", src, "--dry-run"], ["analyze", src]):
        err = assert_one_error(run_main(*argv), str(src), f"the pickle calls {qual},", f"--allow-global {qual} ")
        assert "nothing was executed" in err and "Opaque" not in err
    assert not (tmp_path / "out").exists(), "a refused file left an output directory"
    proc = run_main("stream", src, tmp_path / "out", "--allow-global", qual, "--allow-global", "other.unused")
    assert proc.returncode == 0, proc.stderr
    assert _w(tmp_path / "out") == W
    assert qual in proc.stdout  # named among the placeholders
    assert run_main("verify", src, tmp_path / "out", "--allow-global", qual).returncode == 0
    assert not list(tmp_path.glob("PWNED*")), "a payload ran"
    assert not {module, module.split(".")[0]} & (set(sys.modules) - imported_before), "the global's module was imported"


def test_library_allow_globals(tmp_path):
    src = _with_hparams(tmp_path / "ckpt.pt", _call("pip", "main", "reduce", "install"))
    with pytest.raises(torch2mlx.Torch2MLXError, match="the pickle calls pip.main"):
        torch2mlx.stream.open(src)
    with pytest.raises(torch2mlx.Torch2MLXError, match="the pickle calls pip.main"):
        torch2mlx.stream.convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [e.name for e in torch2mlx.stream.open(src, allow_globals=["pip.main"]).entries] == ["w"]
    torch2mlx.stream.convert(src, tmp_path / "out", allow_globals=["pip.main"])
    assert _w(tmp_path / "out") == W
    assert verify(src, tmp_path / "out", allow_globals=["pip.main"]).ok
    with pytest.raises(
        torch2mlx.Torch2MLXError, match="the pickle calls pip.main"
    ):  # the allowance ended with the call
        torch2mlx.stream.open(src)


def _changes(how: str) -> bytes:
    """Opcode paths that reach a global without REDUCE: changing it, or installing it as a method BUILD calls."""
    a = _asm()
    ns = a.glob("argparse", "Namespace") + a.EMPTY_TUPLE + a.NEWOBJ
    return {
        "setitem": a.glob("os", "environ") + a.s("LD_PRELOAD") + a.s("/tmp/x.so") + b"s",
        "build": a.glob("pip", "main") + a.dict_of([(a.s("__defaults__"), a.NONE)]) + a.BUILD,
        "append": a.glob("sys", "path") + a.s("/tmp") + a.APPEND,
        "setstate": ns + a.dict_of([(a.s("__setstate__"), a.glob("os", "system"))]) + a.BUILD + a.s("id") + a.BUILD,
        "extend": ns + a.dict_of([(a.s("extend"), a.glob("os", "system"))]) + a.BUILD + a.s("id") + a.APPEND,
    }[how]


@pytest.mark.parametrize(
    "how,says",
    [
        ("setitem", "modifies the global os.environ"),
        ("build", "modifies the global pip.main"),
        ("append", "modifies the global sys.path"),
        ("setstate", "calls os.system"),
        ("extend", "calls os.system"),
    ],
)
def test_changing_a_global_or_installing_it_as_a_method_is_refused(tmp_path, how, says):
    src = _with_hparams(tmp_path / "ckpt.pt", _changes(how))
    assert_one_error(run_main("stream", src, tmp_path / "out"), str(src), f"the pickle {says}")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- what is data


def test_uncalled_globals_and_builtin_types_are_data(tmp_path):
    """Old (protocol 0-2) pickles spell builtin types as __builtin__ globals; Lightning hyper-parameters hold
    them as values (type=int, a defaultdict(list)). Referenced, never called, any global is data."""
    a = _asm()
    types = (
        a.EMPTY_LIST
        + a.MARK
        + b"".join(a.glob("__builtin__", n) for n in ("list", "dict", "long", "int", "unicode"))
        + a.glob("builtins", "tuple")
        + a.glob("os", "system")
        + a.glob("pip", "main")
        + a.APPENDS
    )
    for protocol in (2, 4):
        src = _with_hparams(tmp_path / f"p{protocol}.pt", types, protocol)
        out = tmp_path / f"out{protocol}"
        proc = run_main("stream", src, out)
        assert proc.returncode == 0, proc.stderr
        assert _w(out) == W
        assert "__builtin__" not in proc.stdout  # builtin types are not reported as unknown classes


def test_protocol_0_pickle_of_builtin_types_is_data():
    """A protocol-0 pickle (text opcodes, as Python 2 wrote them) of builtin types and a Python 2 long type."""
    import pickle

    from torch2mlx.formats import unpickler

    raw = pickle.dumps({"types": [list, dict, int, tuple, float, str, bool, set]}, protocol=0)
    assert b"c__builtin__\nlist\n" in raw
    obj, unknown = unpickler.load(raw, "p0", None)
    assert [getattr(t, "_t2m_global", t) for t in obj["types"]] == [  # Python 3 spells int and str as Python 2 did
        "__builtin__.list",
        "__builtin__.dict",
        "__builtin__.long",
        "__builtin__.tuple",
        "__builtin__.float",
        "__builtin__.unicode",
        "__builtin__.bool",
        set,
    ]
    assert unknown == set()


def test_real_checkpoints_with_data_constructors_convert(tmp_path):
    """What torch.save writes for common hyper-parameters and training state: numpy arrays and scalars, paths,
    dates, decimals, Counter/defaultdict/deque, Namespace, builtin types, sets, slices, complex, a device.
    All converts with no --allow-global; torch is the oracle for the weights."""
    import argparse
    import collections
    import datetime
    import decimal
    import pathlib

    import numpy as np

    sd = {"weight": torch.randn(3, 4), "bias": torch.zeros(3)}
    hp = {
        "ns": argparse.Namespace(lr=0.1, dims=[1, 2]),
        "path": pathlib.Path("/data/run"),
        "pure": pathlib.PurePosixPath("a/b"),
        "when": datetime.datetime(2024, 1, 2, 3, 4, 5),
        "delta": datetime.timedelta(days=1),
        "day": datetime.date(2024, 1, 1),
        "price": decimal.Decimal("1.5"),
        "counts": collections.Counter({3: 1, 5: 2}),
        "dd": collections.defaultdict(list, {"a": [1]}),
        "queue": collections.deque([1, 2]),
        "arr": np.arange(6.0).reshape(2, 3),
        "scalar": np.float32(1.5),
        "dtype": np.dtype("int64"),
        "types": [int, float, str, list, dict, tuple, bool],
        "set": {1, 2},
        "frozen": frozenset({3}),
        "slice": slice(1, 5, 2),
        "z": complex(1, 2),
        "device": torch.device("cpu"),
        "size": torch.Size([2, 3]),
        "dtype_t": torch.float16,
        "rng": np.random.default_rng(0),
    }
    for fmt in ("zip", "legacy"):
        for protocol in (2, 4):
            path = tmp_path / f"ckpt_{fmt}_{protocol}.ckpt"
            torch.save(
                {"state_dict": sd, "hyper_parameters": hp, "optimizer_states": [{"state": {}, "param_groups": []}]},
                path,
                pickle_protocol=protocol,
                _use_new_zipfile_serialization=fmt == "zip",
            )
            out = tmp_path / f"out_{fmt}_{protocol}"
            proc = run_main("stream", path, out)
            assert proc.returncode == 0, proc.stderr
            check_converted(out, torch_load(path)["state_dict"])


class AttrDict(dict):
    """A dict subclass as Lightning's hyper-parameter containers are: protocol 0/1 spell it with __builtin__.dict."""


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_protocol_1_dict_subclass_holding_the_weights(tmp_path, fmt):
    sd = {"weight": torch.randn(3, 4), "bias": torch.zeros(3)}
    path = tmp_path / "p1.ckpt"
    torch.save(
        {"state_dict": AttrDict(sd), "hyper_parameters": AttrDict(lr=0.1, act=int)},
        path,
        pickle_protocol=1,
        _use_new_zipfile_serialization=fmt == "zip",
    )
    proc = run_main("stream", path, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    check_converted(tmp_path / "out", sd)
