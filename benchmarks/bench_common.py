"""What the benchmark scripts share: the machine's name and a timed subprocess (wall and CPU seconds)."""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def run_timed(cmd: list[str], cwd: Path, what: str | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd`` to its exit: ``(process, wall seconds, its user+system CPU seconds)``; a failure exits
    the benchmark with the command's last stderr lines."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit(f"{what or 'command'} failed ({' '.join(map(str, cmd))}):\n{p.stderr[-3000:]}")
    return p, wall, (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)


def code_state() -> str:
    """The commit of the checkout the benchmarks run from, and whether recogen/ has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "recogen"], cwd=root, capture_output=True, text=True).stdout.split("\n")
        n = sum(1 for line in dirty if line.strip())
        return f"{head}" + (f" + uncommitted changes in {n} file(s) of recogen/" if n else "")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"


def write_result(path: Path, benchmark: str, **fields) -> None:
    """Write a benchmark's numbers as JSON, with the date, the machine and the Python version."""
    result = {"benchmark": benchmark, "date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": f"{cpu_name()}, {os.cpu_count()} cores", "python": sys.version.split()[0], **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
