"""A Llama-3-70B-shaped repo of file holes converted to q4 over loopback: is the disk the output alone?

    python bench/remote_70b.py                  # 70B layer shapes and vocabulary, 10 of its 80 layers
    python bench/remote_70b.py --layers 4 --results ''

The repo (bench/make_checkpoint.py's ``70b`` preset with ``--layers`` layers, 5 GB safetensors shards as
the Hub's Llama-3-70B has) is written ``--sparse``: headers over holes, so the source takes no disk and its
data read as zeros. tests/hub_server.py serves it from this process on 127.0.0.1 as ``bench/70b``, and
``t2mlx stream hf://bench/70b OUT --q-bits 4 --no-model`` converts it in its own process (measure.run: peak
RSS, output fsynced before the clock stops). Bytes fetched are the server's data-byte counter. The disk
high-water is the largest allocated size (``du``) of OUT + HF_HOME + the child's TMPDIR (where the sidecars
go), sampled every 50 ms, against the output's final size plus one shard (the largest output shard and the
largest source shard). Fewer layers than 80 change the run's length, not what it holds on disk at once:
that is bounded per shard, and a layer (1.7 GB bf16) is the same as in the full model.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import fast_storage  # noqa: E402
import make_checkpoint  # noqa: E402
import measure  # noqa: E402
import remote  # noqa: E402
import report  # noqa: E402

REPO = "bench/70b"


def shard_sizes(d: str) -> list[int]:
    return sorted(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d) if n.endswith(".safetensors"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=10, help="layers of the 70B shapes (default 10 of 80)")
    ap.add_argument("--preset", default="70b", help=argparse.SUPPRESS)  # smaller shapes for a smoke run
    ap.add_argument("--data", default=os.path.join(HERE, "data"), help="where the sparse repo is written")
    ap.add_argument(
        "--results",
        default=os.path.join(HERE, "results.md"),
        help="results.md to put this run's section in (default bench/results.md; '' for none)",
    )
    a = ap.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    results_path = os.path.abspath(a.results) if a.results else ""
    os.chdir(ROOT)  # `python -m torch2mlx` imports from the working directory first: this checkout's
    spec = dataclasses.replace(make_checkpoint.PRESETS[a.preset], layers=a.layers)
    ck = make_checkpoint.make(
        spec, os.path.join(os.path.abspath(a.data), f"{a.preset}-{a.layers}l-sparse"), formats=("st",), sparse=True
    )
    src = os.path.join(ck, "st")
    source = measure.tree_bytes(src)
    # q4 keeps 4.5 bits of 16 (group 64, bf16 scale and bias) plus the norms: about 0.29 of the source
    free = shutil.disk_usage(HERE).free
    if 0.35 * source > 0.8 * free:
        raise SystemExit(f"error: the q4 output (~{0.29 * source / 1e9:.1f} GB) does not fit: {free / 1e9:.1f} GB free")
    log(f"source {source / 1e9:.2f} GB apparent, {remote.du([src]) / 1e6:.1f} MB on disk; {free / 1e9:.1f} GB free")
    work = os.path.join(HERE, "_work", "remote-70b")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "repos", "bench"))
    os.symlink(src, os.path.join(work, "repos", REPO))
    home, tmp, out = (os.path.join(work, n) for n in ("hf-home", "tmp", "out"))
    os.makedirs(home)
    os.makedirs(tmp)
    env = fast_storage.child_env(work)
    env.update(HF_HOME=home, TMPDIR=tmp, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    for k in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_ENABLE_HF_TRANSFER"):
        env.pop(k, None)
    hub = remote.load_hub_server()
    # sparse: 21 GB of holes would be hashed for the listing; its ETags come from name, size and mtime
    srv = hub.HubServer(os.path.join(work, "repos"), max_requests=10**9, hash_files=False).start()
    env["HF_ENDPOINT"] = srv.url
    argv_ = fast_storage.t2mlx_argv(f"hf://{REPO}", out, ("--q-bits", "4"))
    try:
        s, fetched, disk = remote.measured(
            srv, argv_, inputs=[src], out=out, env=env, watch=[out, home, tmp], log_path=os.path.join(work, "run.log")
        )
    finally:
        srv.stop()
    out_bytes = remote.du([out])
    out_shards, src_shards = shard_sizes(out), shard_sizes(src)
    res = {
        "layers": a.layers,
        "preset": a.preset,
        "spec": spec,
        "source": source,
        "source_shards": src_shards,
        "seconds": s.seconds,
        "cpu": s.cpu_seconds,
        "rss": s.max_rss_mib,
        "fetched": fetched,
        "disk": disk,
        "out": out_bytes,
        "out_shards": out_shards,
        "hf_home": remote.du([home]),
        "load": s.load1,
    }
    measure.remove(out)
    shutil.rmtree(work, ignore_errors=True)
    text = markdown(res, command(a))
    print(text)
    if results_path:
        report.put_section(results_path, "remote-70b", text)
    return 0


def command(a) -> str:
    cmd = "python bench/remote_70b.py"
    cmd += f" --layers {a.layers}" if a.layers != 10 else ""
    cmd += f" --preset {a.preset}" if a.preset != "70b" else ""
    return cmd


def markdown(r: dict, cmd: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    sp = r["spec"]
    gb = lambda n: f"{n / 1e9:.2f} GB"  # noqa: E731
    bound_out = r["out"] + max(r["out_shards"])
    bound_src = r["out"] + max(r["source_shards"])
    lines = [
        "## Remote: a Llama-3-70B-shaped repo of file holes, `hf://` → q4 over loopback",
        "",
        f"Generated by `{cmd}` on {when} ({os.cpu_count()} cores, load {r['load']:.1f} at start):"
        + (
            f" {r['layers']} of Llama-3-70B's 80 layers with its shapes"
            if r["preset"] == "70b"
            else f" preset {r['preset']} with {r['layers']} layers"
        )
        + f" (hidden {sp.hidden}, intermediate"
        f" {sp.intermediate}, {sp.heads}/{sp.kv_heads} heads, vocab {sp.vocab}), bf16, in"
        f" {len(r['source_shards'])} safetensors shards of at most {gb(max(r['source_shards']))}"
        f" ({gb(r['source'])}; data are file holes, read as zeros),"
        " served by tests/hub_server.py on 127.0.0.1 in the benchmark's process;"
        " `t2mlx stream hf://... --q-bits 4 --no-model`, one run. Fewer layers shorten the run; what is on disk"
        " at once is bounded per shard, and each layer is as large as in the full model.",
        "",
        "| time | CPU time | peak RSS | bytes fetched | fetched / source | output | disk high-water |"
        " output + one shard (output's / source's) | HF_HOME after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['seconds']:.1f} s | {r['cpu']:.1f} s | {r['rss']:.0f} MiB | {r['fetched']:,.0f} |"
        f" {r['fetched'] / r['source']:.4f} | {gb(r['out'])} in {len(r['out_shards'])} shard(s) |"
        f" **{gb(r['disk'])}** | {gb(bound_out)} / {gb(bound_src)} | {r['hf_home']:,.0f} bytes |",
        "",
        f"Disk high-water {'≤' if r['disk'] <= bound_out else '>'} output + one shard:"
        f" {r['disk'] / r['out']:.3f}x the output. Throughput {r['source'] / r['seconds'] / 1e9:.2f} GB/s of"
        " source.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
