"""Passthrough on fast storage: `t2mlx stream --no-model` as a ratio to `cp -r` + sync, and shard hashing speed.

    python bench/fast_storage.py                       # every row, 3 rounds (~3 min on 2 cores)
    python bench/fast_storage.py --rows tmpfs-2.4g --runs 5
    python bench/fast_storage.py --json bench/_work/fast_storage.json

Rows (llama-shaped bfloat16 checkpoints from make_checkpoint.py, no dtype change, so every byte is a
kernel copy and the cost above cp is the shard hash and the fixed start-up):

- ``tmpfs-2.4g``: preset 2.5g (2.4 GiB), source and output in /dev/shm (memory-speed storage);
- ``disk-0.3g``, ``disk-2.4g``: presets 0.3g and 2.5g, source in bench/data, output in bench/_work;
- ``q4-w1-2.4g``, ``q4-w2-2.4g``: ``--q-bits 4`` with one and two worker threads (does quantizing scale
  with cores?), on disk; cp is only the yardstick there.

Each round runs cp and t2mlx once, in alternating order (a run is slowed by what ran just before it),
each measured by measure.run: input pages dropped first, clock stopped after an fsync of the output.
Ratios are medians over rounds of t2mlx / cp in the same round.

t2mlx runs as an installed package would: with its bytecode cached (``PYTHONDONTWRITEBYTECODE`` is
dropped for the child and ``PYTHONPYCACHEPREFIX`` points into bench/_work; one untimed warm-up run
fills it). Without a cache every run compiles torch2mlx's modules first (~0.1-0.25 s here).

``hash`` rows time torch2mlx's shard hash (``stream.hashing.path_digests``, XXH3-128 through mmap, one
thread) over the tmpfs output, and sha256 (what manifests recorded before) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import make_checkpoint  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402

ROWS = {  # name -> (preset, storage, extra t2mlx arguments)
    "tmpfs-2.4g": ("2.5g", "tmpfs", ()),
    "disk-0.3g": ("0.3g", "disk", ()),
    "disk-2.4g": ("2.5g", "disk", ()),
    # quantized output: does it scale with the worker threads? (cp is only the yardstick here)
    "q4-w1-2.4g": ("2.5g", "disk", ("--q-bits", "4", "--workers", "1")),
    "q4-w2-2.4g": ("2.5g", "disk", ("--q-bits", "4", "--workers", "2")),
}


def checkpoint(preset: str, data: str = os.path.join(HERE, "data")) -> str:
    """The preset's safetensors directory; one that bench/run.py made (with .bin too) is used as it is."""
    spec = make_checkpoint.PRESETS[preset]
    d = make_checkpoint.checkpoint_dir(data, preset, spec, False)
    try:
        with open(os.path.join(d, make_checkpoint.SPEC_FILE)) as f:
            stamp = json.load(f)
        if stamp["spec"] == asdict(spec) and "st" in stamp["formats"] and not stamp["sparse"]:
            return os.path.join(d, "st")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return os.path.join(make_checkpoint.make(spec, d, formats=("st",)), "st")


def child_env(work: str) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(work, "pycache")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def t2mlx_argv(src: str, out: str, extra=()) -> list[str]:
    return [sys.executable, "-m", "torch2mlx", "stream", src, out, "--no-model", "--quiet", *extra]


def time_row(name: str, src: str, work: str, runs: int, env: dict, log, extra=()) -> dict:
    os.makedirs(work, exist_ok=True)
    cp_out, t_out = os.path.join(work, "cp-out"), os.path.join(work, "t2mlx-out")
    contenders = {"cp": ["cp", "-r", src, cp_out], "t2mlx": t2mlx_argv(src, t_out, extra)}
    outs = {"cp": cp_out, "t2mlx": t_out}
    samples: dict[str, list] = {"cp": [], "t2mlx": []}
    for r in range(runs):
        for c in ["cp", "t2mlx"] if r % 2 == 0 else ["t2mlx", "cp"]:
            s = measure.run(contenders[c], inputs=[src], out=outs[c], env=env)
            if s.rc != 0:
                raise SystemExit(f"error: {name}: {c} failed ({s.error})")
            samples[c].append(s)
            log(f"  {name} round {r + 1}: {c} {s.seconds:.2f} s, {s.max_rss_mib:.0f} MiB, load {s.load1:.1f}")
    for o in outs.values():
        measure.remove(o)
    ratios = [t.seconds / c.seconds for t, c in zip(samples["t2mlx"], samples["cp"], strict=True)]
    return {
        "row": name,
        "bytes": measure.tree_bytes(src),
        "cp_s": statistics.median(s.seconds for s in samples["cp"]),
        "t2mlx_s": statistics.median(s.seconds for s in samples["t2mlx"]),
        "ratio": statistics.median(ratios),
        "ratios": [round(x, 3) for x in ratios],
        "cp_cpu_s": statistics.median(s.cpu_seconds for s in samples["cp"]),
        "t2mlx_cpu_s": statistics.median(s.cpu_seconds for s in samples["t2mlx"]),
        "t2mlx_peak_rss_mib": max(s.max_rss_mib for s in samples["t2mlx"]),
        "load1": [s.load1 for s in samples["t2mlx"]],
    }


