"""FID of vae, dcgan and ddpm on `digits`: with their defaults, and at equal CPU training time.

    python benchmarks/generate_quality.py [--out DIR] [--equal-s SECONDS] [--n 1000] [--only vae,dcgan,ddpm]

The targets of issue 4: with defaults and at most 10 minutes of CPU training on digits (28 px), judged by
FID in the feature space of a recogen digit classifier against the real-vs-real floor, the best family
under 1.5x the floor, the VAE under 5x, the DDPM under 3x, and 1000 samples in under 60 s.

* Features: ``recogen classify train --data digits --image-size 28`` (defaults), then
  ``--features classifier:RUN`` (its penultimate layer).
* Part A, defaults: ``recogen generate train --model M --data digits --out DIR`` with no other option, timed
  start to exit as a subprocess; then ``recogen generate eval DIR --features classifier:CLF --n N``.
* Part B, equal time: every family trained for the same wall time ``--equal-s`` (default: the DCGAN
  default's wall time, measured in part A). The epochs that fit are computed from each family's part-A
  seconds per epoch; a family whose default already takes about that long reuses its part-A run.
* Reported per run: the command's wall seconds, FID and its floor (two disjoint real halves), the
  ratio ``fid_matched / fid_floor`` (the FID of fake halves vs the real halves at the floor's sample
  counts, so the ratio is free of FID's sample-count bias; ~1 is a perfect generator), KID, precision /
  recall, and sampling images/s (N samples, the model's default sampler).

Timings are only valid on an otherwise idle machine. ``result_equalNs.json`` in ``--out`` holds everything and
the script prints the markdown table for BENCHMARKS.md. Finished runs in ``--out`` are reused, so a second
``--equal-s`` only trains what it needs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

FAMILIES = ("vae", "dcgan", "ddpm")


def recogen(*args: object) -> tuple[float, str]:
    """Run ``recogen ARGS`` as a user would; return (wall seconds, stdout). Fails loudly."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "recogen", *map(str, args)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"recogen {' '.join(map(str, args))} failed:\n{r.stderr[-3000:]}")
    return wall, r.stdout


def train_and_eval(model: str, out: Path, clf: Path, n: int, extra: tuple = ()) -> dict:
    if (out / "bench.json").is_file():  # finished earlier (rerun with a fresh --out to measure again)
        return json.loads((out / "bench.json").read_text())
    wall, stdout = recogen("generate", "train", "--model", model, "--data", "digits", "--out", out, "--no-progress", *extra)
    cfg = (out / "config.yaml").read_text()
    epochs = int(next(line.split(":")[1] for line in cfg.splitlines() if line.startswith("epochs:")))
    _, js = recogen("generate", "eval", out, "--features", f"classifier:{clf}", "--n", n, "--json")
    m = json.loads(js)
    res = {"model": model, "options": " ".join(map(str, extra)) or "defaults", "wall_s": round(wall, 1),
           "epochs": epochs, "s_per_epoch": wall / epochs, **{k: m[k] for k in (
               "fid", "fid_floor", "fid_matched", "fid_ratio", "kid_mean", "kid_floor", "precision", "recall",
               "n_fake", "n_real", "features", "sample_seconds")},
           "samples_per_s": round(m["n_fake"] / m["sample_seconds"], 1), "auto": next((ln for ln in stdout.splitlines() if ln.startswith("auto:")), "")}
    (out / "bench.json").write_text(json.dumps(res, indent=2))
    print(f"{model} {res['options']}: {wall:.0f} s, {epochs} epochs, FID {m['fid']:.2f} (floor {m['fid_floor']:.2f}), "
          f"ratio {m['fid_ratio']:.2f}, {res['samples_per_s']} samples/s", flush=True)
    return res


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def table(rows: list[dict]) -> str:
    lines = ["| model | training | wall (s) | epochs | FID | floor | ratio (matched/floor) | KID | precision | recall | samples/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['options']} | {r['wall_s']:.0f} | {r['epochs']} | {r['fid']:.2f} | "
                     f"{r['fid_floor']:.2f} | **{r['fid_ratio']:.2f}x** | {r['kid_mean']:.3f} | {r['precision']:.2f} | "
                     f"{r['recall']:.2f} | {r['samples_per_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_generate"))
    ap.add_argument("--equal-s", type=float, help="training wall seconds of part B (default: the dcgan default's)")
    ap.add_argument("--n", type=int, default=1000, help="samples per FID (default 1000)")
    ap.add_argument("--only", default=",".join(FAMILIES), help="comma-separated families (default all)")
    args = ap.parse_args()
    families = [f for f in args.only.split(",") if f]
    args.out.mkdir(parents=True, exist_ok=True)
    clf = args.out / "classifier"
    if not (clf / "model.json").is_file():
        recogen("classify", "train", "--data", "digits", "--image-size", 28, "--out", clf, "--no-progress")

    defaults = {m: train_and_eval(m, args.out / f"{m}_defaults", clf, args.n) for m in families}
    budget = args.equal_s or (defaults["dcgan"]["wall_s"] if "dcgan" in defaults else 200.0)
    equal = {}
    for m, d in defaults.items():
        # Fixed costs (start-up, data, final sample grid) are about 10 s; the rest scales with epochs.
        epochs = max(1, math.floor((budget - 10) / ((d["wall_s"] - 10) / d["epochs"])))
        if abs(epochs - d["epochs"]) <= max(1, 0.05 * d["epochs"]):
            equal[m] = d  # its default already takes the budget
        else:
            equal[m] = train_and_eval(m, args.out / f"{m}_equal{budget:.0f}s", clf, args.n, ("--epochs", epochs))

    result = {"machine": f"{cpu_name()}, {os.cpu_count()} cores", "n": args.n, "equal_s": budget,
              "defaults": defaults, "equal_time": equal}
    (args.out / f"result_equal{budget:.0f}s.json").write_text(json.dumps(result, indent=2))
    print(f"\n{result['machine']}; FID in classifier features ({clf}), {args.n} samples; one run each\n")
    print("Defaults:\n" + table(list(defaults.values())))
    print(f"\nEqual training time (~{budget:.0f} s each):\n" + table(list(equal.values())))


if __name__ == "__main__":
    main()
