"""Build the model to analyze without allocating its weights: on torch's ``meta`` device.

Three ways in: a live module (used as it is), a class path ``"pkg.mod:Class"``
with keyword arguments, or a directory with a transformers ``config.json``.
Remote code is never trusted: a config transformers does not know is refused.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import sys
import warnings
from dataclasses import dataclass, field

from ..errors import Torch2MLXError


@dataclass
class Built:
    model: object  # a torch.nn.Module (its tensors on the meta device unless it came live)
    name: str  # class name
    how: str  # module | class | config
    notes: list[str] = field(default_factory=list)


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def transformers_available() -> bool:
    return not missing_for_config()


def missing_for_config() -> str:
    """What building a model from config.json lacks ("" when nothing): named exactly, not "torch and transformers"."""
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if not missing:
        return ""
    return " and ".join(missing) + (" is" if len(missing) == 1 else " are") + " not installed"


def unwrap(model):
    """The module inside torch.compile's and (Distributed)DataParallel's wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            inner = getattr(model, "module", None)
        if inner is None:
            return model
        model = inner


SCRIPTED = (
    "a TorchScript module: its layers are compiled (RecursiveScriptModule), so their types are not "
    "visible; rules are inferred from tensor shapes, not taken from the model"
)


def is_scripted(model) -> bool:
    """A TorchScript module (torch.jit.script/trace/load): every submodule's type is RecursiveScriptModule."""
    import torch

    return isinstance(model, torch.jit.ScriptModule)


def from_module(model) -> Built:
    inner = unwrap(model)
    notes = [] if inner is model else [f"unwrapped {type(model).__name__} to {type(inner).__name__}"]
    if is_scripted(inner):
        notes.append(SCRIPTED)
    return Built(inner, type(inner).__name__, "module", notes)