def time_hashing(path: str, runs: int) -> list[dict]:
    from torch2mlx.stream import hashing

    size = os.path.getsize(path)
    rows = []
    for alg, threads in [(hashing.HASH, 1), ("sha256", 1)]:
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            hashing.path_digests(path, (alg,))
            times.append(time.perf_counter() - t0)
        s = statistics.median(times)
        rows.append({"hash": alg, "threads": threads, "seconds": s, "gb_per_s": size / s / 1e9})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=list(ROWS))
    ap.add_argument("--runs", type=int, default=3, help="rounds per row (default 3)")
    ap.add_argument("--tmpfs", default="/dev/shm", help="a memory-backed directory (default /dev/shm)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument(
        "--results",
        default=os.path.join(HERE, "results.md"),
        help="results.md to put this run's section in (default bench/results.md; '' for none)",
    )
    a = ap.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    json_path = os.path.abspath(a.json) if a.json else None
    os.chdir(ROOT)  # `python -m torch2mlx` imports from the working directory first: this checkout's
    work = os.path.join(HERE, "_work", "fast_storage")
    env = child_env(work)
    results: dict = {"rows": [], "hash": [], "cores": os.cpu_count()}
    tiny = checkpoint("tiny")  # untimed warm-up: compiles torch2mlx's bytecode into the cache
    measure.run(t2mlx_argv(tiny, os.path.join(work, "warm")), inputs=[tiny], out=os.path.join(work, "warm"), env=env)
    measure.remove(os.path.join(work, "warm"))
    for name in a.rows:
        preset, storage, extra = ROWS[name]
        src = checkpoint(preset)
        if storage == "tmpfs":
            shm = os.path.join(a.tmpfs, "t2mlx-fast-storage")
            shutil.rmtree(shm, ignore_errors=True)
            shutil.copytree(src, os.path.join(shm, "src"))
            try:
                results["rows"].append(time_row(name, os.path.join(shm, "src"), shm, a.runs, env, log))
                out = os.path.join(shm, "hash-out")
                measure.run(t2mlx_argv(os.path.join(shm, "src"), out), inputs=[], out=out, env=env)
                shard = max(measure.files_under(out), key=os.path.getsize)
                results["hash"] = time_hashing(shard, a.runs)
            finally:
                shutil.rmtree(shm, ignore_errors=True)
        else:
            results["rows"].append(time_row(name, src, os.path.join(work, name), a.runs, env, log, extra))
    print(
        f"{'row':<12} {'GB':>5} {'cp s':>6} {'t2mlx s':>8} {'t2mlx/cp':>9} {'CPU cp/t2mlx':>13} {'peak MiB':>9}  ratios"
    )
    for r in results["rows"]:
        print(
            f"{r['row']:<12} {r['bytes'] / 1e9:5.2f} {r['cp_s']:6.2f} {r['t2mlx_s']:8.2f} {r['ratio']:9.2f}"
            f" {r['cp_cpu_s']:6.2f}/{r['t2mlx_cpu_s']:<6.2f} {r['t2mlx_peak_rss_mib']:9.0f}  {r['ratios']}"
        )
    for h in results["hash"]:
        print(f"hash {h['hash']:<7} {h['threads']} thread(s): {h['gb_per_s']:.2f} GB/s")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    if a.results:
        command = "python bench/fast_storage.py" + (f" --rows {' '.join(a.rows)}" if a.rows != list(ROWS) else "")
        command += f" --runs {a.runs}" if a.runs != 3 else ""
        report.put_section(a.results, "fast_storage", markdown(results, command))
    return 0


def markdown(results: dict, command: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "## Fast storage, start-up and quantizing with more workers",
        "",
        f"Generated by `{command}` on {when} ({results['cores']} cores): `t2mlx stream --no-model` against",
        "`cp -r` + sync in the same rounds, alternating order; median over rounds of the per-round ratio.",
        "",
        "| row | GB | cp | t2mlx | t2mlx / cp | CPU cp / t2mlx | peak RSS | ratios |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| `{r['row']}` | {r['bytes'] / 1e9:.2f} | {r['cp_s']:.2f} s | {r['t2mlx_s']:.2f} s |"
            f" **{r['ratio']:.2f}** |"
            f" {r['cp_cpu_s']:.2f} / {r['t2mlx_cpu_s']:.2f} s | {r['t2mlx_peak_rss_mib']:.0f} MiB |"
            f" {', '.join(f'{x:.2f}' for x in r['ratios'])} |"
        )
    if results["hash"]:
        lines += ["", "Shard hash over the tmpfs output, one thread:", ""]
        lines += [f"- {h['hash']}: {h['gb_per_s']:.2f} GB/s" for h in results["hash"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
