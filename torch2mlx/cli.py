"""``t2mlx``: command-line front end. Parses arguments and calls the library; holds no logic of its own."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import textwrap
import threading
from typing import Any

from . import __version__
from .errors import Torch2MLXError, one_line

EXIT_CODES = """\
exit status: 0 done; 1 bad input or usage (one line 'error: ...' on stderr;
for verify also: a check failed); 2 internal error (a bug in torch2mlx:
please report it); 130 interrupted.
"""

STREAM_EPILOG = """\
examples:
  t2mlx stream ./my-model ./my-model-mlx
  t2mlx stream resnet.pth ./resnet-mlx --dtype float16 --max-shard-size 2GB
  t2mlx stream ./ckpt ./out --dry-run            # print the plan; no tensor data is read
  t2mlx stream model.ckpt ./out --key state_dict --strip-prefix model.
  t2mlx stream ./my-model-mlx ./back --to torch [--format bin]   # MLX -> PyTorch (dequantizes)
  t2mlx stream ./my-model ./fused-mlx --adapter ./lora [--q-bits 4]  # LoRA fused in
  t2mlx stream ./peft-lora ./mlx-lora     # PEFT adapter -> mlx-lm (--to torch: back)

Rules (layouts):
  {rules}.
With --model, or a config.json transformers knows, every tensor gets the
model's exact rule and name (reported as 'model'): for the registered
architectures from their rules kept as data, else from the model the
analyzer builds on the meta device. Only this imports torch (and
transformers): with --model, or for a config.json whose rules are not kept
as data when both are installed and its analysis is not cached yet
(~/.cache/torch2mlx/analysis; T2MLX_NO_CACHE=1 turns the cache off). A
repeat run does not; --no-model never does. Without model information
a 3/4/5-D float '*.weight' is assumed to be a convolution (reported as
'inferred'); override with --rule REGEX=RULE.

Interrupted (Ctrl-C: exit 130; SIGTERM from timeout, docker stop or a
scheduler: exit 143) or failed (exit 1), a run removes its temporaries and
says what it left: finished shards to continue with --resume, or nothing.
--overwrite writes the new output in OUT/.t2mlx-new-<pid> and swaps it in
when whole, so the old output survives a failure (it needs room for both).
"""

ANALYZE_EPILOG = """\
examples:
  t2mlx analyze ./my-model                      # config.json -> model on the meta device; no weights read
  t2mlx analyze ./ckpt --model mypkg.nets:UNet --model-kwargs '{"channels": 64}'
  t2mlx analyze mypkg.nets:UNet --json          # a class alone
  t2mlx analyze model.safetensors               # headers only: names, shapes, inferred rules

