"""The defaults against the reference tutorial's Keras CNN: whole-command wall time and test accuracy.

    python benchmarks/classify_defaults.py [--runs 3] [--keras-python /tmp/kerasvenv/bin/python]

Times `recogen classify train --data digits --image-size 28 --out DIR` (no other option) as a
subprocess, start to exit, and, when a Python with TensorFlow/Keras is given, the reference Keras CNN
(`keras_reference.py`: Conv32-Pool-Conv64-Pool-Conv128-Pool-Dense128, Adam, 10 epochs) on the same
split, interleaved run by run. Offline, the real handwritten digits at hand are sklearn's (1,797
images, 1,259 for training), not MNIST.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def time_recogen(out: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "recogen", "classify", "train", "--data", "digits", "--image-size", "28",
                    "--out", str(out), "--no-progress"], check=True, cwd=HERE.parent, capture_output=True)
    wall = time.perf_counter() - t0
    return wall, json.loads((out / "metrics.json").read_text())["accuracy"]


def time_keras(python: str) -> tuple[float, float]:
    t0 = time.perf_counter()
    r = subprocess.run([python, str(HERE / "keras_reference.py"), "--image-size", "28"], check=True,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    return wall, json.loads(r.stdout.strip().splitlines()[-1])["test_accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keras-python", help="a Python with tensorflow/keras for the reference run")
    a = ap.parse_args()
    ours, ref = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.runs):
            ours.append(time_recogen(Path(tmp) / f"run{i}"))
            print(f"run {i + 1}: recogen {ours[-1][0]:.1f} s, test accuracy {ours[-1][1]:.4f}", flush=True)
            if a.keras_python:
                ref.append(time_keras(a.keras_python))
                print(f"run {i + 1}: keras   {ref[-1][0]:.1f} s, test accuracy {ref[-1][1]:.4f}", flush=True)
    med = lambda xs, k: statistics.median(x[k] for x in xs)  # noqa: E731
    print(f"recogen defaults: median {med(ours, 0):.1f} s, accuracy {med(ours, 1):.4f} (min {min(x[1] for x in ours):.4f})")
    if ref:
        print(f"keras reference:  median {med(ref, 0):.1f} s, accuracy {med(ref, 1):.4f}")
        print(f"ratio time recogen/keras = {med(ours, 0) / med(ref, 0):.2f}")


if __name__ == "__main__":
    main()
