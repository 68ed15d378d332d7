"""DDP scaling: `recogen classify train` in 1 process against 2 processes (Lightning DDP) on one machine.

Both runs train the same model on the same data with the same global batch (``--batch-size`` is global:
each of the 2 processes takes half of every batch), fp32, no augmentation, validation every epoch. On a
CPU the processes share the machine's cores (one process uses all of them through its threads; two use
half each), so the figure says what DDP costs or gains on this machine, not what a second GPU gains.

images/s = training images per epoch / the epoch's wall time from the run's history.json (``time_s``),
median over epochs 2..E (the first is warm-up). The two settings alternate for several rounds; the
reported ratio is the median of the per-round ratios 2-process/1-process.

    python benchmarks/ddp_scaling.py [--data mnist-5k --model cnn-s --image-size 28 --batch-size 128
                                      --epochs 4 --rounds 3 --json benchmarks/results/ddp_scaling.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def one_run(a, devices: int, out: Path) -> tuple[float, int]:
    """Train once with ``devices`` processes; returns (median training images/s over epochs 2.., train images)."""
    cmd = [sys.executable, "-m", "recogen", "classify", "train", "--data", a.data, "--model", a.model,
           "--image-size", str(a.image_size), "--batch-size", str(a.batch_size), "--epochs", str(a.epochs),
           "--augment", "none", "--precision", "32-true", "--accelerator", "cpu", "--no-progress",
           "--seed", "0", "--devices", str(devices), "--out", str(out)]
    if devices > 1:
        cmd += ["--strategy", "ddp"]
    if a.limit:
        cmd += ["--limit", str(a.limit)]
    bench_common.run_timed(cmd, ROOT, f"{devices}-process run")
    hist = json.loads((out / "history.json").read_text())
    n = json.loads((out / "splits.json").read_text())["splits"]["train"]["n"]
    steps = n // a.batch_size
    return statistics.median(steps * a.batch_size / r["time_s"] for r in hist[1:]), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist-5k")
    ap.add_argument("--model", default="cnn-s")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "ddp_scaling.json")
    a = ap.parse_args()

    one, two, ratios, n = [], [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            order = (1, 2) if r % 2 == 0 else (2, 1)  # alternate: drift in the machine's speed favours neither
            res = {}
            for d in order:
                res[d], n = one_run(a, d, Path(tmp) / f"r{r}-d{d}")
            one.append(res[1])
            two.append(res[2])
            ratios.append(res[2] / res[1])
            print(f"round {r + 1}: 1 process {res[1]:.0f} img/s, 2 processes {res[2]:.0f} img/s, ratio {ratios[-1]:.3f}",
                  flush=True)
    ratio = statistics.median(ratios)
    print(f"ratio 2-process/1-process = {ratio:.2f}")
    cores = os.cpu_count()
    bench_common.write_result(
        a.json, "ddp_scaling", title="DDP scaling: 1 process against 2 (`benchmarks/ddp_scaling.py`)",
        command="python benchmarks/ddp_scaling.py " + " ".join(sys.argv[1:]), runs=a.rounds, code=bench_common.code_state(),
        summary=(f"`recogen classify train` on {a.data} ({n:,} training images, {a.image_size} px, {a.model}), global batch "
                 f"{a.batch_size}, fp32, {a.epochs} epochs, in 1 process and in 2 (Lightning DDP, gloo) on the same "
                 f"{cores}-core CPU; images/s from each epoch's time in history.json, median of epochs 2-{a.epochs}; "
                 f"{a.rounds} alternating rounds. Median ratio 2-process/1-process **{ratio:.2f}**. On one CPU the two "
                 "processes split the cores the single process uses with its threads, so this measures DDP's cost "
                 "(gradient all-reduce, two half batches), not the gain of a second device."),
        table={"columns": ["setting", "images/s (median of rounds)", "per-round images/s"],
               "rows": [["1 process", f"{statistics.median(one):,.0f}", ", ".join(f"{v:,.0f}" for v in one)],
                        ["2 processes (ddp)", f"{statistics.median(two):,.0f}", ", ".join(f"{v:,.0f}" for v in two)],
                        ["ratio 2/1", f"**{ratio:.2f}**", ", ".join(f"{v:.2f}" for v in ratios)]]},
        ratio=ratio, one_process=one, two_processes=two)


if __name__ == "__main__":
    main()
