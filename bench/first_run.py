"""First run on a directory with a config.json, as a ratio to ``cp -r`` of the same input in the same round.

    python bench/first_run.py                          # 2.5g preset, 3 rounds
    python bench/first_run.py --presets 0.5g 2.5g --runs 5 --data-dir bench/data

Contenders, each its own cold process (bench/measure.py), in a shuffled order per round:
- ``cp``: ``cp -r`` + sync, the floor;
- ``first-run``: ``t2mlx stream SRC OUT`` with the analysis cache off (``T2MLX_NO_CACHE=1``): a llama
  config.json, whose rules are kept as data (torch2mlx/analysis/known_rules.json);
- ``analyzer``: the same with ``--model transformers:LlamaForCausalLM``, which builds the model on the meta
  device (imports torch and transformers): what every first run cost before the rules were data;
- ``no-model``: ``--no-model``, rules from names and shapes: the engine alone.
Prints a table of medians (seconds, ratio to that round's cp, peak RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import make_checkpoint as mc  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402
from fast_storage import child_env  # noqa: E402

T2MLX = [sys.executable, "-m", "torch2mlx", "stream"]
CONTENDERS = {
    "cp": ["cp", "-r"],
    "first-run": T2MLX,
    "analyzer": T2MLX + ["--model", "transformers:LlamaForCausalLM"],
    "no-model": T2MLX + ["--no-model"],
}


def checkpoint(preset: str, data_dir: str) -> str:
    """The preset's safetensors directory: run.py's when it is there, else one written for this."""
    spec = mc.PRESETS[preset]
    shared = mc.checkpoint_dir(data_dir, preset, spec, False)
    try:
        with open(os.path.join(shared, mc.SPEC_FILE)) as f:
            stamp = json.load(f)
        if "st" in stamp["formats"] and not stamp["sparse"] and stamp["spec"] == mc.asdict(spec):
            return os.path.join(shared, "st")
    except (OSError, ValueError, KeyError):
        pass
    return os.path.join(mc.make(spec, shared + "-st", formats=("st",)), "st")


def bench(preset: str, src: str, runs: int, work: str, seed: int) -> dict:
    # bytecode cached, as an installed package has it (fast_storage.child_env); one untimed warm-up fills it
    env = {k: v for k, v in child_env(work).items() if k != "T2MLX_CACHE_DIR"}
    env["T2MLX_NO_CACHE"] = "1"
    warm = os.path.join(work, "warm")
    measure.run(CONTENDERS["first-run"] + [src, warm], inputs=[], out=warm, env=env)
    measure.remove(warm)
    order = random.Random(seed)
    samples: dict[str, list] = {c: [] for c in CONTENDERS}
    for r in range(runs):
        names = list(CONTENDERS)
        order.shuffle(names)
        for name in names:
            out = os.path.join(work, f"{preset}-{name}")
            s = measure.run(CONTENDERS[name] + [src, out], inputs=measure.files_under(src), out=out, env=env)
            if s.rc != 0:
                raise SystemExit(f"error: {name} failed on {preset}: {s.error}")
            samples[name].append(s)
            print(f"  round {r + 1} {name:<10} {s.seconds:6.2f} s  {s.max_rss_mib:5.0f} MiB", file=sys.stderr)
        measure.remove(os.path.join(work, f"{preset}-cp"))
    cp = [s.seconds for s in samples["cp"]]
    return {
        name: {
            "seconds": statistics.median(s.seconds for s in got),
            "ratio": statistics.median(s.seconds / c for s, c in zip(got, cp, strict=True)),
            "rss_mib": statistics.median(s.max_rss_mib for s in got),
        }
        for name, got in samples.items()
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["2.5g"], choices=sorted(mc.PRESETS))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--data-dir", default=os.path.join(HERE, "data"))
    ap.add_argument("--work", default=os.path.join(HERE, "_work", "first_run"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--results",
        default=os.path.join(HERE, "results.md"),
        help="results.md to put this run's section in (default bench/results.md; '' for none)",
    )
    a = ap.parse_args(argv)
    os.chdir(os.path.dirname(HERE))  # `python -m torch2mlx` imports from the working directory first: this checkout's
    os.makedirs(a.work, exist_ok=True)
    rows = []
    for preset in a.presets:
        src = checkpoint(preset, a.data_dir)
        print(f"{preset}: {src}", file=sys.stderr)
        for name, m in bench(preset, src, a.runs, a.work, a.seed).items():
            rows.append((preset, name, m))
        for name in CONTENDERS:
            measure.remove(os.path.join(a.work, f"{preset}-{name}"))
    table = [
        f"| preset | contender | seconds (median of {a.runs}) | / cp (median of per-round ratios) | peak RSS |",
        "|---|---|---|---|---|",
    ]
    for preset, name, m in rows:
        table.append(f"| {preset} | {name} | {m['seconds']:.2f} | {m['ratio']:.2f} | {m['rss_mib']:.0f} MiB |")
    print("\n".join(table))
    if a.results:
        argv_shown = " ".join(sys.argv[1:] if argv is None else argv)
        report.put_section(
            a.results,
            "first_run",
            "## First run on a directory with a config.json\n\n"
            f"Generated by `python bench/first_run.py{' ' + argv_shown if argv_shown else ''}` on "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: analysis cache off, so every run is a first run; "
            "`first-run` takes the rules kept as data (no torch), `analyzer` builds the model as every first "
            "run did before, `no-model` is the engine alone.\n\n" + "\n".join(table),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
