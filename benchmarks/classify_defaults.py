"""The defaults against the reference tutorial's Keras CNN: whole-command wall time and test accuracy.

    python benchmarks/classify_defaults.py [--data mnist-5k] [--seeds 0 1 2] \
        [--keras-python /tmp/kerasvenv/bin/python] [--json OUT.json] [--extra-args "--epochs 8"]

Issue 10's target (a): `recogen classify train --data mnist-5k --out DIR` with no other option reaches
>= 99.0 % test accuracy, and its whole process takes at most 1.0x the whole process of the tutorial's
Keras CNN (`keras_reference.py`: Conv32-Pool-Conv64-Pool-Conv128-Pool-Dense128, Adam, batch 32, 10
epochs) on the same split, both measured in the same run.

Per seed S (interleaved; the order of the two alternates from seed to seed so that a drift of the
machine's speed does not always favour one of them):

* recogen: ``python -m recogen classify train --data D --seed S --out DIR --no-progress`` [+ --extra-args],
  timed as a subprocess from start to exit; test accuracy read from DIR/metrics.json.
* Keras: ``KERAS_PYTHON keras_reference.py --npz SPLIT_S.npz --seed S``, timed the same way, where
  SPLIT_S.npz holds recogen's own split of seed S (``create_dataset(D, DataOptions(seed=S))``), written
  by this process for every seed before anything is timed. For mnist-5k: 3,400 train / 600 val (seeded)
  / the fixed 1,000 test images.

Both are timed the same way, interpreter start-up and imports included. Printed: per-seed lines, the
medians, the ratio of the medians and the median of the per-seed ratios. ``--extra-args`` go to recogen
only (tuning runs); options that change the data (--image-size, --limit, --val-fraction) would make
the Keras split differ, so use ``--image-size`` of this script for the size instead. Timings are only
valid on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import bench_common

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def export_split(data: str, seed: int, image_size: int | None, path: Path) -> dict:
    """Write recogen's split of ``data`` for ``seed`` as an npz of uint8 (N, H, W[, C]) images and labels."""
    import numpy as np

    from recogen.data import DataOptions, create_dataset

    splits = create_dataset(data, DataOptions(seed=seed, image_size=image_size))
    arrays, sizes = {}, {}
    for name in ("train", "val", "test"):
        s = getattr(splits, name)
        if s is None:
            sys.exit(f"{data} has no {name} split")
        x = s.images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C), uint8
        arrays[f"x_{name}"] = x[..., 0] if x.shape[-1] == 1 else x
        arrays[f"y_{name}"] = s.labels.numpy()
        sizes[name] = len(s)
    np.savez(path, **arrays)
    return sizes


def run_timed(cmd: list[str], what: str) -> tuple[float, str]:
    p, wall, _ = bench_common.run_timed(cmd, ROOT, what)
    return wall, p.stdout


def time_recogen(data: str, seed: int, out: Path, image_size: int | None, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "recogen", "classify", "train", "--data", data, "--seed", str(seed),
           "--out", str(out), "--no-progress"]
    if image_size:
        cmd += ["--image-size", str(image_size)]
    wall, stdout = run_timed(cmd + extra, "recogen")
    m = json.loads((out / "metrics.json").read_text())
    auto = next((ln for ln in stdout.splitlines() if ln.startswith("auto:")), "")
    return {"wall_s": round(wall, 2), "test_accuracy": m["accuracy"], "split": m.get("split"),
            "num_images": m.get("num_images"), "auto": auto}


