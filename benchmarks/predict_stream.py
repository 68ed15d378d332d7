"""Memory and speed of streaming predict (issue 14): `recogen classify predict RUN FOLDER --out results.jsonl`
on a folder of N images, with the memory of the process (and its DataLoader workers) sampled as it goes.

    python benchmarks/predict_stream.py [--images 100000] [--compare 10000 30000] [--batch-size 64] [--workers W]
                                        [--devices 1] [--cache /tmp/recogen_bench_stream] [--json PATH]

- The images (32x32 grey PNGs: sklearn digits scaled up, with seeded noise so that no two files are the
  same) are written once into ``CACHE/images_N/`` in folders of 1,000, and reused by later runs; a
  smaller size is the first folders of it.
- The model is a tiny classify run (digits at 16 px, cnn-s, 2 epochs), trained once into ``CACHE/run``.
- The command runs in a subprocess; every ``--every`` seconds the benchmark reads, from /proc, the
  resident memory (VmRSS) of the main process and the proportional set size (Pss, from smaps_rollup:
  shared pages split between the processes that share them, so the sum is not counted twice) of the main
  process plus all its descendants (the DataLoader workers, the other ranks of ``--devices N``), and how
  many result lines the file holds (counted incrementally). psutil is not needed.
- Reported: memory when 1%, 10%, 50% and 100% of the images were written (and at 1k, 10k, 100k
  lines), the peak, and images/s (lines / seconds between the first and the last line; the
  start-up (imports, model loading, listing) is reported apart).
- ``--compare N [N...]`` also runs the in-memory path (`predict FOLDERS --json`, stdout to /dev/null)
  and the streaming path on the first N images, for their peak memory side by side (none: skip).

Timings are only valid on an otherwise idle machine; memory does not depend on that.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import code_state, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- setup
def make_images(root: Path, n: int) -> Path:
    """``root/images_N``: N 32x32 grey PNGs in folders of 1,000, written once (a marker says it is complete)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = root / f"images_{n}"
    if (folder / ".complete").is_file():
        return folder
    digits = load_digits().images  # (1797, 8, 8), 0..16
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(n):
        sub = folder / f"{i // 1000:05d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        base = np.kron(digits[i % len(digits)] * 15, np.ones((4, 4)))  # 32x32
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(sub / f"img{i:07d}.png")
        if (i + 1) % 20000 == 0:
            print(f"  wrote {i + 1} images ({time.perf_counter() - t0:.0f} s)", flush=True)
    (folder / ".complete").write_text(str(n))
    return folder


def make_run(root: Path) -> Path:
    run = root / "run"
    if not (run / "model.json").is_file():
        subprocess.run([sys.executable, "-m", "recogen", "classify", "train", "--data", "digits", "--image-size", "16",
                        "--model", "cnn-s", "--epochs", "2", "--out", str(run), "--no-progress", "--seed", "0"],
                       cwd=ROOT, check=True, capture_output=True)
    return run


