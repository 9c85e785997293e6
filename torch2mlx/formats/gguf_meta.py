"""A GGUF source as a ``Checkpoint``: config.json and the tokenizer made from its metadata by transformers.

transformers' GGUF integration (``AutoConfig``/``AutoTokenizer.from_pretrained(dir, gguf_file=...)``)
turns llama.cpp's metadata into the HF config and a fast tokenizer. It runs in a child process:
transformers' GGUF module imports torch, and the stream path never does. The child also lists the
parameter names of the HF model the config describes (built on the meta device), which settles the
names gguf-py's map gives several HF spellings for. Without transformers the weights are still
converted; the report says what is missing and how to get it.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile

from .gguf import open_readers, read_gguf

_CHILD = r"""
import json, sys
d, f, out = sys.argv[1:4]
res = {}
try:
    from transformers import AutoConfig, AutoTokenizer
except ImportError as e:
    print(json.dumps({"missing": str(e)}))
    sys.exit(0)
import transformers.utils.logging as tlog
tlog.set_verbosity_error()
try:
    cfg = AutoConfig.from_pretrained(d, gguf_file=f)
    cfg.save_pretrained(out)
except Exception as e:
    res["config_error"] = f"{type(e).__name__}: {e}".splitlines()[0]
else:
    try:
        import torch
        from transformers import AutoModelForCausalLM
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        res["names"] = list(model.state_dict().keys())
    except Exception as e:
        res["names_error"] = f"{type(e).__name__}: {e}".splitlines()[0]
try:
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    tok.save_pretrained(out)
except Exception as e:
    res["tokenizer_error"] = f"{type(e).__name__}: {e}".splitlines()[0]
print(json.dumps(res))
"""

INSTALL_HINT = "pip install 'torch2mlx[torch]' (transformers with its GGUF support)"


def _sidecars(first: str) -> tuple[str, dict]:
    """Run the child: ``(directory with config.json and tokenizer files, its JSON answer)``."""
    out = tempfile.mkdtemp(prefix="t2mlx-gguf-")
    atexit.register(shutil.rmtree, out, True)
    d, f = os.path.split(os.path.abspath(first))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, d, f, out],
            capture_output=True,
            text=True,
            timeout=1800,
            env={**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"},
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return out, {"config_error": f"transformers' GGUF loader did not finish ({e})"}
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return out, {"config_error": f"transformers' GGUF loader failed ({tail})"}
    return out, json.loads(lines[-1])


def _tie_from_all_files(config, entries, cfg_path: str, notes: list[str]) -> None:
    """transformers decides ``tie_word_embeddings`` from the tensors of the file it was given: of a split
    set, the first only. The head may sit in any file; it is tied when no file holds it."""
    if not isinstance(config, dict):
        return
    tied = not any(e.name == "lm_head.weight" for e in entries)
    if config.get("tie_word_embeddings") != tied:
        config["tie_word_embeddings"] = tied
        with open(cfg_path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        notes.append(
            f"config.json: tie_word_embeddings set to {tied} (lm_head.weight is {'absent' if tied else 'present'})"
        )


def open_gguf(path: str) -> dict:
    """A GGUF file or split set as the fields of a ``Checkpoint`` (entries, sidecars, config); no tensor
    data read. (``checkpoint.open_checkpoint`` builds it: this module does not import that one.)"""
    files, readers = open_readers(path)  # a bad file fails here, before transformers is started
    return checkpoint_fields(path, files, readers, files)


def checkpoint_fields(path: str, files: list[str], readers: list, labels: list[str]) -> dict:
    """The ``Checkpoint`` fields of checked readers: ``files`` are local (the files themselves, or a remote
    source's header stand-ins, which transformers reads in the child), ``labels`` where tensor bytes are read."""
    tmp, answer = _sidecars(files[0])
    names = answer.get("names")
    known = None
    if names:
        known = set(names) | {n.rpartition(".")[0] for n in names}
    entries, info, notes = read_gguf(labels, readers, known)
    config = None
    if "missing" in answer:
        notes.append(
            f"config.json and tokenizer not written: transformers is not installed ({INSTALL_HINT}); "
            "the weights alone do not load in mlx_lm"
        )
    for key, what in (("config_error", "config.json"), ("tokenizer_error", "tokenizer")):
        if key in answer:
            notes.append(f"{what} not written: {answer[key]}")
    if "names_error" in answer:
        notes.append(
            f"HF names from gguf-py's map alone (transformers could not build the model: {answer['names_error']})"
        )
    cfg_path = os.path.join(tmp, "config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:  # our own child wrote it, in our temp directory
            config = json.load(f)
        _tie_from_all_files(config, entries, cfg_path, notes)
    sidecars = sorted(os.path.join(tmp, n) for n in os.listdir(tmp) if os.path.isfile(os.path.join(tmp, n)))
    if sidecars:
        notes.append(
            "config.json and tokenizer made from the GGUF metadata by transformers: "
            + ", ".join(os.path.basename(s) for s in sidecars)
        )
    return dict(
        path=path,
        entries=entries,
        files=labels,
        format="gguf",
        sidecars=sidecars,
        notes=notes,
        metadata={},
        config=config if isinstance(config, dict) else None,
        layout="mlx",  # llama.cpp stores Linear weights (out, in) as HF and MLX do: no layout rule applies
        gguf=info,
    )
