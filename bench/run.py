"""Benchmark ``t2mlx stream`` against ``cp`` and the tools people would otherwise use.

    make bench                                   # = python bench/run.py (0.5g 2.5g 10g many, 3 runs)
    python bench/run.py --presets 0.5g 2.5g 10g --runs 5
    python bench/run.py --quick                  # tiny checkpoints, 1 run, results in bench/_work/quick
    python bench/run.py --report-only            # re-render results.md and the plots from results.json

For every checkpoint preset each contender runs as its own process, round
after round (every contender once per round, in a shuffled order), from a
cold page cache, and the clock includes flushing its output to disk. The tables give the median
wall time, the median ratio to ``cp -r`` + sync of the same input measured
in the same round, throughput and the child's peak RSS. Then: peak RSS of
``t2mlx stream`` for several ``--max-shard-size`` values, and ``--dry-run``
on a Llama-70B-shaped checkpoint whose data is a file hole.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import deepseek_sparse  # noqa: E402  (bench/ is a folder of scripts, not a package)
import make_checkpoint as mc  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402

DEFAULT_PRESETS = ["0.5g", "2.5g", "10g", "many"]
QUICK_PRESETS = ["tiny", "tiny-many"]
SHARD_SIZES = ["500MB", "2GB", "5GB", "20GB"]
QUICK_SHARD_SIZES = ["1MB", "5GB"]
# Presets whose RSS is compared across model sizes (the per-tensor-overhead ones are not "bigger models").
SIZE_PRESETS = ("tiny", "0.5g", "2.5g", "10g")


@dataclass
class Contender:
    name: str
    label: str
    src: str  # which copy of the checkpoint it reads: "st" or "bin"
    argv: list[str]  # SRC and OUT are substituted
    floor: str = "cp"  # the cp run it is compared with
    skip: str = ""  # why it cannot run here (shown in the results)


@dataclass
class Tools:
    t2mlx: list[str]
    python: str
    has_qbits: bool
    has_analyze: bool
    has_mlx_lm: bool
    has_torch: bool

    @classmethod
    def detect(cls) -> "Tools":
        script = os.path.join(os.path.dirname(sys.executable), "t2mlx")
        t2 = [script] if os.path.exists(script) else [sys.executable, "-m", "torch2mlx"]

        def helps(*args) -> str:
            r = subprocess.run(t2 + list(args) + ["--help"], capture_output=True, text=True)
            return r.stdout

        return cls(
            t2,
            sys.executable,
            "--q-bits" in helps("stream"),
            " analyze " in helps().replace("\n", " "),
            importlib.util.find_spec("mlx_lm") is not None,
            importlib.util.find_spec("torch") is not None and importlib.util.find_spec("mlx") is not None,
        )


def contenders(t: Tools) -> list[Contender]:
    # The engine's speed is measured with --no-model: the analyzer's one-off `import torch`
    # (1.5-3 s here) would hide it on small checkpoints; `t2mlx-model` shows that cost.
    with_model = t.t2mlx + ["stream", "SRC", "OUT", "--quiet"]
    stream = with_model + ["--no-model"]
    naive = [t.python, os.path.join(HERE, "naive.py")]
    mlx_lm = [t.python, "-m", "mlx_lm", "convert", "--hf-path", "SRC", "--mlx-path", "OUT"]
    no_lm = "" if t.has_mlx_lm else "mlx-lm is not installed (pip install -e '.[bench]')"
    no_torch = "" if t.has_torch else "needs torch and mlx"
    return [
        Contender("cp", "`cp -r` + sync (the floor)", "st", ["cp", "-r", "SRC", "OUT"]),
        Contender("t2mlx", "`t2mlx stream` passthrough", "st", stream),
        Contender(
            "t2mlx-model",
            "`t2mlx stream` passthrough, rules from the model (kept as data for llama)",
            "st",
            with_model,
            skip="" if t.has_analyze and t.has_torch else "needs `t2mlx analyze` and torch",
        ),
        Contender("t2mlx-f16", "`t2mlx stream --dtype float16`", "st", stream + ["--dtype", "float16"]),
        Contender(
            "t2mlx-q4",
            "`t2mlx stream --q-bits 4`",
            "st",
            stream + ["--q-bits", "4"],
            skip=""
            if t.has_qbits
            else "`t2mlx stream --help` lists no `--q-bits` yet (quantization is being built on another branch)",
        ),
        Contender("cp-bin", "`cp -r` of the `.bin` dir + sync", "bin", ["cp", "-r", "SRC", "OUT"], floor="cp-bin"),
        Contender("t2mlx-bin", "`t2mlx stream` from zip `.bin`", "bin", stream, floor="cp-bin"),
        Contender("mlx-lm", "`mlx_lm convert`", "st", mlx_lm, skip=no_lm),
        Contender("mlx-lm-q4", "`mlx_lm convert -q` (4-bit)", "st", mlx_lm + ["-q"], skip=no_lm),
        Contender(
            "naive-torch",
            "`torch.load` + `mx.save_safetensors`",
            "bin",
            naive + ["torch-load", "SRC", "OUT"],
            floor="cp-bin",
            skip=no_torch,
        ),
        Contender("naive-safe", "`safe_open` + `save_file`", "st", naive + ["safe-open", "SRC", "OUT"], skip=no_torch),
    ]


@dataclass
class PresetResult:
    preset: str
    info: dict
    samples: dict[str, list[dict]] = field(default_factory=dict)  # contender -> one dict per round
    skipped: dict[str, str] = field(default_factory=dict)


def _child_env() -> dict:
    env = dict(os.environ)
    # mlx-lm and transformers must not try the network for a local directory.
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false"
    )
    # Every contender builds its model afresh: a reused analysis is measured on its own, in the 70B rows.
    env["T2MLX_NO_CACHE"] = "1"
    return env


def _argv(c: Contender, src: str, out: str) -> list[str]:
    return [src if a == "SRC" else out if a == "OUT" else a for a in c.argv]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def preset_spec(preset: str, dtype: str) -> mc.Spec:
    return mc.Spec(**{**asdict(mc.PRESETS[preset]), "dtype": dtype})


def ensure_checkpoint(preset: str, data_dir: str, dtype: str, sparse: bool = False) -> tuple[str, mc.Spec]:
    spec = preset_spec(preset, dtype)
    out = mc.checkpoint_dir(data_dir, preset, spec, sparse)
    mc.make(spec, out, formats=("st",) if sparse else ("st", "bin"), sparse=sparse, log=_log)
    return out, spec


def preset_info(preset: str, spec: mc.Spec, ck: str) -> dict:
    sizes = [mc.math.prod(s) * spec.itemsize for _, s in spec.tensors()]
    return {
        "preset": preset,
        "dtype": spec.dtype,
        "bytes": spec.nbytes,
        "tensors": len(sizes),
        "largest": max(sizes),
        "shards": len(mc.shard_groups(spec)),
        "shape": asdict(spec),
        "st_bytes": measure.tree_bytes(os.path.join(ck, "st")),
        "bin_bytes": measure.tree_bytes(os.path.join(ck, "bin")),
    }


def missing_space(preset: str, a) -> str:
    """Why ``preset`` cannot run here for lack of disk (both formats plus one output), or ''."""
    spec = preset_spec(preset, a.dtype)
    ck = mc.checkpoint_dir(a.data_dir, preset, spec, False)
    need = spec.nbytes * (1 if os.path.exists(os.path.join(ck, mc.SPEC_FILE)) else 3) * 1.05
    os.makedirs(a.data_dir, exist_ok=True)
    free = shutil.disk_usage(a.data_dir).free
    return f"needs {need / 1e9:.1f} GB of disk, {free / 1e9:.1f} GB free" if need > free else ""


def bench_preset(preset: str, cs: list[Contender], a, work: str, env: dict) -> PresetResult:
    ck, spec = ensure_checkpoint(preset, a.data_dir, a.dtype)
    res = PresetResult(preset, preset_info(preset, spec, ck))
    live = []
    for c in cs:
        if c.skip:
            res.skipped[c.name] = c.skip
        else:
            live.append(c)
            res.samples[c.name] = []
    out = os.path.join(work, "out")
    for r in range(a.runs):
        # A run is slowed by what ran just before it (a cp after a tool that held 2 GB runs ~30% slower
        # than after one that held 200 MB, however long we wait): a fresh seeded order each round
        # gives every contender, floors included, different neighbours.
        order = list(live)
        random.Random(r).shuffle(order)
        for c in order:
            if c.name in res.skipped:  # failed in an earlier round: do not burn time on it again
                continue
            src = os.path.join(ck, c.src)
            s = measure.run(
                _argv(c, src, out),
                inputs=[src],
                out=out,
                env=env,
                timeout=a.timeout,
                log_path=os.path.join(work, f"{preset}-{c.name}.log"),
            )
            _log(
                f"  [{preset} run {r + 1}/{a.runs}] {c.name:12s} {s.seconds:8.2f} s  "
                f"{s.max_rss_mib:8.0f} MiB" + (f"  FAILED {s.error}" if s.rc else "")
            )
            if s.rc:
                res.skipped[c.name] = f"failed: {s.error}"
                continue
            res.samples[c.name].append({**asdict(s), "round": r})
    measure.remove(out)
    return res


def shard_sweep(presets: list[str], sizes: list[str], a, tools: Tools, work: str, env: dict) -> list[dict]:
    """Peak RSS of the engine (``--no-model``) per preset and ``--max-shard-size`` (one cold run each)."""
    rows = []
    out = os.path.join(work, "out")
    log = os.path.join(work, "sweep.log")
    for p in presets:
        ck, spec = ensure_checkpoint(p, a.data_dir, a.dtype)
        for size in sizes:
            for what, extra in (("passthrough", []), ("float16", ["--dtype", "float16"])):
                argv = (
                    tools.t2mlx
                    + ["stream", os.path.join(ck, "st"), out, "--quiet", "--no-model", "--max-shard-size", size]
                    + extra
                )
                s = measure.run(
                    argv, inputs=[os.path.join(ck, "st")], out=out, env=env, timeout=a.timeout, log_path=log
                )
                shards = len([f for f in os.listdir(out) if f.endswith(".safetensors")]) if s.rc == 0 else 0
                _log(
                    f"  [shards {p} {size} {what}] {s.seconds:.2f} s {s.max_rss_mib:.0f} MiB ({shards} shards)"
                    + (f"  FAILED {s.error}" if s.rc else "")
                )
                rows.append(
                    {
                        "preset": p,
                        "bytes": spec.nbytes,
                        "max_shard_size": size,
                        "mode": what,
                        "shards": shards,
                        **asdict(s),
                    }
                )
    measure.remove(out)
    return rows


def dry_run_70b(a, tools: Tools, env: dict) -> list[dict]:
    """``--dry-run`` (and ``analyze``) on the sparse 70B Llama and the sparse DeepSeek-V3 (float8) checkpoints."""
    ck, spec = ensure_checkpoint("70b", a.data_dir, a.dtype, sparse=True)
    llama = {
        "checkpoint": "llama-70b",
        "bytes": spec.nbytes,
        "tensors": len(spec.tensors()),
        "shards": len(mc.shard_groups(spec)),
    }
    rows = _plan_only(os.path.join(ck, "st"), llama, a, tools, env, analyze=True)
    if a.quick:  # a smoke test: the 90,000-tensor plan takes a minute of runs
        return rows
    ds_dir = os.path.join(a.data_dir, "deepseek-v3-fp8-sparse")
    if not os.path.isfile(os.path.join(ds_dir, "model.safetensors.index.json")):
        _log(f"writing {ds_dir} (headers over holes)")
        counts = deepseek_sparse.write(ds_dir)
    else:
        with open(os.path.join(ds_dir, "model.safetensors.index.json")) as f:
            wm = json.load(f)
        counts = {
            "bytes": wm["metadata"]["total_size"],
            "tensors": len(wm["weight_map"]),
            "shards": len(set(wm["weight_map"].values())),
        }
    rows += _plan_only(
        ds_dir,
        {"checkpoint": "deepseek-v3-fp8", **counts},
        a,
        tools,
        env,
        analyze=False,
        extra=[("t2mlx stream --dry-run --no-model", ["--no-model"])],
    )
    return rows


def _plan_only(st: str, info: dict, a, tools: Tools, env: dict, *, analyze: bool, extra=()) -> list[dict]:
    """Median cold timings of plan-only commands on ``st``, then again with the analysis cache filled."""
    cmds = [("t2mlx stream --dry-run", tools.t2mlx + ["stream", st, "--dry-run"])]
    if analyze:
        cmds.append(("t2mlx stream --dry-run --json", tools.t2mlx + ["stream", st, "--dry-run", "--json"]))
        if tools.has_analyze:
            cmds.append(("t2mlx analyze", tools.t2mlx + ["analyze", st]))
    # The same commands again once the analysis cache holds this model (a repeated run, e.g. after a dry run).
    cached_env = {k: v for k, v in env.items() if k != "T2MLX_NO_CACHE"}
    cached_env["T2MLX_CACHE_DIR"] = os.path.join(a.work_dir, "analysis-cache-" + info["checkpoint"])
    shutil.rmtree(cached_env["T2MLX_CACHE_DIR"], ignore_errors=True)
    runs = (
        [(label, argv, env) for label, argv in cmds]
        + [(label, tools.t2mlx + ["stream", st, "--dry-run"] + more, env) for label, more in extra]
        + [(label, argv, cached_env) for label, argv in cmds]
    )
    rows = []
    for label, argv, cmd_env in runs:
        if cmd_env is cached_env and not os.path.isdir(cached_env["T2MLX_CACHE_DIR"]):
            measure.run(argv, inputs=[], out=None, env=cmd_env, timeout=a.timeout)  # fills the cache
        samples = [
            measure.run(argv, inputs=[], out=None, env=cmd_env, timeout=a.timeout) for _ in range(max(a.runs, 3))
        ]
        ok = [s for s in samples if s.rc == 0]
        rows.append(
            {
                **info,
                "command": label,
                "cached": cmd_env is cached_env,
                "seconds": statistics.median(s.seconds for s in ok) if ok else None,
                "max_rss_mib": max((s.max_rss_mib for s in ok), default=None),
                "error": next((s.error for s in samples if s.rc), ""),
            }
        )
        _log(
            f"  [{info['checkpoint']} sparse] {label}{' (analysis cached)' if cmd_env is cached_env else ''}: "
            f"{rows[-1]['seconds']} s"
        )
    return rows


def _delete_checkpoint(preset: str, a) -> None:
    shutil.rmtree(mc.checkpoint_dir(a.data_dir, preset, preset_spec(preset, a.dtype), False), ignore_errors=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[2].replace("\n", " "),
        epilog="presets: "
        + ", ".join(
            f"{k} ({mc.human(v.nbytes)}, {len(v.tensors())} tensors)" for k, v in mc.PRESETS.items() if k != "70b"
        )
        + "; the 70b preset is only used sparse, for --dry-run timing.\n"
        "contenders: cp, t2mlx, t2mlx-model, t2mlx-f16, t2mlx-q4, cp-bin, t2mlx-bin, "
        "mlx-lm, mlx-lm-q4, naive-torch, naive-safe",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--presets",
        nargs="+",
        choices=[p for p in mc.PRESETS if p != "70b"],
        metavar="PRESET",
        help=f"checkpoints to benchmark (default: {' '.join(DEFAULT_PRESETS)})",
    )
    ap.add_argument("--runs", type=int, help="rounds per preset (default: 3; 1 with --quick)")
    ap.add_argument("--contenders", help="comma list of contenders to run (the cp floors always run)")
    ap.add_argument(
        "--shard-sizes",
        nargs="*",
        metavar="SIZE",
        help=f"--max-shard-size values for the RSS sweep (default: {' '.join(SHARD_SIZES)}; none: skip)",
    )
    ap.add_argument(
        "--sweep-presets",
        nargs="*",
        metavar="PRESET",
        help="presets for the shard-size sweep (default: the size presets among --presets)",
    )
    ap.add_argument("--no-dry-run", action="store_true", help="skip the 70B sparse --dry-run timing")
    ap.add_argument("--dtype", default="bf16", choices=sorted(mc._DTYPES), help="checkpoint dtype (default: bf16)")
    ap.add_argument(
        "--quick", action="store_true", help=f"tiny presets ({' '.join(QUICK_PRESETS)}), 1 run: a smoke test"
    )
    ap.add_argument("--data-dir", default=os.path.join(HERE, "data"), help="where checkpoints go (default: bench/data)")
    ap.add_argument(
        "--results-dir",
        help="where results.md/json and the plots go (default: bench/, or bench/_work/quick with --quick)",
    )
    ap.add_argument("--work-dir", help="scratch space for outputs and logs (default: bench/_work)")
    ap.add_argument("--clean", action="store_true", help="delete each preset's checkpoint after benchmarking it")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds before a contender is killed")
    ap.add_argument("--report-only", action="store_true", help="re-render results.md and plots from results.json")
    a = ap.parse_args(argv)
    a.presets = a.presets or (QUICK_PRESETS if a.quick else DEFAULT_PRESETS)
    a.runs = a.runs or (1 if a.quick else 3)
    if a.shard_sizes is None:
        a.shard_sizes = QUICK_SHARD_SIZES if a.quick else SHARD_SIZES
    if a.sweep_presets is None:
        a.sweep_presets = [p for p in a.presets if p in SIZE_PRESETS]
    a.results_dir = a.results_dir or (os.path.join(HERE, "_work", "quick") if a.quick else HERE)
    a.work_dir = a.work_dir or os.path.join(HERE, "_work")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    os.makedirs(a.results_dir, exist_ok=True)
    json_path = os.path.join(a.results_dir, "results.json")
    if a.report_only:
        with open(json_path) as f:
            report.write_all(json.load(f), a.results_dir)
        return 0
    os.makedirs(a.data_dir, exist_ok=True)
    os.makedirs(a.work_dir, exist_ok=True)
    t0 = time.perf_counter()
    tools = Tools.detect()
    env = _child_env()
    cs = contenders(tools)
    if a.contenders:
        wanted = set(a.contenders.split(",")) | {"cp", "cp-bin"}
        unknown = wanted - {c.name for c in cs}
        if unknown:
            raise SystemExit(f"error: unknown contender(s): {', '.join(sorted(unknown))}")
        cs = [c for c in cs if c.name in wanted]
    results = {
        "command": " ".join(["python bench/run.py"] + (sys.argv[1:] if argv is None else list(argv))),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "runs": a.runs,
        "machine": measure.machine_info(a.data_dir, ROOT),
        "load_start": os.getloadavg(),
        "contenders": [asdict(c) for c in cs],
        "size_presets": list(SIZE_PRESETS),
        "presets": [],
        "skipped_presets": {},
        "shard_sweep": [],
        "dry_run": [],
    }
    for p in a.presets:
        why = missing_space(p, a)
        if why:
            _log(f"preset {p}: skipped, {why}")
            results["skipped_presets"][p] = why
            a.sweep_presets = [x for x in a.sweep_presets if x != p]
            continue
        _log(f"preset {p}")
        results["presets"].append(asdict(bench_preset(p, cs, a, a.work_dir, env)))
        if a.clean and p not in a.sweep_presets:
            _delete_checkpoint(p, a)
    if a.shard_sizes and a.sweep_presets:
        _log("shard-size sweep")
        results["shard_sweep"] = shard_sweep(a.sweep_presets, a.shard_sizes, a, tools, a.work_dir, env)
    if not a.no_dry_run:
        _log("70B sparse --dry-run")
        results["dry_run"] = dry_run_70b(a, tools, env)
    if a.clean:
        for p in a.sweep_presets:
            _delete_checkpoint(p, a)
    results["load_end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - t0
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1)
    report.write_all(results, a.results_dir)
    _log(f"wrote {os.path.join(a.results_dir, 'results.md')} in {results['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
