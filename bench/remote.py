"""Remote conversion over loopback: `t2mlx stream hf://...` against `snapshot_download` + a local conversion.

    python bench/remote.py                              # preset 2.5g, q4, 3 rounds
    python bench/remote.py --runs 1 --data /elsewhere/bench/data

The preset's safetensors directory (make_checkpoint.py, 2.4 GiB for 2.5g) is served as the repo
``bench/<preset>`` by tests/hub_server.py, started in this process on 127.0.0.1. Per round, in alternating
order:

- ``remote``: ``t2mlx stream hf://bench/<preset> OUT --q-bits 4 --no-model``;
- ``download+local``: ``huggingface_hub.snapshot_download`` into a fresh ``HF_HOME`` (its own process), then
  ``t2mlx stream SNAPSHOT OUT --q-bits 4 --no-model``. The downloaded files stay in the page cache for the
  conversion, as they would right after a download.

Each process is measured by measure.run (source pages dropped before each contender starts, output fsynced
before the clock stops). Bytes sent are the server's data-byte counter; disk high-water is the largest
allocated size (``du``) of OUT + HF_HOME, sampled every 50 ms while the contender runs. Children get
``HF_ENDPOINT`` (the server), a fresh ``HF_HOME`` and ``HF_HUB_DISABLE_TELEMETRY=1``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import fast_storage  # noqa: E402
import measure  # noqa: E402
import report  # noqa: E402


def load_hub_server():
    """tests/hub_server.py by path: the tests' Hub stand-in, so bench and tests serve the same protocol."""
    spec = importlib.util.spec_from_file_location("hub_server", os.path.join(ROOT, "tests", "hub_server.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["hub_server"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def du(paths: list[str]) -> int:
    """Allocated bytes under ``paths`` (what ``du`` counts); files vanishing mid-walk are skipped."""
    total = 0
    for p in paths:
        for d, _, names in os.walk(p):
            for n in names:
                try:
                    total += os.lstat(os.path.join(d, n)).st_blocks * 512
                except OSError:
                    pass
    return total


class DiskHighWater:
    """Samples ``du`` of some directories every ``every`` seconds in a thread; ``peak`` is the largest."""

    def __init__(self, paths: list[str], every: float = 0.05):
        self.paths, self.every, self.peak = paths, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while True:
            self.peak = max(self.peak, du(self.paths))
            if self._stop.wait(self.every):
                break

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, du(self.paths))


def measured(srv, argv, *, inputs, out, env, watch, log_path):
    """One measure.run with the server's byte count and the disk high-water of ``watch``."""
    before = srv.fetched
    with DiskHighWater(watch) as hw:
        s = measure.run(argv, inputs=inputs, out=out, env=env, log_path=log_path)
    if s.rc != 0:
        raise SystemExit(f"error: {' '.join(argv[2:5])} failed ({s.error}); log: {log_path}")
    return s, srv.fetched - before, hw.peak


def fresh(path: str) -> str:
    measure.remove(path)
    os.makedirs(path)
    return path


def round_remote(srv, repo, work, env, q):
    home, out = fresh(os.path.join(work, "hf-home")), os.path.join(work, "out")
    argv = fast_storage.t2mlx_argv(f"hf://{repo}", out, q)
    env = dict(env, HF_HOME=home)
    src = srv.repo_dir(repo)
    s, sent, disk = measured(
        srv, argv, inputs=[src], out=out, env=env, watch=[out, home], log_path=os.path.join(work, "remote.log")
    )
    result = {"seconds": s.seconds, "rss_mib": s.max_rss_mib, "sent": sent, "disk": disk, "hf_home": du([home])}
    measure.remove(out)
    measure.remove(home)
    return result


def round_download(srv, repo, work, env, q):
    home, out = fresh(os.path.join(work, "hf-home")), os.path.join(work, "out")
    env = dict(env, HF_HOME=home)
    get = [sys.executable, "-c", f"from huggingface_hub import snapshot_download; snapshot_download({repo!r})"]
    src = srv.repo_dir(repo)
    log = os.path.join(work, "download.log")
    d, sent, disk_d = measured(srv, get, inputs=[src], out=home, env=env, watch=[home], log_path=log)
    snap = os.path.join(home, "hub", "models--" + repo.replace("/", "--"), "snapshots", srv.commit(repo))
    argv = fast_storage.t2mlx_argv(snap, out, q)
    c, sent_c, disk_c = measured(
        srv, argv, inputs=[], out=out, env=env, watch=[out, home], log_path=os.path.join(work, "local.log")
    )
    result = {
        "seconds": d.seconds + c.seconds,
        "download_s": d.seconds,
        "convert_s": c.seconds,
        "rss_mib": max(d.max_rss_mib, c.max_rss_mib),
        "download_rss_mib": d.max_rss_mib,
        "convert_rss_mib": c.max_rss_mib,
        "sent": sent + sent_c,
        "disk": max(disk_d, disk_c),
    }
    measure.remove(out)
    measure.remove(home)
    return result


def median_of(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="2.5g", help="make_checkpoint.py preset (default 2.5g)")
    ap.add_argument("--runs", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--data", default=os.path.join(HERE, "data"), help="checkpoint directory (default bench/data)")
    ap.add_argument("--q-bits", default="4", help="t2mlx --q-bits (default 4)")
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
    work = os.path.join(HERE, "_work", "remote")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "repos", "bench"))
    repo = f"bench/{a.preset}"
    os.symlink(src, os.path.join(work, "repos", repo))
    env = fast_storage.child_env(work)
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for k in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_ENABLE_HF_TRANSFER"):
        env.pop(k, None)
    q = ("--q-bits", a.q_bits)
    tiny = fast_storage.checkpoint("tiny", os.path.abspath(a.data))  # untimed: fills the bytecode cache
    warm = os.path.join(work, "warm")
    measure.run(fast_storage.t2mlx_argv(tiny, warm), inputs=[tiny], out=warm, env=env)
    measure.remove(warm)
    hub = load_hub_server()
    srv = hub.HubServer(os.path.join(work, "repos"), max_requests=10**9).start()
    env["HF_ENDPOINT"] = srv.url
    rounds: dict[str, list] = {"remote": [], "download+local": []}
    try:
        for r in range(a.runs):
            for c in ["remote", "download+local"] if r % 2 == 0 else ["download+local", "remote"]:
                fn = round_remote if c == "remote" else round_download
                res = fn(srv, repo, work, env, q)
                rounds[c].append(res)
                log(
                    f"  round {r + 1}: {c} {res['seconds']:.2f} s, {res['rss_mib']:.0f} MiB,"
                    f" sent {res['sent'] / 1e9:.3f} GB, disk {res['disk'] / 1e9:.3f} GB"
                )
    finally:
        srv.stop()
    source = measure.tree_bytes(src)
    ratios = [x["seconds"] / y["seconds"] for x, y in zip(rounds["remote"], rounds["download+local"], strict=True)]
    results = {
        "preset": a.preset,
        "source_bytes": source,
        "runs": a.runs,
        "cores": os.cpu_count(),
        "remote": median_of(rounds["remote"]),
        "download": median_of(rounds["download+local"]),
        "ratios": ratios,
        "ratio": statistics.median(ratios),
        "rounds": rounds,
    }
    text = markdown(results, command(a))
    print(text)
    if results_path:
        report.put_section(results_path, "remote", text)
    return 0