def parse_kwargs(text, option: str = "--model-kwargs") -> dict:
    if text is None or isinstance(text, dict):
        return dict(text or {})
    try:
        value = json.loads(text)
    except ValueError as e:
        raise Torch2MLXError(f"{option} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise Torch2MLXError(f"{option} must be a JSON object, e.g. '{{\"dim\": 64}}'")
    return value


@contextlib.contextmanager
def _cwd_importable():
    """The current directory on the import path while a class path is imported, as ``python -m`` has it:
    ``t2mlx codegen nets:Net`` finds ./nets.py (the console script's own sys.path[0] is its bin directory)."""
    cwd = os.getcwd()
    added = "" not in sys.path and cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _import_class(path: str, what: str = "--model"):
    mod_name, sep, cls_name = path.partition(":")
    if not sep or not mod_name or not cls_name:
        raise Torch2MLXError(f"{what} must be given as pkg.module:Class, got {path!r}")
    try:
        with _cwd_importable():
            mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise Torch2MLXError(f"cannot import {mod_name!r} for {what} {path} ({e})") from None
    except Exception as e:  # the user's module failed while importing: theirs to fix, not our bug
        raise Torch2MLXError(f"importing {mod_name!r} for {what} {path} failed: {type(e).__name__}: {e}") from None
    obj = mod
    for part in cls_name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise Torch2MLXError(f"{mod_name} has no {cls_name!r} (from {what} {path})")
    return obj


def from_class(
    path: str, kwargs=None, config_dir: str | None = None, what: str = "--model", kwargs_option: str = "--model-kwargs"
) -> Built:
    """Instantiate ``pkg.mod:Class(**kwargs)`` on the meta device (a transformers class from ``config_dir``).

    ``what`` and ``kwargs_option`` name where the class path and its arguments came from in errors
    (``model class`` for a positional; codegen's arguments are ``--kwargs``).
    """
    if not torch_available():
        raise Torch2MLXError(
            f"analyzing the model class {path} needs torch, which is not installed (pip install 'torch2mlx[torch]')"
        )
    import torch

    cls = _import_class(path, what)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise Torch2MLXError(f"{path} is not a torch.nn.Module subclass")
    kwargs = parse_kwargs(kwargs, kwargs_option)
    with torch.device("meta"):
        if hasattr(cls, "config_class") and hasattr(cls, "_from_config") and "config" not in kwargs:
            if config_dir is None:
                raise Torch2MLXError(f"{path} is a transformers model: it needs a directory with config.json")
            with _quiet():
                return Built(cls._from_config(_load_config(config_dir)), cls.__name__, "class")
        try:
            model = cls(**kwargs)
        except Exception as e:  # the user's constructor: any failure is theirs to fix
            raise Torch2MLXError(f"{path}(**{kwargs}) failed on the meta device: {type(e).__name__}: {e}") from None
    return Built(model, cls.__name__, "class")


@contextlib.contextmanager
def _quiet():
    """transformers logs advice about configs while building; the report carries what matters."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def _load_config(path: str):
    """The config object, read through its own class (AutoConfig's hub machinery costs seconds of imports)."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    file = os.path.join(path, "config.json")
    try:
        with open(file, "rb") as f:
            model_type = json.loads(f.read()).get("model_type")
        cls = getattr(transformers, CONFIG_MAPPING_NAMES.get(model_type, ""), None)
        if cls is not None:
            return cls.from_json_file(file)
        return transformers.AutoConfig.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:
        raise Torch2MLXError(
            f"{file}: transformers cannot read it ({str(e).splitlines()[0] if str(e) else e!r})"
        ) from None


def why_not_config(config_dir: str) -> str | None:
    """Why ``config_dir/config.json`` cannot give the model (None when it can), without importing torch."""
    try:
        with open(os.path.join(config_dir, "config.json"), "rb") as f:
            config = json.loads(f.read())
    except (OSError, ValueError) as e:
        return f"{config_dir}/config.json is unreadable ({e}); rules inferred from shapes"
    if not isinstance(config, dict):
        return f"{config_dir}/config.json is not a JSON object; rules inferred from shapes"
    missing = missing_for_config()
    if missing:
        return f"config.json found, but {missing} (pip install 'torch2mlx[torch]'); rules inferred from shapes"
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if config.get("model_type") not in CONFIG_MAPPING_NAMES:
        return (
            f"transformers does not know model_type {config.get('model_type')!r}; rules inferred from shapes "
            "(give the model with --model pkg.mod:Class)"
        )
    return None


def from_config_dir(path: str) -> Built:
    """The transformers model ``config.json`` describes: ``architectures[0]``, else the model type's AutoModel."""
    missing = missing_for_config()
    if missing:
        raise Torch2MLXError(
            f"analyzing {path}/config.json needs torch and transformers, but {missing} (pip install 'torch2mlx[torch]')"
        )
    import torch
    import transformers

    with _quiet():
        config = _load_config(path)
    notes = []
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        cls = transformers.AutoModel
        notes.append(
            f"config.json names no architecture transformers has ({arch}); built the base {config.model_type} model"
        )
    with _quiet():  # older transformers spell it torch_dtype, newer ones warn when that is read
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    with torch.device("meta"), _quiet():
        try:
            model = (
                cls.from_config(config)
                if cls is transformers.AutoModel
                else cls._from_config(config, dtype=dtype if isinstance(dtype, torch.dtype) else None)
            )
        except Exception as e:  # an inconsistent config
            raise Torch2MLXError(
                f"{path}/config.json: building {arch or config.model_type} failed: {type(e).__name__}: {e}"
            ) from None
    return Built(model, type(model).__name__, "config", notes)


def has_weights(path: str) -> bool:
    from ..formats.checkpoint import NOT_WEIGHTS, WEIGHT_SUFFIXES

    if os.path.isfile(path):
        return True
    return any(n.endswith(WEIGHT_SUFFIXES) and n not in NOT_WEIGHTS for n in os.listdir(path))
