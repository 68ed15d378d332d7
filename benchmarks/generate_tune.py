"""Score trained generator runs for CHOOSING defaults: against training images, never the test split.

    python benchmarks/generate_tune.py RUN [RUN...] [--seed 0] [--opts "steps=15,sampler=dpm++" ...]

`generate_judge.py` reports the defaults once, against the fixed 1,000 test digits. Choosing those
defaults (a beta, a sampler, a guidance scale) against the same test digits would tune on the test
split (issue 10). This script scores in the same judge's features (judge-v1 of the seed, from the
judge cache of generate_judge.py) but against a *training-image reference*: 1,000 images of train_S
drawn (seed 100 + S) from those outside generate_judge's floor set F_S, with F_S vs that reference as
the floor. The generators trained on these images, so a memorising generator would look good here;
for the small models compared it ranks candidates, which is all it is used for.

Each RUN is sampled with its saved sampler options and then with each ``--opts`` (comma-separated
key=value pairs passed to ``Generator.sample``, e.g. ``steps=10,guidance=1.0,sampler=dpm++``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import generate_judge as gj

ROOT = Path(__file__).resolve().parent.parent


def parse_opts(spec: str) -> dict:
    out: dict = {}
    for kv in filter(None, spec.split(",")):
        k, _, v = kv.partition("=")
        if not v:
            sys.exit(f"--opts {spec!r}: give key=value pairs, e.g. steps=15,sampler=dpm++")
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="generate run folders (trained on mnist-5k with --seed SEED)")
    ap.add_argument("--seed", type=int, default=0, help="the runs' --seed (picks the judge and the splits)")
    ap.add_argument("--opts", action="append", default=[], help="extra sampler options to score, e.g. steps=10,sampler=dpm++")
    ap.add_argument("--judges", type=Path, default=ROOT / "runs" / "bench_generate_judge" / "judges",
                    help="generate_judge.py's judge cache (trained there if missing)")
    a = ap.parse_args()

    import numpy as np

    from recogen.data import DataOptions, create_dataset
    from recogen.tasks.generate import load

    s = a.seed
    splits = create_dataset(gj.DATA, DataOptions(seed=s))
    judge, _ = gj.get_judge(splits, s, gj.JUDGE_RECIPE["epochs"], a.judges)
    ex = gj.judge_extractor(judge, f"judge-v1 seed {s}")
    floor_idx = np.sort(np.random.default_rng(s).choice(len(splits.train), gj.N, replace=False))  # generate_judge's F_S
    rest = np.setdiff1d(np.arange(len(splits.train)), floor_idx)
    ref_idx = np.sort(np.random.default_rng(100 + s).choice(rest, gj.N, replace=False))
    scorer = gj.Scorer(ex, splits.train.images[ref_idx])
    floor = scorer.score(splits.train.images[floor_idx])["fid"]
    print(f"seed {s}: training-image reference ({gj.N} train_S images outside F_S); floor FID {floor:.4f}")
    for run in a.runs:
        gen = load(run)
        for opts in [{}] + [parse_opts(o) for o in a.opts]:
            t0 = time.perf_counter()
            imgs = gen.sample(gj.N, seed=s, **opts)
            dt = time.perf_counter() - t0
            r = scorer.score(imgs)
            label = ",".join(f"{k}={v}" for k, v in opts.items()) or "saved options"
            print(f"{run.name} [{label}]: {r['fid'] / floor:.2f}x the floor; precision {r['precision']:.2f} "
                  f"recall {r['recall']:.2f}; {gj.N} samples in {dt:.1f} s", flush=True)


if __name__ == "__main__":
    main()
