"""The model card (``README.md``) every converted directory gets, in the convention of MLX models on the Hub.

``facts(...)`` gathers what a run knows (command, version, quantization, measured size, the source's
card and config); ``card_text(facts)`` is the card, a pure function of them, so an output written some
other way (a variant directory) gets its card from its own facts. Nothing in it changes from one run to
the next of the same command (no dates, no timings): a resumed run's card equals an uninterrupted one's.

The source's own ``README.md`` is the base: its front matter is merged (``card_meta.merge``: tags
unioned, ``library_name``/``base_model`` ours, every other key of theirs kept as written) and its body
follows ours under "Original model card".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..core.sizes import human_bytes
from ..core.version import __version__
from . import card_meta

NAME = "README.md"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$")
# architectures whose class name says "text generation" but which mlx-lm has no model for
_NOT_MLX_LM = ("XLNet", "Whisper", "Speech", "Bart", "T5", "Pegasus")


@dataclass
class CardFacts:
    """What a card says about one output directory."""

    out: str  # the directory as the user named it (the snippet loads it)
    source: str  # the source as the report names it
    command: str  # the CLI command or library call that made it
    base_model: str | None = None  # the source's Hub repo id, when known
    config: dict | None = None  # the output's config.json
    source_card: str | None = None  # the source's README.md text
    dtype: str = "keep"
    quantization: dict | None = None  # config.json's quantization block
    recipe: str | None = None
    size: int = 0  # bytes of the weight files written (measured)
    shards: int = 0
    tensors: int = 0
    dropped: int = 0  # tensors the model's rules dropped (listed in torch2mlx.json)
    kept: list[str] = field(default_factory=list)  # --keep patterns
    version: str = __version__
    notes: list[str] = field(default_factory=list)  # what the card could not do, for the report


def base_model_of(source: str, config: dict | None) -> str | None:
    """The Hub repo id the source is: an hf:// source's, else config.json's ``_name_or_path`` when it is one
    (``org/name``, not a local path)."""
    if source.startswith("hf://"):
        repo = source[len("hf://") :].split("@", 1)[0]
        parts = repo.split("/")
        if len(parts) >= 2:
            return "/".join(parts[:2])
    name = (config or {}).get("_name_or_path")
    if isinstance(name, str) and _REPO_ID.match(name) and not os.path.exists(name):
        return name
    return None


def is_llm(config: dict | None) -> bool:
    """A causal LM mlx-lm loads (by config.json's architectures)."""
    archs = (config or {}).get("architectures")
    if not isinstance(archs, list):
        return False
    return any(
        isinstance(a, str) and (a.endswith("ForCausalLM") or a == "GPT2LMHeadModel") and not a.startswith(_NOT_MLX_LM)
        for a in archs
    )


def _quant_line(f: CardFacts) -> str:
    q = f.quantization
    if not q:
        return "none" + (f" (weights in {f.dtype})" if f.dtype != "keep" else " (dtypes as in the source)")
    parts = [f"{q.get('bits')} bits" if q.get("bits") is not None else None]
    parts.append(f"group size {q['group_size']}" if q.get("group_size") is not None else None)
    parts.append(f"mode {q.get('mode', 'affine')}")
    if f.recipe:
        parts.append(f"recipe {f.recipe} (per-layer bits in config.json)")
    elif any(isinstance(v, dict) for v in q.values()):
        parts.append("per-layer settings in config.json")
    line = ", ".join(p for p in parts if p)
    return line + (f"; other floats in {f.dtype}" if f.dtype != "keep" else "")


def _snippet(f: CardFacts) -> str:
    path = f.out.replace("\\", "\\\\").replace('"', '\\"')
    if is_llm(f.config):
        return (
            "```bash\npip install mlx-lm\n```\n\n"
            "```python\nfrom mlx_lm import load, generate\n\n"
            f'model, tokenizer = load("{path}")\n'
            'prompt = "hello"\n'
            "if tokenizer.chat_template is not None:\n"
            '    messages = [{"role": "user", "content": prompt}]\n'
            "    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)\n"
            "print(generate(model, tokenizer, prompt=prompt, verbose=True))\n```\n"
        )
    return (
        "```bash\npip install torch2mlx\n```\n\n"
        "```python\nimport torch2mlx\n\n"
        f'weights = torch2mlx.load_converted("{path}")  # {{name: mx.array}}, MLX names and layouts\n'
        "model.load_weights(list(weights.items()))  # model: your MLX module\n```\n"
    )


def _front(f: CardFacts, theirs: str | None) -> tuple[str, str | None]:
    cfg = f.config or {}
    llm = is_llm(cfg)
    license_ = cfg.get("license") if isinstance(cfg.get("license"), str) else None
    ours = {
        "library_name": "mlx",
        "tags": ["mlx"],
        "base_model": f.base_model,
        "base_model_relation": "quantized" if f.base_model and f.quantization else None,
        "pipeline_tag": "text-generation" if llm else None,
        "license": license_,
    }
    return card_meta.merge(ours, theirs)


def card_text(f: CardFacts) -> str:
    """The card: front matter, how it was made, how to use it, then the source card's body."""
    theirs_front, theirs_body = card_meta.split_card(f.source_card) if f.source_card else (None, "")
    front, why = _front(f, theirs_front)
    if why:
        f.notes.append(f"the source's README.md front matter is {why}; it is kept as text at the card's end")
    title = f.base_model.split("/")[-1] if f.base_model else os.path.basename(f.source.rstrip("/")) or f.source
    made = f"from [{f.base_model}](https://huggingface.co/{f.base_model})" if f.base_model else f"from `{f.source}`"
    lines = [
        "---",
        front.rstrip("\n"),
        "---",
        "",
        f"# {title} (MLX)",
        "",
        f"Converted to MLX {made} with torch2mlx {f.version}.",
        "",
        "## How it was made",
        "",
        "```bash",
        f.command,
        "```",
        "",
        f"- torch2mlx: {f.version}",
        f"- source: `{f.source}`",
        f"- quantization: {_quant_line(f)}",
        f"- size: {human_bytes(f.size)} ({f.size:,} bytes) in {f.shards} shard(s), {f.tensors} tensor(s)",
    ]
    if f.dropped:
        lines.append(f"- dropped by the model's rules: {f.dropped} tensor(s), listed in torch2mlx.json")
    if f.kept:
        lines.append("- kept although the rules drop them: " + ", ".join(f"`{p}`" for p in f.kept))
    lines += ["", "## Use with mlx", "", _snippet(f).rstrip("\n")]
    text = "\n".join(lines) + "\n"
    body = theirs_body.strip("\n")
    if why and theirs_front is not None:
        body = (
            (body + "\n\n" if body else "") + "Front matter of the original card:\n\n```yaml\n" + theirs_front + "```"
        )
    if body:
        text += "\n## Original model card\n\n" + body + "\n"
    return text


def source_card(sidecars: list[str]) -> str | None:
    """The text of the source's README.md, if it has one (a remote one is fetched now)."""
    from ..formats import remote

    for p in sidecars:
        if os.path.basename(p) == NAME:
            try:
                with open(remote.fetched(p), "rb") as fh:
                    return fh.read().decode("utf-8", errors="replace")
            except OSError:
                return None
    return None


def facts_for_run(res, opts, command: str, config: dict | None, sizes: list[int], tensors: int) -> CardFacts:
    """The facts of a ``convert`` run whose shards are written (``res``: its Result; ``config``: the output's
    config.json; ``sizes``: each shard's bytes, as written; ``tensors``: how many were written)."""
    ck, plan = res.checkpoint, res.plan
    by_rules = [n for n, w in plan.dropped if w != "excluded by --exclude"]
    return CardFacts(
        out=str(res.out),
        source=ck.path if ck.remote else res.source,  # a remote source pinned to the commit read
        command=command,
        base_model=base_model_of(ck.path, ck.config),
        config=config,
        source_card=source_card(ck.sidecars),
        dtype=opts.dtype,
        quantization=plan.quantization,
        recipe=opts.q_recipe,
        size=sum(sizes),
        shards=len(sizes),
        tensors=tensors,
        dropped=len(by_rules),
        kept=[p.pattern for p in opts.keep],
    )


def write(out_dir: str, f: CardFacts) -> str:
    """``out_dir/README.md`` (atomically); returns its name."""
    from .writers.files import write_text_atomic

    write_text_atomic(os.path.join(out_dir, NAME), card_text(f))
    return NAME


def library_call(src, out, opts, model=None) -> str:
    """The ``stream.convert`` call that makes this output: the options that differ from the defaults."""
    from .options import Options

    default = Options().to_dict()
    given = {k: v for k, v in opts.to_dict().items() if default.get(k, object()) != v and k != "adapter_sha256"}
    args = [repr(os.fspath(src)) if isinstance(src, (str, os.PathLike)) else f"<{type(src).__name__}>"]
    args.append(repr(os.fspath(out)))
    if isinstance(model, str) or model is False:
        args.append(f"model={model!r}")
    args += [f"{k}={v!r}" for k, v in given.items()]
    return f"torch2mlx.convert({', '.join(args)})"


def is_mlx_card(path: str) -> bool:
    """``path`` is a model card of an MLX model (``library_name: mlx``): the way back to PyTorch does not copy
    it, since it would describe the PyTorch output as MLX weights."""
    if os.path.basename(path) != NAME:
        return False
    text = source_card([path]) or ""
    front, _ = card_meta.split_card(text)
    if front is None:
        return False
    return any(key == "library_name" and _value(block) == "mlx" for key, block in card_meta.blocks(front))


def _value(block: str) -> str:
    return block.split(":", 1)[1].split(" #", 1)[0].strip().strip("'\"")
