"""Turn bench/run.py's results.json into results.md, throughput.png and memory.png."""

from __future__ import annotations

import os
import re
import statistics

RSS_TARGET_MIB = 300
# (contender, floor-ratio target, where the target comes from)
RATIO_TARGETS = [
    ("t2mlx", 1.1, "issue 7; issue 2 asks 1.3"),
    ("t2mlx-bin", 1.2, "issue 7"),
    ("t2mlx-f16", 1.5, "issue 7"),
]
# Below this size a run is mostly interpreter start-up: time ratios to cp say nothing about the engine.
RATIO_MIN_BYTES = 10**8
DRY_RUN_TARGET_S = 3.0
T2MLX = ("t2mlx", "t2mlx-f16", "t2mlx-q4", "t2mlx-bin")


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _runs(p: dict, name: str) -> list[dict]:
    return p["samples"].get(name, [])


def ratios(p: dict, name: str, floor: str) -> list[float]:
    """Per-round ratios to the floor measured in the same round."""
    base = {s["round"]: s["seconds"] for s in _runs(p, floor)}
    return [s["seconds"] / base[s["round"]] for s in _runs(p, name) if s["round"] in base]


def summary(p: dict, c: dict) -> dict | None:
    runs = _runs(p, c["name"])
    if not runs:
        return None
    sec = statistics.median(s["seconds"] for s in runs)
    r = ratios(p, c["name"], c["floor"])
    floor = [s["seconds"] for s in _runs(p, c["floor"])]
    src_bytes = p["info"]["st_bytes"] if c["src"] == "st" else p["info"]["bin_bytes"]
    return {
        "seconds": sec,
        "ratio": statistics.median(r) if r else None,
        "min_ratio": min(r) if r else None,
        "max_ratio": max(r) if r else None,
        # best against best: the least disturbed run of each, robust to other load on the machine
        "best_ratio": min(s["seconds"] for s in runs) / min(floor) if floor else None,
        "gbps": src_bytes / sec / 1e9,
        "rss": max(s["max_rss_mib"] for s in runs),
        "cpu": statistics.median(s["cpu_seconds"] for s in runs),
        "out": runs[-1]["out_bytes"],
        "n": len(runs),
        "load": max(s["load1"] for s in runs),
    }


def _preset_title(info: dict) -> str:
    sh = info["shape"]
    return (
        f"### `{info['preset']}`: {_gb(info['bytes'])} {info['dtype']}, {info['tensors']} tensors in "
        f"{info['shards']} shard(s), largest tensor {_gb(info['largest'])} "
        f"(hidden {sh['hidden']}, intermediate {sh['intermediate']}, {sh['layers']} layers, vocab {sh['vocab']})"
    )


