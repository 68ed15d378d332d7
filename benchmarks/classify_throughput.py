"""Training throughput of `recogen classify train` against a plain hand-written PyTorch loop.

The classify row of ``benchmarks/train_throughput.py`` (which has every task, and the protocol in its
docstring), with this script's own options kept: same model, data, batch size, optimiser (AdamW +
one-cycle), loss (label-smoothed cross-entropy), preprocessing, no augmentation, fp32, validation once
per epoch in both; interleaved rounds, median ratio. The last line reads ``ratio recogen/plain = X.XX``.

    python benchmarks/classify_throughput.py [--data digits --image-size 28 --model seed-cnn
                                              --batch-size 64 --epochs 8 --rounds 3]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_throughput  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--model", default="seed-cnn")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="recogen progress bar")
    a, rest = ap.parse_known_args()  # anything else (--threads, --plain-fused, --json) goes to train_throughput
    argv = ["--task", "classify", "--data", a.data, "--image-size", str(a.image_size), "--model", a.model,
            "--batch-size", str(a.batch_size), "--epochs", str(a.epochs), "--rounds", str(a.rounds),
            "--seed", str(a.seed), "--progress" if a.progress else "--no-progress", *rest]
    (result,) = train_throughput.main(argv)
    print(f"ratio recogen/plain = {result['ratio']:.2f}")


if __name__ == "__main__":
    main()