def command(a) -> str:
    cmd = "python bench/remote.py"
    cmd += f" --preset {a.preset}" if a.preset != "2.5g" else ""
    cmd += f" --runs {a.runs}" if a.runs != 3 else ""
    cmd += f" --q-bits {a.q_bits}" if a.q_bits != "4" else ""
    return cmd


def markdown(res: dict, cmd: str) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    src = res["source_bytes"]
    r, d = res["remote"], res["download"]
    lines = [
        "## Remote: `hf://` over loopback vs `snapshot_download` + local conversion",
        "",
        f"Generated by `{cmd}` on {when} ({res['cores']} cores): preset {res['preset']}"
        f" ({src / 1e9:.2f} GB of safetensors) served by tests/hub_server.py on 127.0.0.1 in the benchmark's",
        "process; `t2mlx stream --q-bits 4 --no-model`. Medians over "
        f"{res['runs']} round(s), alternating order; time ratio is the median of per-round ratios.",
        "",
        "| contender | time | peak RSS | bytes sent | sent / source | disk high-water |",
        "|---|---:|---:|---:|---:|---:|",
        f"| `t2mlx stream hf://...` | {r['seconds']:.2f} s | {r['rss_mib']:.0f} MiB | {r['sent']:,.0f} |"
        f" **{r['sent'] / src:.4f}** | {r['disk'] / 1e9:.3f} GB |",
        f"| `snapshot_download` + `t2mlx stream LOCAL` | {d['seconds']:.2f} s"
        f" ({d['download_s']:.2f} + {d['convert_s']:.2f}) | {d['rss_mib']:.0f} MiB"
        f" ({d['download_rss_mib']:.0f} / {d['convert_rss_mib']:.0f}) | {d['sent']:,.0f} | {d['sent'] / src:.4f} |"
        f" {d['disk'] / 1e9:.3f} GB |",
        "",
        f"Remote / download+local time: **{res['ratio']:.2f}** (target ≤ 0.8; per round:"
        f" {', '.join(f'{x:.2f}' for x in res['ratios'])}). HF_HOME after the remote run: {r['hf_home']:,.0f} bytes.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