def preset_table(p: dict, contenders: list[dict]) -> list[str]:
    lines = [
        _preset_title(p["info"]),
        "",
        "| contender | median time | × cp (min–max) | best × cp | throughput | peak RSS | CPU time | output | runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in contenders:
        s = summary(p, c)
        if s is None:
            why = p["skipped"].get(c["name"], "not run")
            lines.append(f"| {c['label']} | — | — | — | — | — | — | — | skipped: {why} |")
            continue
        floor = c["name"] == c["floor"]
        ratio = (
            "1.00 (floor)"
            if floor
            else (f"**{s['ratio']:.2f}** ({s['min_ratio']:.2f}–{s['max_ratio']:.2f})" if s["ratio"] else "—")
        )
        best = "1.00" if floor else f"{s['best_ratio']:.2f}" if s["best_ratio"] else "—"
        lines.append(
            f"| {c['label']} | {s['seconds']:.2f} s | {ratio} | {best} | {s['gbps']:.2f} GB/s | "
            f"{s['rss']:.0f} MiB | {s['cpu']:.1f} s | {_gb(s['out'])} | {s['n']} |"
        )
    failed = {k: v for k, v in p["skipped"].items() if v.startswith("failed")}
    for k, v in failed.items():
        lines.append(f"\n`{k}` {v}")
    return lines + [""]


def sweep_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    sizes = list(dict.fromkeys(r["max_shard_size"] for r in rows))
    lines = [
        "## Peak RSS of `t2mlx stream` vs `--max-shard-size`",
        "",
        "The engine (`--no-model`: rules from names and shapes; the analyzer's torch import adds a fixed "
        "~300 MiB, see `t2mlx-model` above). One cold run each; cells are peak RSS (wall time, output "
        "shards).",
        "",
        "| preset | mode | " + " | ".join(f"`{s}`" for s in sizes) + " |",
        "|---|---|" + "---:|" * len(sizes),
    ]
    for preset, mode in dict.fromkeys((r["preset"], r["mode"]) for r in rows):
        cells = []
        for size in sizes:
            r = next((r for r in rows if (r["preset"], r["mode"], r["max_shard_size"]) == (preset, mode, size)), None)
            cells.append(
                "—"
                if r is None
                else f"failed: {r['error']}"
                if r["rc"]
                else f"{r['max_rss_mib']:.0f} MiB ({r['seconds']:.1f} s, {r['shards']})"
            )
        b = rows[[x["preset"] for x in rows].index(preset)]["bytes"]
        lines.append(f"| `{preset}` ({_gb(b)}) | {mode} | " + " | ".join(cells) + " |")
    return lines + [""]


_PLAN_TITLES = {
    "llama-70b": "a Llama-70B-shaped checkpoint",
    "deepseek-v3-fp8": "a DeepSeek-V3-shaped float8 checkpoint (block-scaled, per-expert tensors)",
}


def dry_run_table(rows: list[dict]) -> list[str]:
    lines = []
    for ck in dict.fromkeys(r.get("checkpoint", "llama-70b") for r in rows):
        part = [r for r in rows if r.get("checkpoint", "llama-70b") == ck]
        first = next((r for r in part if "bytes" in r), None)
        lines += [f"## Plan only, on {_PLAN_TITLES.get(ck, ck)} of file holes", ""]
        if first:
            lines += [
                f"{_gb(first['bytes'])} in {first['shards']} safetensors shards, {first['tensors']} tensors; "
                "the data regions are holes made with `truncate`, so nothing but headers exists on disk. "
                "Median of cold runs, process start to exit. Rows marked *analysis cached* run after one "
                "run filled the analysis cache (the model is not built again: no torch import).",
                "",
            ]
        target = ck == "llama-70b"  # issue 7's < 3 s is for the 70B Llama
        lines += [
            "| command | median time | peak RSS |" + (" target |" if target else ""),
            "|---|---:|---:|" + ("---|" if target else ""),
        ]
        for r in part:
            if r.get("skip"):
                lines.append(f"| `{r['command']}` | — | — |" + (f" skipped: {r['skip']} |" if target else ""))
            elif r.get("seconds") is None:
                lines.append(f"| `{r['command']}` | failed: {r['error']} | — |" + (" — |" if target else ""))
            else:
                how = ", analysis cached" if r.get("cached") else ""
                met = "met" if r["seconds"] < DRY_RUN_TARGET_S else "**missed**"
                lines.append(
                    f"| `{r['command']}`{how} | {r['seconds']:.2f} s | {r['max_rss_mib']:.0f} MiB |"
                    + (f" < {DRY_RUN_TARGET_S:.0f} s: {met} |" if target else "")
                )
        lines.append("")
    return lines


def targets(res: dict) -> list[str]:
    lines = ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    by = {c["name"]: c for c in res["contenders"]}
    for p in res["presets"]:
        name = p["info"]["preset"]
        for c, limit, src in RATIO_TARGETS if p["info"]["bytes"] >= RATIO_MIN_BYTES else ():
            s = summary(p, by[c]) if c in by else None
            if s and s["ratio"]:
                lines.append(
                    f"| `{name}` {by[c]['label']} ≤ {limit}× cp ({src}) | {s['ratio']:.2f}× "
                    f"(fastest vs fastest {s['best_ratio']:.2f}×) | {'met' if s['ratio'] <= limit else '**missed**'} |"
                )
        q, lq = (summary(p, by[n]) if n in by else None for n in ("t2mlx-q4", "mlx-lm-q4"))
        if q and lq:
            ok = q["seconds"] < lq["seconds"] and q["rss"] <= 400
            lines.append(
                f"| `{name}` `--q-bits 4` faster than `mlx_lm convert -q`, ≤ 400 MiB | "
                f"{q['seconds']:.1f} s vs {lq['seconds']:.1f} s, {q['rss']:.0f} MiB | "
                f"{'met' if ok else '**missed**'} |"
            )
        for c in T2MLX:
            s = summary(p, by[c]) if c in by else None
            if s:
                lines.append(
                    f"| `{name}` {by[c]['label']} peak RSS ≤ {RSS_TARGET_MIB} MiB | {s['rss']:.0f} MiB | "
                    f"{'met' if s['rss'] <= RSS_TARGET_MIB else '**missed**'} |"
                )
    sweep = [r for r in res["shard_sweep"] if not r["rc"]]
    if sweep:
        worst = max(sweep, key=lambda r: r["max_rss_mib"])
        lines.append(
            f"| peak RSS ≤ {RSS_TARGET_MIB} MiB for every preset and `--max-shard-size` | worst "
            f"{worst['max_rss_mib']:.0f} MiB (`{worst['preset']}`, `{worst['max_shard_size']}`, "
            f"{worst['mode']}) | {'met' if worst['max_rss_mib'] <= RSS_TARGET_MIB else '**missed**'} |"
        )
    return lines + [""]


def markdown(res: dict) -> str:
    m = res["machine"]
    v = m["versions"]
    loads = [x["load1"] for p in res["presets"] for runs in p["samples"].values() for x in runs] or [0.0]
    lines = [
        "# torch2mlx benchmarks",
        "",
        f"Generated by `{res['command']}` on {res['started']} in {res['seconds'] / 60:.1f} min "
        f"({res['runs']} round(s) per preset). Do not edit by hand: rerun the command.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; RAM {m['ram_gib']} GiB",
        f"- Disk: {m['disk']}",
        f"- {m['kernel']}, Python {m['python']}, {m['cp']}",
        "- " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- torch2mlx commit {m['commit']}",
        f"- 1-minute load average when a run started: median {statistics.median(loads):.1f}, "
        f"max {max(loads):.1f} on {m['cores']} cores. Other work on the machine (and a virtual disk whose "
        "host may cache it) shows up as noise in every contender alike; the min–max columns show how much.",
        "",
        "## Method",
        "",
        "Each contender is a separate process. Every round runs each contender once, in a freshly shuffled "
        "(seeded) order, because a run is slowed by what ran just before it. "
        "Before every run the previous output is deleted and flushed and the input files are dropped from "
        "the page cache (`posix_fadvise(DONTNEED)`). The clock runs from process start to exit plus an "
        "`fsync` of every output file (what `sync` would do for those files), so no contender is flattered "
        "by leaving dirty pages behind. `× cp` is the median over rounds of time / time of `cp -r` + sync of "
        "the same input directory in the same round; `best × cp` is the fastest run over the fastest cp, "
        "which is less sensitive to other load on the machine (time targets are checked on the median, on "
        "checkpoints of 100 MB and more). Peak RSS is the contender's `ru_maxrss` as GNU `time` reports it "
        "(the largest over the "
        "rounds); it counts file pages a process maps and touches. Throughput is input bytes / median time.",
        "",
    ]
    lines += targets(res)
    lines += ["## Conversion time and memory", ""]
    for p in res["presets"]:
        lines += preset_table(p, res["contenders"])
    lines += sweep_table(res["shard_sweep"])
    lines += dry_run_table(res["dry_run"])
    skipped = {c["name"]: c["skip"] for c in res["contenders"] if c["skip"]}
    skipped.update({f"preset {k}": why for k, why in res.get("skipped_presets", {}).items()})
    if skipped:
        lines += ["## Skipped", ""] + [f"- `{k}`: {why}" for k, why in skipped.items()] + [""]
    lines += ["![throughput](throughput.png)", "", "![memory](memory.png)", ""]
    return "\n".join(lines)


def _decorate(ax, title: str, xlabel: str, ylabel: str, target_mib: float | None = None) -> None:
    if target_mib:
        ax.axhline(target_mib, color="red", lw=1, ls="--", label=f"{target_mib} MiB target")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=2)


