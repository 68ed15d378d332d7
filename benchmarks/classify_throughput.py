"""Training throughput of `recogen classify train` against a plain hand-written PyTorch loop.

Both train the same model on the same in-memory data with the same batch size, optimiser (AdamW +
one-cycle), loss (label-smoothed cross-entropy), preprocessing (uint8 -> float -> normalise,
channels-last), no augmentation, fp32, and both validate once per epoch. recogen also does what a
run does: progress bar, TensorBoard logging, history.json, best/last checkpoints written atomically.

images/s = training images per epoch / wall time between consecutive epoch starts (so validation,
logging and checkpointing are inside the time), first epoch skipped (warm-up). The two are run
interleaved for several rounds (the machine's noise is a few percent) and the median ratio is
reported. The last line reads ``ratio recogen/plain = X.XX``.

    python benchmarks/classify_throughput.py [--data digits --image-size 28 --model seed-cnn
                                              --batch-size 64 --epochs 8 --rounds 3]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recogen.data import DataOptions, create_dataset  # noqa: E402
from recogen.models import create_model  # noqa: E402


def plain_loop(splits, a) -> float:
    """The hand-written loop: returns median training images/s over epochs 1..E-1."""
    torch.manual_seed(a.seed)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in splits.mean_std())
    model = create_model(a.model, num_classes=len(splits.classes), in_chans=splits.channels,
                         image_size=splits.image_size[0]).to(memory_format=torch.channels_last)
    n = len(splits.train)
    steps = n // a.batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps * a.epochs, pct_start=0.25)

    def prep(x):
        return ((x.float().div_(255) - mean) / std).contiguous(memory_format=torch.channels_last)

    starts = []
    for epoch in range(a.epochs):
        starts.append(time.perf_counter())
        model.train()
        order = torch.randperm(n)
        for i in range(steps):
            idx = order[i * a.batch_size:(i + 1) * a.batch_size]
            loss = nn.functional.cross_entropy(model(prep(splits.train.images[idx])), splits.train.labels[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.inference_mode():
            correct = 0
            for i in range(0, len(splits.val), 256):
                correct += (model(prep(splits.val.images[i:i + 256])).argmax(1) == splits.val.labels[i:i + 256]).sum().item()
    starts.append(time.perf_counter())
    return statistics.median(steps * a.batch_size / (t1 - t0) for t0, t1 in zip(starts[1:-1], starts[2:]))


def recogen_run(a, out: Path) -> float:
    """`recogen classify train` in-process, timed by a callback at every epoch start."""
    import lightning.pytorch as pl

    from recogen.tasks import classify

    starts: list[float] = []

    class EpochClock(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            starts.append(time.perf_counter())

        def on_train_end(self, trainer, module):
            starts.append(time.perf_counter())

    classify.train(data=a.data, image_size=a.image_size, model=a.model, batch_size=a.batch_size, epochs=a.epochs,
                   lr=3e-3, augment="none", precision="32-true", seed=a.seed, out=str(out), progress=a.progress,
                   callbacks=[EpochClock()])
    steps = a.train_images // a.batch_size
    return statistics.median(steps * a.batch_size / (t1 - t0) for t0, t1 in zip(starts[1:-1], starts[2:]))


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
    a = ap.parse_args()
    splits = create_dataset(a.data, DataOptions(image_size=a.image_size, seed=a.seed))
    a.train_images = len(splits.train)
    print(f"{a.data} {a.image_size}px, {len(splits.train)} train images, {a.model}, batch {a.batch_size}, "
          f"{a.epochs} epochs x {a.rounds} rounds; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    ratios, plain_all, ours_all = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            # Alternate which goes first so drift in the machine's speed does not favour one side.
            order = ("plain", "recogen") if r % 2 == 0 else ("recogen", "plain")
            res = {}
            for who in order:
                res[who] = plain_loop(splits, a) if who == "plain" else recogen_run(a, Path(tmp) / f"run{r}")
            plain_all.append(res["plain"])
            ours_all.append(res["recogen"])
            ratios.append(res["recogen"] / res["plain"])
            print(f"round {r + 1}: plain {res['plain']:.0f} img/s, recogen {res['recogen']:.0f} img/s, "
                  f"ratio {ratios[-1]:.3f}", flush=True)
    print(f"median: plain {statistics.median(plain_all):.0f} img/s, recogen {statistics.median(ours_all):.0f} img/s")
    print(f"ratio recogen/plain = {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