# -------------------------------------------------------------------------------------- sampling
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def _field(path: str, name: str) -> int:
    """A ``Name:   123 kB`` field of a /proc file, in bytes (0 if the process is gone)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_memory(pid: int) -> tuple[int, int, int]:
    """``(main process RSS, Pss of the process and all its descendants, number of processes)``."""
    kids, todo, tree = _children(), [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += kids.get(p, [])
    pss = sum(_field(f"/proc/{p}/smaps_rollup", "Pss") for p in tree)
    return _field(f"/proc/{pid}/status", "VmRSS"), pss, len(tree)


def run_sampled(cmd: list[str], out: Path | None, every: float, stdout=subprocess.DEVNULL) -> dict:
    """Run ``cmd``, sampling its memory (and the lines of ``out``) every ``every`` seconds."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True)
    samples, lines, offset = [], 0, 0
    while True:
        done = p.poll() is not None
        if out is not None and out.is_file():
            with open(out, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            lines += chunk.count(b"\n")
            offset += len(chunk)
        if done:
            break
        rss, pss, nproc = tree_memory(p.pid)
        if rss:
            samples.append({"t": round(time.perf_counter() - t0, 2), "lines": lines, "rss_main_mb": round(rss / 2**20, 1),
                            "pss_tree_mb": round(pss / 2**20, 1), "processes": nproc})
        time.sleep(every)
    err = p.stderr.read()
    if p.returncode != 0:
        sys.exit(f"failed ({' '.join(map(str, cmd))}):\n{err[-3000:]}")
    return {"wall_s": round(time.perf_counter() - t0, 1), "lines": lines, "samples": samples}


def at_fraction(samples: list[dict], n: int, frac: float) -> dict | None:
    """The first sample taken once ``frac`` of the ``n`` lines were written."""
    return next((s for s in samples if s["lines"] >= frac * n), None)


def summary(res: dict, n: int) -> dict:
    s = res["samples"]
    writing = [x for x in s if x["lines"] > 0]
    first = writing[0]["t"] if writing else None
    last = next((x["t"] for x in s if x["lines"] >= n), s[-1]["t"] if s else None)
    rate = round((n - (writing[0]["lines"] if writing else 0)) / (last - first), 1) if writing and last > first else None
    marks = {f"{int(f * 100)}%": at_fraction(s, n, f) for f in (0.01, 0.1, 0.5, 1.0)}
    marks.update({f"{k // 1000}k lines": at_fraction(s, n, k / n) for k in (1000, 10000, 100000) if k <= n})
    # While images are being written (the workers alive), apart from start-up and the interpreter's exit
    # (a short spike after the last line, seen at every size and not growing with it).
    during = [x for x in s if 0 < x["lines"] < n]
    return {"images": n, "wall_s": res["wall_s"], "startup_s": first, "images_per_s": rate,
            "peak_rss_main_mb": max((x["rss_main_mb"] for x in s), default=None),
            "peak_pss_tree_mb": max((x["pss_tree_mb"] for x in s), default=None),
            "streaming_rss_main_mb": [min((x["rss_main_mb"] for x in during), default=None),
                                      max((x["rss_main_mb"] for x in during), default=None)],
            "streaming_pss_tree_mb": [min((x["pss_tree_mb"] for x in during), default=None),
                                      max((x["pss_tree_mb"] for x in during), default=None)],
            "at": {k: v and {kk: v[kk] for kk in ("t", "lines", "rss_main_mb", "pss_tree_mb", "processes")}
                   for k, v in marks.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--compare", type=int, nargs="*", default=[10_000, 30_000],
                    help="also the in-memory path (and streaming) on the first this many images (none: skip)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, help="DataLoader workers (default: the CLI's)")
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--every", type=float, default=0.5, help="seconds between memory samples")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/recogen_bench_stream"))
    ap.add_argument("--json", type=Path, default=ROOT / "runs" / "bench" / "predict_stream.json")
    args = ap.parse_args()

    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"images and run in {args.cache}", flush=True)
    run = make_run(args.cache)
    n_all = max([args.images, *args.compare])
    folder = make_images(args.cache, n_all)

    def inputs(n: int) -> list[str]:
        """The first n images: whole folders of 1,000 (the folder itself for all of them)."""
        if n == n_all:
            return [str(folder)]
        if n % 1000:
            sys.exit(f"--images and --compare sizes below {n_all} must be multiples of 1000")
        return [str(folder / f"{i:05d}") for i in range(n // 1000)]

    def stream(n: int) -> dict:
        out = args.cache / f"results_{n}.jsonl"
        out.unlink(missing_ok=True)  # (--overwrite would too, but the line count starts now)
        cmd = [sys.executable, "-m", "recogen", "classify", "predict", str(run), *inputs(n), "--out", str(out),
               "--batch-size", str(args.batch_size), "--devices", str(args.devices)]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        print(f"streaming {n} images ...", flush=True)
        res = run_sampled(cmd, out, args.every)
        assert res["lines"] == n, (res["lines"], n)
        return {**summary(res, n), "samples": res["samples"]}

    def in_memory(n: int) -> dict:
        print(f"in-memory path on {n} images ...", flush=True)
        res = run_sampled([sys.executable, "-m", "recogen", "classify", "predict", str(run), *inputs(n), "--json"],
                          None, args.every)
        s = res["samples"]
        return {"images": n, "wall_s": res["wall_s"], "peak_rss_main_mb": max((x["rss_main_mb"] for x in s), default=None),
                "peak_pss_tree_mb": max((x["pss_tree_mb"] for x in s), default=None), "samples": s}

    load_start = os.getloadavg()[0]
    results = {"streaming": stream(args.images)}
    for n in args.compare:
        results[f"streaming_{n}"] = stream(n) if n != args.images else results["streaming"]
        results[f"in_memory_{n}"] = in_memory(n)
    report(results)
    summary_md, table = tabulate(results, args.images)
    write_result(args.json, "predict_stream", code=code_state(), batch_size=args.batch_size, workers=args.workers,
                 devices=args.devices, summary=summary_md, table=table,
                 load_average={"start": load_start, "end": os.getloadavg()[0], "cores": os.cpu_count()},
                 results=thin(results))


def thin(results: dict, most: int = 150) -> dict:
    """The results with at most ``most`` memory samples per run kept (evenly spaced, the last included)."""
    out = {}
    for name, r in results.items():
        s = r["samples"]
        step = max(1, -(-len(s) // most))
        out[name] = {**r, "samples": s[::step] + ([s[-1]] if s and (len(s) - 1) % step else [])}
    return out


def tabulate(results: dict, n: int) -> tuple[str, dict]:
    """The markdown summary and the table (columns, rows) that benchmarks/report.py puts in BENCHMARKS.md."""
    def mb(v):
        return "-" if v is None else f"{v:.0f}"

    rows = []
    for name, r in results.items():
        at = r.get("at", {})
        during = r.get("streaming_rss_main_mb", [None, None])
        rows.append([name.replace("_", " "), r["images"], *(mb(at[k]["rss_main_mb"]) if at.get(k) else "-"
                                                               for k in ("1%", "10%", "50%", "100%")),
                     mb(during[1]) if during[1] is not None else mb(r["peak_rss_main_mb"]), mb(r["peak_rss_main_mb"]),
                     r.get("images_per_s") or "-", r["wall_s"]])
    table = {"columns": ["run", "images", "RSS at 1% (MB)", "at 10%", "at 50%", "at 100%", "peak while writing",
                         "peak incl. start/exit", "images/s", "wall s"], "rows": rows}
    main = results["streaming"]
    lo, hi = main["streaming_rss_main_mb"]
    text = [f"Streaming {n:,} images (`classify predict RUN FOLDER --out`, 32x32 PNGs, a tiny cnn-s at 16 px, batch "
            f"64, default workers): the main process's RSS stays between {lo:.0f} and {hi:.0f} MB while writing "
            f"(from the first to the last line); the processes' summed Pss (workers included) between "
            f"{main['streaming_pss_tree_mb'][0]:.0f} and {main['streaming_pss_tree_mb'][1]:.0f} MB. "
            "Most of it is torch and Lightning themselves. The peak including start-up and exit is a short spike "
            "as the interpreter exits, after the last line, of a size that does not follow the number of images."]
    mem = sorted((r["images"], r["peak_rss_main_mb"]) for k, r in results.items() if k.startswith("in_memory"))
    if len(mem) >= 2:
        (n0, m0), (n1, m1) = mem[0], mem[-1]
        per = (m1 - m0) / (n1 - n0) * 1024
        text.append(f"The in-memory path (`predict FOLDER --json`) peaks at {m0:.0f} MB on {n0:,} images and {m1:.0f} "
                    f"MB on {n1:,}: about {per:.1f} KB more per image (every result held, then one JSON text), "
                    f"so about {m0 + (n - n0) * per / 1024:.0f} MB on {n:,} by that slope.")
    text.append("images/s is measured between the first and the last line, and only means something on an idle "
                "machine: `load_average` (or `load_note`) in the raw file says how busy this one was.")
    return " ".join(text), table


def report(results: dict) -> None:
    for name, r in results.items():
        print(f"\n{name}: {r['images']} images, {r['wall_s']} s wall, peak RSS {r['peak_rss_main_mb']} MB (main), "
              f"peak Pss {r['peak_pss_tree_mb']} MB (all processes)"
              + (f", {r['images_per_s']} images/s after {r['startup_s']} s start-up" if r.get("images_per_s") else ""))
        if "streaming_rss_main_mb" in r:
            print(f"  while writing: RSS main {r['streaming_rss_main_mb'][0]}-{r['streaming_rss_main_mb'][1]} MB, "
                  f"Pss all {r['streaming_pss_tree_mb'][0]}-{r['streaming_pss_tree_mb'][1]} MB")
        for k, v in r.get("at", {}).items():
            if v:
                print(f"  at {k:>11}: {v['lines']:>7} lines, t {v['t']:>7} s, RSS main {v['rss_main_mb']:>7} MB, "
                      f"Pss all {v['pss_tree_mb']:>7} MB ({v['processes']} processes)")


if __name__ == "__main__":
    main()
