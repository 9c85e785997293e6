"""Several variants from one read: `--variants bf16,q8,q4,mixed_3_6` against four single runs.

    python bench/variants.py                       # preset 0.3g (a 300 MB bf16 llama), 1 round
    python bench/variants.py --preset 2.5g --runs 3 --data /elsewhere/bench/data

Per round, in alternating order, each process measured by measure.run (source pages dropped before it
starts, output fsynced before the clock stops, its own peak RSS):

- ``one run``: ``t2mlx stream SRC OUT --variants bf16,q8,q4,mixed_3_6 --no-model``;
- ``four runs``: ``t2mlx stream SRC OUT/<v> --no-model`` with each variant's flags, one after the other
  (time and bytes summed, peak RSS the largest).

Bytes read are the source bytes each process reports having read (``--json``'s ``bytes_in``; the tests count
the reader's reads to check that number). Outputs are compared byte for byte between the two ways.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import fast_storage  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402

VARIANTS = {
    "bf16": ["--dtype", "bfloat16"],
    "q8": ["--q-bits", "8"],
    "q4": ["--q-bits", "4"],
    "mixed_3_6": ["--q-recipe", "mixed_3_6"],
}


def run_json(argv, *, inputs, out, env, work, name):
    """measure.run of ``argv --json``; its report kept (stdout through an exec'ing shell: the RSS is python's)."""
    report_path = os.path.join(work, f"{name}.json")
    wrapped = ["sh", "-c", 'out="$1"; shift; exec "$@" > "$out"', "sh", report_path, *argv, "--json"]
    s = measure.run(wrapped, inputs=inputs, out=out, env=env, log_path=os.path.join(work, f"{name}.log"))
    if s.rc != 0:
        raise SystemExit(f"error: {name} failed ({s.error})")
    with open(report_path) as f:
        return s, json.load(f)


def round_together(src, work, env):
    out = os.path.join(work, "together")
    argv = fast_storage.t2mlx_argv(src, out, ["--variants", ",".join(VARIANTS)])
    s, rep = run_json(argv, inputs=[src], out=out, env=env, work=work, name="together")
    return {"seconds": s.seconds, "rss_mib": s.max_rss_mib, "read": rep["bytes_in"], "out": s.out_bytes}


def round_four(src, work, env):
    rows = []
    for v, flags in VARIANTS.items():
        out = os.path.join(work, "four", v)
        s, rep = run_json(fast_storage.t2mlx_argv(src, out, flags), inputs=[src], out=out, env=env, work=work, name=v)
        rows.append((s, rep))
    return {
        "seconds": sum(s.seconds for s, _ in rows),
        "rss_mib": max(s.max_rss_mib for s, _ in rows),
        "read": sum(r["bytes_in"] for _, r in rows),
        "out": sum(s.out_bytes for s, _ in rows),
    }


def same_outputs(work) -> bool:
    """Every file of each variant equal to its single run's; the model card (README.md) names its own OUT."""
    for v in VARIANTS:
        a, b = os.path.join(work, "together", v), os.path.join(work, "four", v)
        names = sorted(n for n in os.listdir(a) if n != "README.md")
        if names != sorted(n for n in os.listdir(b) if n != "README.md"):
            return False
        _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
        if mismatch or errors:
            return False
    return True


def markdown(res: dict, cmd: str) -> str:
    gib = 2**30
    t, f = res["together"], res["four"]
    lines = [
        f"`{cmd}`: {res['preset']} ({res['source_bytes'] / gib:.2f} GiB bf16), variants {', '.join(VARIANTS)}, "
        f"{res['runs']} round(s), {res['cores']} cores, medians; outputs byte-identical: {res['identical']}.",
        "",
        "| | time | source bytes read | peak RSS | written |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in (("one run, `--variants`", t), ("four single runs", f)):
        lines.append(
            f"| {name} | {r['seconds']:.1f} s | {r['read'] / gib:.2f} GiB | {r['rss_mib']:.0f} MiB | "
            f"{r['out'] / gib:.2f} GiB |"
        )
    lines.append("")
    lines.append(f"One run takes {t['seconds'] / f['seconds']:.2f}x the time of four and reads a quarter of the bytes.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="0.3g", help="make_checkpoint.py preset (default 0.3g)")
    ap.add_argument("--runs", type=int, default=1, help="rounds (default 1)")
    ap.add_argument("--data", default=os.path.join(HERE, "data"), help="checkpoint directory (default bench/data)")
    ap.add_argument(
        "--results",
        default=os.path.join(HERE, "results.md"),
        help="results.md to put this run's section in (default bench/results.md; '' for none)",
    )
    a = ap.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    results_path = os.path.abspath(a.results) if a.results else ""
    os.chdir(ROOT)  # `python -m torch2mlx` imports from the working directory first: this checkout's
    src = fast_storage.checkpoint(a.preset, os.path.abspath(a.data))
    work = os.path.join(HERE, "_work", "variants")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    env = fast_storage.child_env(work)
    tiny = fast_storage.checkpoint("tiny", os.path.abspath(a.data))  # untimed: fills the bytecode cache
    warm = os.path.join(work, "warm")
    measure.run(
        fast_storage.t2mlx_argv(tiny, warm, ["--variants", ",".join(VARIANTS)]), inputs=[tiny], out=warm, env=env
    )
    measure.remove(warm)
    rounds: dict[str, list] = {"together": [], "four": []}
    identical = True
    for r in range(a.runs):
        for c in ["together", "four"] if r % 2 == 0 else ["four", "together"]:
            res = (round_together if c == "together" else round_four)(src, work, env)
            rounds[c].append(res)
            log(f"  round {r + 1}: {c} {res['seconds']:.2f} s, {res['rss_mib']:.0f} MiB, read {res['read']:,} B")
        identical = identical and same_outputs(work)
        measure.remove(os.path.join(work, "together"))
        measure.remove(os.path.join(work, "four"))
    med = {c: {k: statistics.median(x[k] for x in rows) for k in rows[0]} for c, rows in rounds.items()}
    results = {
        "preset": a.preset,
        "source_bytes": measure.tree_bytes(src),
        "runs": a.runs,
        "cores": os.cpu_count(),
        "identical": identical,
        **med,
        "rounds": rounds,
    }
    cmd = "python bench/variants.py" + (f" --preset {a.preset}" if a.preset != "0.3g" else "")
    cmd += f" --runs {a.runs}" if a.runs != 1 else ""
    text = markdown(results, cmd)
    print(text)
    if results_path:
        report.put_section(results_path, "variants", text)
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
