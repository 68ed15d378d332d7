"""Does generated data help a classifier trained on few real images? ``classify train --synthetic RUN:N``.

    python benchmarks/synthetic_data.py [--out DIR] [--limit 100] [--per-class 50,200] [--models dcgan,ddpm]

* Real data: the seeded digits splits at 28 px; the classifier sees only ``--limit`` training images
  (10 per class by default); it is always tested on the same 269 real test digits.
* Generators: class-conditional ``recogen generate train --model M --conditional --limit L`` on exactly
  those training images (same seed, same split), with their defaults otherwise. They see no other real
  image, so any gain comes from the generator, not from extra real data.
* Classifiers: ``recogen classify train --data digits --image-size 28 --limit L`` with defaults, without
  and with ``--synthetic GEN:N`` for each N. Each classifier's test accuracy (metrics.json) is reported.

One run per row (seed 0): with 269 test images one accuracy has a binomial standard error of about
1-2 points, so read differences under ~3 points as noise. ``result.json`` in ``--out`` holds everything.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def recogen(*args: object) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "recogen", *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"recogen {' '.join(map(str, args))} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def accuracy(run: Path) -> float:
    return float(json.loads((run / "metrics.json").read_text())["accuracy"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_synthetic"))
    ap.add_argument("--limit", type=int, default=100, help="real training images (default 100)")
    ap.add_argument("--per-class", default="50,200", help="synthetic images per class to try (default 50,200)")
    ap.add_argument("--models", default="dcgan,ddpm", help="conditional generators to try (default dcgan,ddpm)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    common = ("--data", "digits", "--image-size", 28, "--limit", args.limit, "--no-progress")
    rows = []

    base = args.out / "real_only"
    if not (base / "metrics.json").is_file():
        recogen("classify", "train", *common, "--out", base)
    rows.append({"generator": "none", "per_class": 0, "accuracy": accuracy(base)})
    print(f"real only ({args.limit} images): test accuracy {rows[-1]['accuracy']:.4f}", flush=True)

    for model in [m for m in args.models.split(",") if m]:
        gen = args.out / f"gen_{model}"
        gen_s = None
        if not (gen / "model.json").is_file():
            gen_s = recogen("generate", "train", "--model", model, "--conditional", *common, "--out", gen)
        for n in [int(k) for k in args.per_class.split(",") if k]:
            run = args.out / f"clf_{model}_{n}"
            if not (run / "metrics.json").is_file():
                recogen("classify", "train", *common, "--synthetic", f"{gen}:{n}", "--out", run)
            rows.append({"generator": model, "generator_train_s": gen_s, "per_class": n, "accuracy": accuracy(run)})
            print(f"+ {n}/class from conditional {model}: test accuracy {rows[-1]['accuracy']:.4f}", flush=True)

    (args.out / "result.json").write_text(json.dumps({"limit": args.limit, "rows": rows}, indent=2))
    print(f"\n| real training images | synthetic images per class | generator | test accuracy (269 real digits) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {args.limit} | {r['per_class']} | {r['generator']} | {r['accuracy']:.3f} |")


if __name__ == "__main__":
    main()