A config.json model's analysis is cached (key: config.json, the tensors'
names/dtypes/shapes, torch/transformers/torch2mlx versions) in
$T2MLX_CACHE_DIR or ~/.cache/torch2mlx/analysis; T2MLX_NO_CACHE=1 turns it off.
"""


def _add_stream(sub):
    # Choices and lists come from the tables the library checks against, so --help cannot drift from them.
    from .core import quant, rules
    from .core.quant_recipes import MIXED_RECIPES
    from .formats.checkpoint import FORMATS_READ
    from .stream.options import OUT_DTYPES, Q_MODES
    from .stream.sinks import SINKS, directions
    from .stream.targets import TARGETS
    from .stream.to_gguf_plan import GGUF_TYPES
    from .stream.writers.zarr_store import COMPRESSORS

    p = sub.add_parser(
        "stream",
        help="convert a checkpoint to sharded MLX safetensors, tensor by tensor",
        description=textwrap.fill(
            f"Convert a PyTorch checkpoint ({FORMATS_READ}; a directory with or without an index) to "
            "MLX safetensors shards in OUT, reading one block at a time. Never runs pickle code; "
            "imports torch only to build a model (see below).",
            78,
        ),
        epilog=STREAM_EPILOG.replace(
            "{rules}", textwrap.fill(", ".join(rules.LAYOUT_RULES), 74, subsequent_indent="  ")
        )
        + "\n"
        + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "src",
        metavar="SRC",
        help="checkpoint file or directory, or a remote source read by range: hf://ORG/NAME[@REV] "
        "(or ORG/NAME when no such local path exists), "
        "an https:// .safetensors URL, another fsspec URL (docs/remote.md)",
    )
    # "" (not None) when absent: None asks stream.to_torch for tensors in memory, which a command cannot print
    p.add_argument(
        "out",
        metavar="OUT",
        nargs="?",
        default="",
        help="output directory, or one file: a path ending in .safetensors (optional with --dry-run)",
    )
    p.add_argument(
        "--dtype",
        default="keep",
        choices=OUT_DTYPES,
        help="output dtype for floating tensors (default: keep; float64 becomes float32, float8 bfloat16)",
    )
    p.add_argument(
        "--max-shard-size",
        default="5GB",
        metavar="SIZE",
        help="largest output shard, e.g. 5GB, 500MB, 2GiB (default: 5GB)",
    )
    p.add_argument(
        "--strip-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="remove PREFIX from tensor names (repeatable), e.g. _orig_mod. or module.",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="REGEX",
        help="drop tensors whose name matches REGEX (repeatable)",
    )
    p.add_argument(
        "--rule",
        action="append",
        default=[],
        metavar="REGEX=RULE",
        help="force the layout rule of tensors matching REGEX (repeatable; first match wins)",
    )
    p.add_argument(
        "--q-bits",
        type=int,
        metavar="BITS",
        choices=quant.BITS,
        help=f"quantize Linear/Embedding weights to BITS ({_listed(quant.BITS)}) as mlx.core.quantize "
        "(affine) does, stored as mlx-lm stores them; config.json gets the quantization block",
    )
    p.add_argument(
        "--q-group-size",
        type=int,
        default=None,
        metavar="N",
        choices=quant.GROUP_SIZES,
        help=f"quantization group size: {_listed(quant.GROUP_SIZES)} (default 64; only with --q-bits/--q-recipe; "
        "--q-mode's fp modes set their own)",
    )
    p.add_argument(
        "--gguf-scales",
        default="float32",
        choices=quant.SCALE_DTYPES,
        help="dtype of the scales/biases of GGUF blocks repacked to MLX (Q8_0, Q4_0/1, Q5_0/1, Q4_K, Q5_K): "
        "float32 (default) is exact; float16/bfloat16 round them and the report gives the error",
    )
    p.add_argument(
        "--q-recipe",
        metavar="NAME",
        choices=tuple(MIXED_RECIPES),
        help=f"mlx-lm's mixed-precision recipes ({_listed(MIXED_RECIPES)}): higher bits for lm_head "
        "and some v_proj/down_proj",
    )
    p.add_argument(
        "--adapter",
        metavar="DIR",
        help="fuse a LoRA/DoRA adapter (PEFT's or mlx-lm's directory) into the weights as they stream, "
        "before any quantization (docs/adapters.md)",
    )
    p.add_argument(
        "--adapter-scale",
        type=float,
        metavar="S",
        help="multiply the adapter's scale by S when fusing (default 1)",
    )
    p.add_argument(
        "--base",
        metavar="DIR",
        help="with an adapter directory as SRC: the base model (its config.json) whose module names the "
        "adapter's are mapped to (default: the adapter's base_model_name_or_path when local)",
    )
    p.add_argument(
        "--q-mode",
        metavar="MODE",
        choices=Q_MODES,
        help=f"quantization mode ({_listed(Q_MODES)}), as mx.quantize / mlx-lm's --q-mode: mxfp4 (4-bit, "
        "group 32), nvfp4 (4-bit, group 16) and mxfp8 (8-bit, group 32) need no --q-bits; not with --q-recipe",
    )
    p.add_argument(
        "--dequantize",
        action="store_true",
        help="an MLX-quantized source (ours or mlx-lm's, any mode) -> unquantized MLX weights, as mlx-lm's "
        "convert -d (dtype: the scales' for affine, bfloat16 for the fp modes, or --dtype)",
    )
    p.add_argument(
        "--target",
        choices=TARGETS,
        default=None,
        help="the MLX tool OUT is laid out for: mlx-whisper (mlx_whisper.load_models), mlx-vlm (mlx_vlm.load), "
        "mlx-lm, mlx (plain MLX names); default: chosen from config.json (docs/targets.md)",
    )
    p.add_argument(
        "--to",
        default="mlx",
        choices=directions(),
        help="direction: mlx (default); torch: an MLX checkpoint (ours or mlx-lm's, quantized or not) "
        "back to PyTorch names, layouts and dtypes; gguf: an MLX checkpoint as one llama.cpp GGUF file "
        "(OUT ends in .gguf; docs/gguf.md)",
    )
    p.add_argument(
        "--gguf-type",
        default=None,
        metavar="TYPE",
        help=f"with --to gguf: {', '.join(GGUF_TYPES)} (default f16; 1-D tensors stay F32). MLX 8-/4-bit "
        "groups of 32 that are symmetric repack losslessly into q8_0/q4_0; the rest is requantized "
        "with gguf-py (K-quants: ours; q4_k_m/q5_k_m: llama.cpp's mixes), the error reported",
    )
    p.add_argument(
        "--format",
        default="safetensors",
        choices=tuple(SINKS),
        help="output format: sharded safetensors (default), a zarr store, one chunked array per "
        "tensor (for analysis pipelines; pip install 'torch2mlx[zarr]'), or with --to torch "
        "bin: pytorch_model-*.bin zip pickles torch.load(weights_only=True) reads",
    )
    p.add_argument(
        "--zarr-compressor",
        default="none",
        choices=COMPRESSORS,
        help="compression of zarr chunks (default none: fastest)",
    )
    p.add_argument(
        "--variants",
        metavar="LIST",
        help="several outputs from one read of SRC, OUT/<variant>/ each, e.g. bf16,q8,q4,mixed_3_6: output dtypes "
        "(float16, bfloat16, float32; bf16, fp16, fp32), qN (N-bit affine, with --q-group-size), --q-recipe or "
        "--q-mode names; each directory is byte for byte a single run's with those options (docs/cli.md)",
    )
    p.add_argument("--key", metavar="KEY", help="which entry of a nested checkpoint holds the weights (dotted path)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the contents of a non-empty OUT (the old output stays until the new one is whole)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted conversion in OUT: keep shards whose size and hash match "
        "its manifest, redo the rest (output identical to an uninterrupted run); refused when a "
        "source file changed since (size, mtime or inode)",
    )
    p.add_argument(
        "--keep",
        action="append",
        default=[],
        metavar="REGEX",
        help="write tensors the model's rules drop (rotary caches, tied heads, extra heads...) whose name "
        "matches REGEX, with the rules' name or as they are (repeatable; --exclude still wins)",
    )
    p.add_argument(
        "--no-card",
        dest="card",
        action="store_false",
        help="no model card: the source's README.md (if any) is copied as it is instead of a README.md with "
        "Hub front matter, how the output was made and how to load it",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop; reads headers only")
    p.add_argument("--json", action="store_true", help="print the report (or plan) as JSON on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or status lines on stderr")
    p.add_argument(
        "--keep-cache",
        action="store_true",
        help="leave converted bytes in the page cache (default: drop them, so big runs do not evict your apps)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="worker threads (default: cores + 1, at most 4)",
    )
    _add_model_options(p)
    p.add_argument(  # model=False, as the library spells it
        "--no-model",
        dest="model",
        action="store_const",
        const=False,
        help="ignore config.json: infer rules from shapes (never imports torch)",
    )
    _add_allow_global(p)
    p.set_defaults(func=_cmd_stream)


def _listed(values) -> str:
    return ", ".join(map(str, values))


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return n


def _add_allow_global(p):
    p.add_argument(
        "--allow-global",
        action="append",
        default=[],
        metavar="MODULE.NAME",
        help="accept a pickle that calls this global (repeatable): it becomes an inert placeholder; "
        "nothing from the file is ever executed (by default such a pickle is refused)",
    )


def _add_model_options(p):
    p.add_argument(
        "--model",
        metavar="PKG.MOD:CLASS",
        help="the torch model class the weights belong to (built on the meta device for exact rules)",
    )
    p.add_argument("--model-kwargs", metavar="JSON", help="keyword arguments for --model's constructor, as JSON")


def _add_analyze(sub):
    p = sub.add_parser(
        "analyze",
        help="how much of a model maps to MLX, each tensor's rule, and what blocks the rest",
        description="Build the model on torch's meta device (no weight memory, no weight bytes "
        "read), map every layer to MLX and report coverage, unsupported layers, "
        "blockers in forward code and each tensor's MLX name, shape and rule. SRC is a "
        "checkpoint or config directory, a checkpoint file, or a class pkg.mod:Class.",
        epilog=ANALYZE_EPILOG + "\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "src",
        metavar="SRC",
        help="checkpoint / config directory, checkpoint file, pkg.mod:Class, or a remote source as for stream "
        "(hf://ORG/NAME[@REV], ORG/NAME when no such local path exists, a URL): headers and config only",
    )
    _add_model_options(p)
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    _add_allow_global(p)
    p.set_defaults(func=_cmd_analyze)


def _cmd_analyze(args) -> int:
    from . import analyze

    report = analyze(args.src, model=args.model, model_kwargs=args.model_kwargs, allow_globals=args.allow_global)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0


def _cmd_stream(args) -> int:
    from . import stream
    from .adapters import detect

    if detect(args.src) is not None:
        return _cmd_adapter(args)
    if args.base is not None:
        raise Torch2MLXError("--base applies when SRC is an adapter directory (it names the adapter's base model)")

    shown = not args.quiet and not args.json and sys.stderr.isatty()
    settings = dict(
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        strip_prefix=args.strip_prefix,
        exclude=args.exclude,
        rules=args.rule,
        key=args.key,
        q_bits=args.q_bits,
        q_group_size=args.q_group_size,
        q_recipe=args.q_recipe,
        q_mode=args.q_mode,
        dequantize=args.dequantize,
        allow_globals=args.allow_global,
        zarr_compressor=args.zarr_compressor,
        drop_cache=not args.keep_cache,
        adapter=args.adapter,
        adapter_scale=args.adapter_scale,
        gguf_scales=args.gguf_scales,
    )
    if args.target is not None:  # only when given: --to torch and --to gguf refuse it
        settings["target"] = args.target
    if args.keep:  # the way back and GGUF have no rules that drop
        settings["keep"] = args.keep
    run = dict(
        model=args.model,
        model_kwargs=args.model_kwargs,
        format=args.format,
        overwrite=args.overwrite,
        resume=args.resume,
        dry_run=args.dry_run,
        workers=args.workers,
        progress=shown,
    )
    other = [f for f, on in (("--keep", args.keep), ("--no-card", not args.card)) if on]
    if other and args.to != "mlx":
        raise Torch2MLXError(f"{other[0]} applies to a conversion to MLX (not with --to {args.to})")
    if args.gguf_type is not None and args.to != "gguf":
        raise Torch2MLXError("--gguf-type applies only with --to gguf")
    if args.variants is not None:
        if args.to != "mlx":
            raise Torch2MLXError(f"--variants applies to conversions to MLX, not --to {args.to}")
        run["variants"] = args.variants
    res: Any
    if args.to == "gguf":
        from .stream.to_gguf import to_gguf

        refused = [f for f, on in (("--resume", args.resume), ("--model", args.model)) if on]
        if refused:
            raise Torch2MLXError(f"{refused[0]} does not apply with --to gguf")
        res = to_gguf(
            args.src,
            args.out,
            gguf_type=args.gguf_type or "f16",
            format="gguf" if args.format == "safetensors" else args.format,
            overwrite=args.overwrite,
            dry_run=args.dry_run,
            progress=shown,
            **settings,
        )
    elif args.to == "torch":
        res = stream.to_torch(args.src, args.out, **run, **settings)
    else:
        res = stream.convert(args.src, args.out, **run, **settings, card=_card_command(args) if args.card else False)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
    else:
        print(res.report())
    return 0


# flags that change how a run goes, not what it writes: a model card leaves them out, so the card of
# a resumed or overwritten run is the card of the same run done at once
_RUN_ONLY = {"--resume": 0, "--overwrite": 0, "--quiet": 0, "-q": 0, "--json": 0, "--keep-cache": 0, "--workers": 1}


def _card_command(args) -> str:
    """The command line a model card names (``t2mlx stream ...``, as typed, less the run-only flags)."""
    import shlex

    argv, kept, skip = getattr(args, "argv", None) or [], [], 0
    for a in argv:
        if skip:
            skip -= 1
            continue
        flag = a.split("=", 1)[0]
        if flag in _RUN_ONLY:
            skip = _RUN_ONLY[flag] if "=" not in a else 0
            continue
        kept.append(a)
    return "t2mlx " + shlex.join(kept)


# what an adapter SRC is converted with; anything else given would be a silent no-op
_ADAPTER_DEFAULTS: dict[str, Any] = dict(
    dtype="keep",
    max_shard_size="5GB",
    strip_prefix=[],
    exclude=[],
    rule=[],
    key=None,
    q_bits=None,
    q_group_size=None,
    q_recipe=None,
    format="safetensors",
    zarr_compressor="none",
    resume=False,
    dry_run=False,
    keep_cache=False,
    workers=None,
    model=None,
    model_kwargs=None,
    allow_global=[],
    adapter=None,
    adapter_scale=None,
    keep=[],
    card=True,
    variants=None,
)


def _cmd_adapter(args) -> int:
    from .adapters import convert_adapter

    given = [k for k, v in _ADAPTER_DEFAULTS.items() if getattr(args, k) != v]
    if given:
        flags = ", ".join("--no-card" if k == "card" else "--" + k.replace("_", "-") for k in given)
        raise Torch2MLXError(
            f"{args.src} is a LoRA adapter directory: it is converted as it is ({flags} would change nothing; "
            "to fuse it into a model: t2mlx stream BASE OUT --adapter DIR)"
        )
    if not args.out:
        raise Torch2MLXError("OUT is required")
    res = convert_adapter(args.src, args.out, to=args.to, base=args.base, overwrite=args.overwrite)
    print(json.dumps(res.to_dict(), indent=2) if args.json else res.report())
    return 0


# The library names its parameters in errors; on the command line the same thing is a flag.
_FLAG_SPELLINGS: list[tuple[re.Pattern[str], Any]] = [
    (
        re.compile(
            r"^resume and overwrite contradict each other: resume keeps out's finished shards, "
            r"overwrite throws them away"
        ),
        "--resume and --overwrite contradict each other: --resume keeps OUT's finished shards, "
        "--overwrite throws them away",
    ),
    (re.compile(r"^out is required \(or dry_run=True\)"), "OUT is required (or use --dry-run)"),
    (
        re.compile(r"^(rules|exclude|keep): "),
        lambda m: {"rules": "--rule ", "exclude": "--exclude ", "keep": "--keep "}[m.group(1)],
    ),
    (
        re.compile(r"^(dtype|format|max_shard_size|zarr_compressor|model_kwargs)\b"),
        lambda m: "--" + m.group(0).replace("_", "-"),
    ),
    (
        re.compile(
            r"\b(q_bits|q_group_size|q_recipe|q_mode|adapter_scale)\b|(?<![-\w])dequantize(?= writes| has nothing)"
        ),
        lambda m: "--" + m.group(0).replace("_", "-"),
    ),
    (re.compile(r"\ballow_globals\b"), "--allow-global"),
    (re.compile(r"\btarget (mlx[-\w]*) (does not|is not)"), r"--target \1 \2"),
    (re.compile(r"^variants\b|(?<=with )variants\b|(?<=: )variants\b"), "--variants"),
    (re.compile(r"(?<=do not combine with )resume\b"), "--resume"),
    (re.compile(r"\bdequantize(?= does not combine)"), "--dequantize"),
    (re.compile(r"^resume(:| does not)"), r"--resume\1"),
    (re.compile(r"\brerun with overwrite\b"), "rerun with --overwrite"),
    (re.compile(r"format='zarr'"), "--format zarr"),
    (re.compile(r"does not combine with resume$"), "does not combine with --resume"),
    (re.compile(r"\b(\w+): stream\.to_(torch|gguf)\b"), r"\1 needs --to \2"),
    (re.compile(r"^to_(torch|gguf) writes format"), r"--to \1 writes --format"),
    (re.compile(r"\bgguf_type\b"), "--gguf-type"),
    (re.compile(r"\b(do|does) not apply with --to gguf"), r"\1 not apply with --to gguf"),
    (re.compile(r"\b(do|does) not apply to to_torch"), r"\1 not apply with --to torch"),
]


def cli_spelling(message: str) -> str:
    """A library error as the command line says it: ``q_bits`` -> ``--q-bits``, ``out`` -> ``OUT``."""
    for pattern, repl in _FLAG_SPELLINGS:
        message = pattern.sub(repl, message)
    return message


CODEGEN_EPILOG = """\
examples:
  t2mlx codegen mypkg.nets:Net --kwargs '{"dim": 64}' -o net_mlx.py
  t2mlx codegen ./my-model -o model_mlx.py          # config.json -> model on the meta device
  t2mlx codegen mypkg.nets:UNet --input-shape 1,3,64,64 -o unet_mlx.py
