"""Timing one contender honestly: cold input, output on disk, child's own peak RSS.

Before a run the previous output is removed and flushed, and the input
files' pages are dropped from the page cache with posix_fadvise(DONTNEED)
(the files are clean, so the kernel does drop them). The clock covers the
child process from fork to exit *and* an fsync of every file it wrote: a
tool that leaves gigabytes dirty in the page cache has not finished
writing them. Peak RSS is the contender's ``ru_maxrss`` as GNU time
reports it from ``wait4`` (that process only; it counts file pages a tool
maps and touches, which is how mmap-based readers show up).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import metadata


@dataclass
class Sample:
    seconds: float
    max_rss_mib: float
    cpu_seconds: float  # user + system time of the child
    rc: int
    out_bytes: int
    load1: float  # 1-minute load average when the run started (other work on the box)
    error: str = ""


def files_under(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    out = []
    for d, _, names in os.walk(path):
        out += [os.path.join(d, n) for n in names]
    return sorted(out)


def drop_cache(paths: list[str]) -> None:
    for p in paths:
        for f in files_under(p):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def fsync_tree(path: str) -> None:
    """What ``sync`` would do for these files, without waiting on other processes' dirty data."""
    if not os.path.exists(path):
        return
    for f in files_under(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for d, _, _ in os.walk(path):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove(path: str) -> None:
    """Delete an earlier output and let the filesystem settle, outside any timed region."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)
    os.sync()


def tree_bytes(path: str) -> int:
    return sum(os.path.getsize(f) for f in files_under(path)) if os.path.exists(path) else 0


TIME = "/usr/bin/time"


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass


def run(
    argv: list[str],
    *,
    inputs: list[str],
    out: str | None,
    env: dict | None = None,
    timeout: float = 3600,
    log_path: str | None = None,
) -> Sample:
    """Run ``argv`` once, cold, and measure it. ``out`` is removed first and fsynced after.

    A child forked from this (large) Python process starts with our resident
    pages, and Linux carries that high-water mark through exec into
    ``ru_maxrss``. So the contender is started by GNU time, a 2 MiB process,
    and we read the peak RSS time reports for its own child.
    """
    if out:
        remove(out)
    drop_cache(inputs)
    load1 = os.getloadavg()[0]
    fd, stats = tempfile.mkstemp(prefix="bench-rusage-")
    os.close(fd)
    wrapped = [TIME, "-f", "%M %U %S", "-o", stats] + argv if os.path.exists(TIME) else argv
    err = open(log_path or os.devnull, "wb")
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            wrapped, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True
        )  # a group we can kill whole on timeout
        timer = threading.Timer(timeout, _kill_group, (proc,))
        timer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if out and proc.returncode == 0:
            fsync_tree(out)
        seconds = time.perf_counter() - t0
    finally:
        err.close()
    rss_kib, cpu = ru.ru_maxrss, ru.ru_utime + ru.ru_stime
    if wrapped is not argv:
        try:
            with open(stats) as f:
                kib, user, system = f.read().split("\n")[-2].split()
            rss_kib, cpu = int(kib), float(user) + float(system)
        except (OSError, ValueError, IndexError):
            rss_kib, cpu = 0, 0.0
    os.unlink(stats)
    error = ""
    if proc.returncode != 0:
        error = f"exit {proc.returncode}"
        if log_path and os.path.exists(log_path):
            with open(log_path, errors="replace") as f:
                lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("Command ")]
            if lines:
                error += ": " + lines[-1][:200]
    return Sample(seconds, rss_kib / 1024, cpu, proc.returncode, tree_bytes(out) if out else 0, load1, error)


def _first_line(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def _mount_of(path: str) -> tuple[str, str, str]:
    """(device, mount point, filesystem type) holding ``path``, from /proc/mounts."""
    path = os.path.realpath(path)
    best = ("?", "/", "?")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fs = line.split()[:3]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[1]):
                    best = (dev, mnt, fs)
    except OSError:
        pass
    return best


def machine_info(data_dir: str, root: str) -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        cpu = platform.processor() or "?"
    ram = 0
    try:
        with open("/proc/meminfo") as f:
            ram = int(next(ln.split()[1] for ln in f if ln.startswith("MemTotal"))) * 1024
    except (OSError, StopIteration):
        pass
    dev, mnt, fs = _mount_of(data_dir)
    usage = shutil.disk_usage(data_dir)
    versions = {}
    for pkg in ("torch2mlx", "numpy", "safetensors", "mlx", "mlx-lm", "torch", "transformers"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    commit = _first_line(["git", "-C", root, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(ram / 2**30, 1),
        "disk": f"{dev} ({fs}, mounted on {mnt}, {usage.total / 1e9:.0f} GB, {usage.free / 1e9:.0f} GB free)",
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "versions": versions,
        "cp": _first_line(["cp", "--version"]),
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
    }