def time_keras(python: str, npz: Path, seed: int) -> dict:
    wall, stdout = run_timed([python, str(HERE / "keras_reference.py"), "--npz", str(npz), "--seed", str(seed)], "keras")
    r = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), "test_accuracy": r["test_accuracy"], "inner_wall_s": r["wall_s"], "tool": r["tool"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist-5k", help="data set (default mnist-5k)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    ap.add_argument("--image-size", type=int, help="passed to both recogen and the split export (default: the data's own)")
    ap.add_argument("--keras-python", help="a Python with tensorflow/keras for the reference (e.g. /tmp/kerasvenv/bin/python); "
                                           "without it only recogen runs")
    ap.add_argument("--extra-args", default="", help='extra recogen options, one string, e.g. "--epochs 8" (recogen only)')
    ap.add_argument("--json", type=Path, metavar="OUT", help="write every number to this JSON file")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="keep the run folders and npz files here (default: a temp folder)")
    a = ap.parse_args()
    extra = shlex.split(a.extra_args)

    with tempfile.TemporaryDirectory() as tmp:
        work = a.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sizes = {}
        if a.keras_python:  # every split written before anything is timed
            for s in a.seeds:
                sizes[s] = export_split(a.data, s, a.image_size, work / f"split_seed{s}.npz")
            print(f"{a.data} splits written: " + "; ".join(f"seed {s}: {v['train']}/{v['val']}/{v['test']}"
                                                           for s, v in sizes.items()), flush=True)
        rows = []
        for i, s in enumerate(a.seeds):
            row = {"seed": s}
            order = ("recogen", "keras") if i % 2 == 0 else ("keras", "recogen")
            for who in order:
                if who == "recogen":
                    r = row["recogen"] = time_recogen(a.data, s, work / f"recogen_seed{s}", a.image_size, extra)
                    if sizes and r["num_images"] not in (None, sizes[s]["test"]):
                        print(f"warning: recogen evaluated {r['num_images']} images, the Keras test split has {sizes[s]['test']}")
                elif a.keras_python:
                    r = row["keras"] = time_keras(a.keras_python, work / f"split_seed{s}.npz", s)
                else:
                    continue
                print(f"seed {s}: {who:7s} {r['wall_s']:6.1f} s, test accuracy {r['test_accuracy']:.4f}", flush=True)
            if "keras" in row:
                row["ratio_time"] = round(row["recogen"]["wall_s"] / row["keras"]["wall_s"], 3)
            rows.append(row)

    med = lambda who, k: statistics.median(r[who][k] for r in rows)  # noqa: E731
    summary = {"recogen": {"median_wall_s": med("recogen", "wall_s"), "median_test_accuracy": med("recogen", "test_accuracy"),
                           "min_test_accuracy": min(r["recogen"]["test_accuracy"] for r in rows)}}
    opts = " ".join(extra) or "defaults"
    print(f"\nrecogen ({opts}): median {summary['recogen']['median_wall_s']:.1f} s, test accuracy median "
          f"{summary['recogen']['median_test_accuracy']:.4f} (min {summary['recogen']['min_test_accuracy']:.4f})")
    if a.keras_python:
        summary["keras"] = {"median_wall_s": med("keras", "wall_s"), "median_test_accuracy": med("keras", "test_accuracy"),
                            "min_test_accuracy": min(r["keras"]["test_accuracy"] for r in rows)}
        summary["ratio_of_medians"] = round(summary["recogen"]["median_wall_s"] / summary["keras"]["median_wall_s"], 3)
        summary["median_of_ratios"] = statistics.median(r["ratio_time"] for r in rows)
        print(f"keras reference: median {summary['keras']['median_wall_s']:.1f} s, test accuracy median "
              f"{summary['keras']['median_test_accuracy']:.4f} (min {summary['keras']['min_test_accuracy']:.4f})")
        print(f"time recogen/keras: ratio of medians {summary['ratio_of_medians']:.2f}, median of per-seed ratios "
              f"{summary['median_of_ratios']:.2f} (per seed: {', '.join(str(r['ratio_time']) for r in rows)})")
        ok_acc = summary["recogen"]["median_test_accuracy"] >= 0.99
        ok_time = summary["ratio_of_medians"] <= 1.0
        print(f"target (a): accuracy >= 0.990 {'met' if ok_acc else 'NOT met'}; time <= 1.0x keras "
              f"{'met' if ok_time else 'NOT met'}")
    if a.json:
        bench_common.write_result(a.json, "classify_defaults", data=a.data, seeds=a.seeds, image_size=a.image_size,
                                  recogen_options=opts, split_sizes={str(k): v for k, v in sizes.items()},
                                  runs=rows, summary=summary)


if __name__ == "__main__":
    main()