"""


def _add_codegen(sub):
    p = sub.add_parser(
        "codegen",
        help="write an MLX module (Python source) for a torch model",
        description="Generate the MLX module of a torch model: classes from its module tree, named "
        "so that weights from t2mlx stream / torch2mlx.convert load strictly, and "
        "__call__ translated from a torch.fx trace (a TODO stub where it cannot trace).",
        epilog=CODEGEN_EPILOG + "\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", metavar="SRC", help="a model class pkg.mod:Class, or a directory with config.json")
    p.add_argument(
        "--kwargs",
        "--model-kwargs",
        dest="kwargs",
        metavar="JSON",
        help="keyword arguments for the class's constructor, as JSON",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write the source here (default: stdout)")
    p.add_argument("--class-name", metavar="NAME", help="name of the generated root class")
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="SHAPE[:DTYPE]",
        help="an example input (e.g. 1,3,32,32 or 1,16:int64; repeatable, in forward's order): "
        "code that branches on shapes is traced as these inputs take it",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_cmd_codegen)


def _cmd_codegen(args) -> int:
    from .codegen.api import generate_cli

    result = generate_cli(
        args.src,
        kwargs=args.kwargs,
        class_name=args.class_name,
        shapes=args.input_shape,
        output=args.output,
        overwrite=args.overwrite,
    )
    if args.output is None:
        sys.stdout.write(result.source)
    print(result.summary(), file=sys.stderr)
    return 0


def _add_verify(sub):
    p = sub.add_parser(
        "verify",
        help="check a conversion: hashes, headers, index, and every tensor against its source",
        description="Re-read SRC and OUT tensor by tensor (bounded memory) and check that every output "
        "tensor equals its rule applied to its source, every shard's hash (xxh3-128, or sha256 in "
        "older manifests) matches the manifest and the index matches the shards. "
        "Exit 0 only when all hold.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "src",
        metavar="SRC",
        help="the checkpoint that was converted (a path, or a remote source as for stream: hf://ORG/NAME[@REV], "
        "ORG/NAME when no such local path exists, a URL)",
    )
    p.add_argument("out", metavar="OUT", help="the conversion's output directory")
    p.add_argument(
        "--quick",
        action="store_true",
        help="hashes, headers, index, and SRC's files unchanged since the conversion (size, mtime, "
        "inode); no tensor values",
    )
    p.add_argument(
        "--sha256",
        action="store_true",
        help="also print every shard's sha256 (e.g. to compare with the Hub's LFS object ids); "
        "read in the same pass as the recorded hash",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_allow_global(p)
    p.set_defaults(func=_cmd_verify)


def _cmd_verify(args) -> int:
    from .stream.verify import verify

    rep = verify(args.src, args.out, quick=args.quick, allow_globals=args.allow_global, sha256=args.sha256)
    print(json.dumps(rep.to_dict(), indent=2) if args.json else rep.text())
    return 0 if rep.ok else 1


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as every other error: one ``error:`` line, exit 1 (2 is for bugs)."""

    def error(self, message):
        text = self._plain(message)
        hint = "" if "(choose from" in text else f" (see {self.prog} --help)"
        self.exit(1, f"error: {one_line(text)}{hint}\n")

    def _plain(self, message: str) -> str:
        name, sep, problem = message.partition(": ")
        if not (sep and name.startswith("argument ")):
            return message
        name = name[len("argument ") :]
        action = next((a for a in self._actions if name in ("/".join(a.option_strings), a.metavar, a.dest)), None)
        if action is not None and action.choices is not None and problem.startswith("invalid "):
            # argparse quotes every choice (and says nothing of them when the value is not even an int)
            value = problem.split(": ", 1)[-1].split(" (choose from")[0]
            return f"{name}: invalid choice {value} (choose from {_listed(action.choices)})"
        return f"{name}: {problem}"


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="t2mlx",
        description="Move PyTorch checkpoints and models to Apple MLX.",
        epilog="python -m torch2mlx takes the same commands, and also the short form\n"
        "SRC OUT (= stream SRC OUT), with --analyze-only (= analyze SRC)\n"
        "or --no-analyze (= stream SRC OUT --no-model).\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"torch2mlx {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_stream(sub)
    _add_analyze(sub)
    _add_verify(sub)
    _add_codegen(sub)
    return ap


COMMANDS = ("stream", "analyze", "verify", "codegen")


def alias_argv(argv: list[str]) -> list[str]:
    """``python -m torch2mlx SRC OUT`` as the original tool took it, spelled as t2mlx subcommands.

    ``SRC OUT`` -> ``stream SRC OUT``; ``--analyze-only`` -> ``analyze``; ``--no-analyze``
    -> ``stream --no-model``. Anything that starts with a subcommand (or is a bare
    -h/--version) is left alone.
    """
    if not argv or argv[0] in COMMANDS or argv[0] in ("-h", "--help", "--version"):
        return list(argv)
    rest = [a for a in argv if a not in ("--analyze-only", "--no-analyze")]
    if "--analyze-only" in argv:
        return ["analyze"] + rest
    return ["stream"] + rest + (["--no-model"] if "--no-analyze" in argv else [])


def _interrupted(args, argv: list[str], what: str, left: str | None) -> str:
    """The line for Ctrl-C or SIGTERM: what the run left and, for a conversion, the exact command that goes on."""
    if getattr(args, "func", None) is not _cmd_stream or args.dry_run:
        return what if left is None else f"{what} ({left})"
    left = (left or "no index was written; the output is incomplete").split(": run the same command")[0]
    if "previous output" in left or "holds the new output" in left:
        return f"{what} ({left})"  # --overwrite: nothing of this run is left to continue
    import shlex

    prog = "t2mlx" if os.path.basename(sys.argv[0] or "") == "t2mlx" else "python -m torch2mlx"
    from .stream.sinks import FORWARD, SINKS

    if args.to == FORWARD and SINKS[args.format].resumable and args.variants is None:  # --variants keeps none
        # --overwrite would throw the finished shards away (argparse also takes it abbreviated)
        again = [a for a in argv if not (a.startswith("--o") and "--overwrite".startswith(a))]
        again += [] if args.resume else ["--resume"]
        how = "continue it with"
    else:  # --resume covers the shards of a resumable sink made by the forward conversion only
        again = argv + ([] if args.overwrite else ["--overwrite"])
        how = "start over with"
    return f"{what} ({left}); {how}: {prog} {shlex.join(again)}"


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, ``docker stop``, job schedulers): the same way out as Ctrl-C."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the clean-up finish
    raise Terminated()