def plots(res: dict, out_dir: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["matplotlib is not installed: no plots (pip install -e '.[bench]')"]
    cs = [c for c in res["contenders"] if c["name"] != c["floor"] and not c["skip"]]
    presets = res["presets"]

    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.8 / max(len(presets), 1)
    for i, p in enumerate(presets):
        vals = [(summary(p, c) or {}).get("ratio") or 0 for c in cs]
        xs = [j + (i - (len(presets) - 1) / 2) * width for j in range(len(cs))]
        ax.bar(xs, vals, width, label=f"{p['info']['preset']} ({_gb(p['info']['bytes'])})")
    ax.axhline(1.0, color="black", lw=1, ls="--", label="cp -r + sync")
    ax.set_xticks(range(len(cs)), [c["name"] for c in cs], rotation=20)
    ax.set_yscale("log")
    _decorate(
        ax, "Conversion time relative to copying the files", "", "time / time of cp (same round, lower is better)"
    )
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "throughput.png"), dpi=110)
    plt.close(fig)

    sweep = [r for r in res["shard_sweep"] if not r["rc"]]
    fig, axes = plt.subplots(1, 2 if sweep else 1, figsize=(12 if sweep else 7, 4.8), squeeze=False)
    ax = axes[0][0]
    sized = sorted((p for p in presets if p["info"]["preset"] in res["size_presets"]), key=lambda p: p["info"]["bytes"])
    for c in [c for c in res["contenders"] if not c["skip"]]:
        pts = [(p["info"]["bytes"] / 1e9, summary(p, c)["rss"]) for p in sized if summary(p, c)]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=c["name"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([p["info"]["bytes"] / 1e9 for p in sized], [_gb(p["info"]["bytes"]) for p in sized])
    ax.minorticks_off()
    _decorate(ax, "Peak memory vs model size", "checkpoint size (GB)", "peak RSS (MiB)", RSS_TARGET_MIB)
    if sweep:
        ax = axes[0][1]
        for key in dict.fromkeys((r["preset"], r["mode"]) for r in sweep):
            rs = [r for r in sweep if (r["preset"], r["mode"]) == key]
            ax.plot(
                [r["max_shard_size"] for r in rs],
                [r["max_rss_mib"] for r in rs],
                marker="o",
                label=f"{key[0]} {key[1]}",
            )
        ax.set_ylim(bottom=0)
        _decorate(ax, "t2mlx stream: peak memory vs shard size", "--max-shard-size", "peak RSS (MiB)", RSS_TARGET_MIB)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "memory.png"), dpi=110)
    plt.close(fig)
    return []


def write_all(res: dict, out_dir: str) -> None:
    notes = plots(res, out_dir)
    path = os.path.join(out_dir, "results.md")
    kept = _sections(path)  # what the other bench scripts wrote stays
    text = markdown(res) + "".join(f"\n{n}\n" for n in notes)
    with open(path, "w") as f:
        f.write(text + "".join(f"\n{block}\n" for block in kept.values()))


_BEGIN, _END = "<!-- begin {} -->", "<!-- end {} -->"


def _sections(path: str) -> dict[str, str]:
    """``{key: block}`` of the sections ``put_section`` wrote into ``path`` (markers included)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return {}
    found = {}
    for m in re.finditer(r"<!-- begin (\S+) -->.*?<!-- end \1 -->", text, re.S):
        found[m.group(1)] = m.group(0)
    return found


def put_section(path: str, key: str, markdown_text: str) -> None:
    """Write ``markdown_text`` into results.md as section ``key``: replaced in place when there, else appended.

    bench/run.py regenerates the rest of the file and keeps these sections."""
    block = f"{_BEGIN.format(key)}\n{markdown_text.strip()}\n{_END.format(key)}"
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        text = ""
    old = _sections(path).get(key)
    text = text.replace(old, block) if old else text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)