def _numpy_on_first_use() -> None:
    """Make ``import numpy`` free until numpy is used, in a process the CLI owns.

    Importing numpy is ~0.1-0.2 s of a run's start-up, and a passthrough conversion (bytes copied by the
    kernel) never uses it. Code that uses numpy from worker threads loads it first in the calling thread
    (``core.dtypes.load_numpy``): before Python 3.12 a lazily loaded module is not safe to load from two
    threads at once.
    """
    if "numpy" in sys.modules:
        return
    import importlib.util

    spec = importlib.util.find_spec("numpy")
    if spec is None or spec.loader is None:
        return
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["numpy"] = module
    spec.loader.exec_module(module)


def main(argv=None) -> int:
    if argv is None:  # the t2mlx process itself, not a caller's
        _numpy_on_first_use()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # a model card names the command
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        return args.func(args)
    except Torch2MLXError as e:
        print(f"error: {one_line(cli_spelling(str(e)))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        what, code = ("terminated (SIGTERM)", 143) if isinstance(e, Terminated) else ("interrupted", 130)
        print(f"error: {one_line(_interrupted(args, argv, what, getattr(e, 'left', None)))}", file=sys.stderr)
        return code
    except BrokenPipeError:
        return 1
    except Exception as e:  # a bug in torch2mlx, not in the input
        if os.environ.get("T2MLX_DEBUG"):
            raise
        print(
            f"error: internal error: {type(e).__name__}: {one_line(str(e))} (set T2MLX_DEBUG=1 for a traceback; "
            "please report it)",
            file=sys.stderr,
        )
        return 2
    finally:
        if in_main and previous is not None:
            signal.signal(signal.SIGTERM, previous)
