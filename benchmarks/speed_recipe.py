"""`recogen classify train --recipe speed`: training throughput on CIFAR-shaped data, and accuracy at equal time.

(a) Throughput, images/s, on CIFAR-shaped data: ``--n`` random uint8 images of 32x32x3 (50,000 for the
real shape of CIFAR-10's training set), 10 random classes. Three contenders, interleaved over
``--rounds`` rounds (which goes first rotates), each training ``--epochs`` epochs; the first epoch is
warm-up and not counted; the median over rounds is reported:

- ``recogen``: ``recogen classify train --recipe speed`` in-process (speednet, its SGD, lookahead,
  shifts and alternating flips, the precision it picks), timed by a callback from each epoch's first
  to its last training step (``train``) and from epoch start to epoch start (``epoch``: validation with
  flip TTA, logging and the atomic checkpoints inside);
- ``plain``: a hand-written PyTorch loop of the same step: the same network, batch, augmentation
  (speed.ShiftFlip), loss, SGD groups and schedule, lookahead, channels-last and autocast precision;
- ``resnet18``: the same plain loop with torchvision's ResNet-18 (CIFAR stem: 3x3 conv, no max-pool, as
  recogen builds it below 64 px), the usual CIFAR baseline network.

Random pixels: the numbers are speed only (nothing can be learned). ``--device auto`` takes the GPU when
there is one. On a CPU use a small ``--n`` (the 2-core machines here do tens of images/s) and say so.

(b) ``--accuracy``: real digits at equal wall time, ``mnist-5k`` (MNIST's 5,000-image subset, offline):
``--recipe speed`` and the default recipe, each with ``--budget`` (the same wall clock, data loading to
written run folder), ``--seeds`` seeds; test accuracy on the fixed 1,000-image test split.

    python benchmarks/speed_recipe.py --n 50000 --json benchmarks/results/gpu_speed_recipe.json   # a GPU machine
    python benchmarks/speed_recipe.py --accuracy --json benchmarks/results/speed_recipe.json     # this CPU: n 512
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_common  # noqa: E402

DATA = "cifar-shaped-random"


# --------------------------------------------------------------------------------------------- data
def register_random_data(n: int, size: int, seed: int) -> None:
    """``--data cifar-shaped-random``: ``n`` random uint8 (3, size, size) images, 10 classes, for this process."""
    from recogen.data import DATASETS
    from recogen.data.base import ImageSet, ImageSplits

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    n_val = max(256, n // 50)
    val = ImageSet(images[:n_val].clone(), labels[:n_val].clone())

    @DATASETS.register(DATA, description="benchmark: random CIFAR-shaped images")
    def build(arg, opts):
        return ImageSplits(DATA, [str(c) for c in range(10)], ImageSet(images, labels), val, None, hflip_ok=True)


# ------------------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(model_name: str, a, images, labels, device: torch.device, cfg) -> float:
    """A hand-written loop of the speed recipe's training step on ``model_name``; median training images/s
    over epochs 2..E (each epoch timed from its first to its last step, synchronised)."""
    from recogen.models import create_model
    from recogen.tasks.classify import speed

    torch.manual_seed(a.seed)
    model = create_model(model_name, num_classes=10, in_chans=3, image_size=a.size, **(
        {"width": a.width} if model_name == "speednet" else {})).to(device).to(memory_format=torch.channels_last)
    x8 = images.to(device)
    y = labels.to(device)
    mean = x8[:2000].float().div(255).mean((0, 2, 3)).view(1, -1, 1, 1)
    std = x8[:2000].float().div(255).std((0, 2, 3)).view(1, -1, 1, 1)
    if hasattr(model, "init_from_data"):
        model.init_from_data((x8[:5000].float().div(255) - mean) / std)
    steps = len(x8) // cfg.batch_size
    total = steps * a.epochs

    class Holder:  # speed.configure_optimizers reads module.cfg / .model / .trainer.estimated_stepping_batches
        pass

    h = Holder()
    h.cfg, h.model = cfg, model
    h.trainer = type("T", (), {"estimated_stepping_batches": total})()
    conf = speed.configure_optimizers(h)
    opt, sched = (conf["optimizer"], conf["lr_scheduler"]["scheduler"]) if isinstance(conf, dict) else (conf, None)
    aug = speed.ShiftFlip(hflip=True, seed=a.seed)
    look = speed.Lookahead()
    warm = speed.warm_epochs(a.epochs)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision.startswith("bf16")
           else torch.autocast(device.type, dtype=torch.float16) if cfg.precision.startswith("16") else nullcontext())
    scaler = torch.amp.GradScaler(device.type) if cfg.precision.startswith("16") else None
    rates, step = [], 0
    for epoch in range(a.epochs):
        model.train()
        aug.epoch = epoch
        order = torch.randperm(len(x8), device=device)
        _sync(device)
        t0 = time.perf_counter()
        for i in range(steps):
            idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            x = aug(x8[idx].float().div_(255))
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            with amp:
                loss = nn.functional.cross_entropy(model(x), y[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            if sched is not None:
                sched.step()
            step += 1
            look.step(model, step, total, epoch, warm)
        look.sync(model)
        _sync(device)
        rates.append(steps * cfg.batch_size / (time.perf_counter() - t0))
    return statistics.median(rates[1:] or rates)


def recogen_run(a, out: Path) -> dict:
    """``recogen classify train --recipe speed`` in-process: median training images/s (first to last step
    of an epoch) and epoch images/s (epoch start to epoch start), epochs 2..E."""
    import lightning.pytorch as pl

    from recogen.tasks import classify

    marks: list[dict] = []

    class Clock(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            _sync(module.device)
            marks.append({"start": time.perf_counter()})

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx + 1 == trainer.num_training_batches:
                _sync(module.device)
                marks[-1]["train_end"] = time.perf_counter()

        def on_train_end(self, trainer, module):
            marks.append({"start": time.perf_counter()})

    classify.train(data=DATA, recipe="speed", epochs=a.epochs, batch_size=a.batch_size, budget="none", seed=a.seed,
                   model_kwargs={"width": a.width}, accelerator=a.accelerator, out=str(out), progress=False,
                   callbacks=[Clock()])
    steps = a.n // a.batch_size
    train = [steps * a.batch_size / (m["train_end"] - m["start"]) for m in marks[1:-1]]
    epoch = [steps * a.batch_size / (m1["start"] - m0["start"]) for m0, m1 in zip(marks[1:-1], marks[2:])]
    return {"train": statistics.median(train), "epoch": statistics.median(epoch)}


def throughput(a) -> dict:
    from recogen.config import ClassifyConfig
    from recogen.tasks.classify.speed import resolve_speed

    device = torch.device("cuda" if a.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu")
    a.accelerator = "gpu" if device.type == "cuda" else "cpu"
    register_random_data(a.n, a.size, a.seed)
    from recogen.data import create_dataset
    from recogen.data.base import DataOptions

    splits = create_dataset(DATA, DataOptions(seed=a.seed))
    cfg, _ = resolve_speed(ClassifyConfig(data=DATA, recipe="speed", epochs=a.epochs, batch_size=a.batch_size,
                                          budget="none", model_kwargs={"width": a.width}), splits)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{bench_common.cpu_name()}, {torch.get_num_threads()} threads"
    print(f"(a) {a.n} random {a.size}x{a.size}x3 images, 10 classes; batch {a.batch_size}, {a.epochs} epochs x "
          f"{a.rounds} rounds (first epoch not counted); speednet width {a.width}; {cfg.precision}; {name}; "
          f"torch {torch.__version__}", flush=True)
    rows: dict[str, list[float]] = {"recogen_train": [], "recogen_epoch": [], "plain": [], "resnet18": []}
    who = ["recogen", "plain", "resnet18"]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            order = who[r % 3:] + who[:r % 3]
            res = {}
            for w in order:
                if w == "recogen":
                    got = recogen_run(a, Path(tmp) / f"run{r}")
                    res["recogen_train"], res["recogen_epoch"] = got["train"], got["epoch"]
                else:
                    res[w] = plain_loop("speednet" if w == "plain" else "resnet18", a, splits.train.images,
                                        splits.train.labels, device, cfg)
            for k, v in res.items():
                rows[k].append(v)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.0f} img/s" for k, v in res.items()), flush=True)
    med = {k: round(statistics.median(v), 1) for k, v in rows.items()}
    print(f"median images/s: recogen --recipe speed {med['recogen_train']:.0f} (training steps; "
          f"{med['recogen_epoch']:.0f} with validation and checkpoints), plain loop of the same net {med['plain']:.0f}, "
          f"ResNet-18 plain loop {med['resnet18']:.0f}")
    # Ratios within each round (the machine's speed drifts between rounds), then their median.
    ratios = {"recogen/plain": statistics.median(r / p for r, p in zip(rows["recogen_train"], rows["plain"])),
              "speednet/resnet18": statistics.median(p / q for p, q in zip(rows["plain"], rows["resnet18"]))}
    print(f"ratio recogen/plain = {ratios['recogen/plain']:.2f}; speednet/ResNet-18 = {ratios['speednet/resnet18']:.2f} "
          f"(medians of the rounds' ratios)")
    return {"device": name, "n": a.n, "image_size": a.size, "batch_size": a.batch_size, "epochs": a.epochs,
            "rounds": a.rounds, "width": a.width, "precision": cfg.precision, "images_per_s": rows, "median": med,
            "ratios": {k: round(v, 3) for k, v in ratios.items()}}


# ------------------------------------------------------------------------------------------ accuracy
def timed_train(args: list[str], out: Path) -> dict:
    """``recogen classify train ARGS --out OUT`` in a fresh process: wall and CPU seconds, epochs, accuracies."""
    cmd = [sys.executable, "-m", "recogen", "classify", "train", *args, "--out", str(out), "--no-progress"]
    _, wall, cpu = bench_common.run_timed(cmd, HERE.parent, "recogen")
    hist = json.loads((out / "history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    card = json.loads((out / "model.json").read_text())
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "epochs": len(hist),
            "val_accuracy": max(h["val_acc"] for h in hist if "val_acc" in h),
            "test_accuracy": round(metrics["accuracy"], 4), "test_images": metrics.get("num_images"),
            "model": card.get("model"), "tta": card.get("tta")}


def accuracy(a) -> dict:
    """mnist-5k, the speed recipe and the default recipe at the same --budget, per seed."""
    out: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(a.seeds):
            arms = [("speed", ["--recipe", "speed"]), ("default", [])]
            for arm, extra in (arms if seed % 2 == 0 else arms[::-1]):
                args = ["--data", "mnist-5k", "--budget", a.budget, "--seed", str(seed), *extra]
                r = timed_train(args, Path(tmp) / f"{arm}{seed}")
                out.setdefault(arm, []).append(r)
                print(f"(b) mnist-5k seed {seed} {arm} recipe: test accuracy {r['test_accuracy']:.4f}, best val "
                      f"{r['val_accuracy']:.4f}, {r['epochs']} epochs, {r['wall_s']:.0f} s wall ({r['model']})", flush=True)
    return {"budget": a.budget, "seeds": a.seeds, "runs": out}


def summarize(a, result: dict) -> tuple[str, dict]:
    """The report's summary paragraph and table (benchmarks/report.py renders them)."""
    parts, rows = [], []
    t = result.get("throughput")
    if t:
        med, rat = t["median"], t["ratios"]
        parts.append(
            f"(a) Training images/s on {t['n']:,} random {t['image_size']}x{t['image_size']}x3 images (10 classes; "
            f"{'the shape of CIFAR-10' if t['n'] >= 50_000 else 'a small n: on this CPU the full 50,000 would take hours'}), "
            f"batch {t['batch_size']}, {t['precision']}, on {t['device']}; {t['epochs']} epochs per contender and round, "
            f"the first not counted, {t['rounds']} interleaved rounds. `recogen classify train --recipe speed` "
            f"(speednet width {t['width']}) against a plain PyTorch loop of the same step (same network, augmentation, "
            f"SGD, schedule, lookahead, precision) and torchvision's ResNet-18 (CIFAR stem) in the same plain loop: "
            f"ratio recogen/plain **{rat['recogen/plain']:.2f}**, speednet/ResNet-18 **{rat['speednet/resnet18']:.2f}** "
            f"(medians of the rounds' ratios). Random pixels: speed only.")
        ips = t["images_per_s"]
        rows += [["(a) recogen --recipe speed, training steps", f"{med['recogen_train']:,.1f}",
                  ", ".join(f"{v:,.1f}" for v in ips["recogen_train"])],
                 ["(a) recogen, whole epoch (validation with TTA, checkpoints)", f"{med['recogen_epoch']:,.1f}",
                  ", ".join(f"{v:,.1f}" for v in ips["recogen_epoch"])],
                 ["(a) plain loop, same speednet step", f"{med['plain']:,.1f}", ", ".join(f"{v:,.1f}" for v in ips["plain"])],
                 ["(a) plain loop, torchvision ResNet-18", f"{med['resnet18']:,.1f}",
                  ", ".join(f"{v:,.1f}" for v in ips["resnet18"])]]
    acc = result.get("accuracy")
    if acc:
        sp, de = acc["runs"]["speed"], acc["runs"]["default"]
        parts.append(
            f"(b) Real digits, `mnist-5k`, each recipe with `--budget {acc['budget']}` (the same wall clock), "
            f"{acc['seeds']} seed(s): test accuracy (1,000 fixed test digits) speed "
            + ", ".join(f"{r['test_accuracy']:.4f} ({r['epochs']} epochs)" for r in sp) + ", default "
            + ", ".join(f"{r['test_accuracy']:.4f} ({r['epochs']} epochs, {r['model']})" for r in de) + ".")
        rows += [[f"(b) mnist-5k, {arm} recipe, seed {i}", f"test acc. {r['test_accuracy']:.4f}",
                  f"{r['epochs']} epochs, {r['wall_s']:.0f} s wall, best val {r['val_accuracy']:.4f}, {r['model']}"]
                 for arm, runs in (("speed", sp), ("default", de)) for i, r in enumerate(runs)]
    return " ".join(parts), {"columns": ["what", "images/s (median) or result", "per round / details"], "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, help="random training images (default: CIFAR-10's 50,000 on a GPU, 512 on a CPU)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, help="default: airbench's 1024 on a GPU, 128 on a CPU")
    ap.add_argument("--epochs", type=int, help="per contender and round, the first is warm-up (default 3 on a GPU, 2 on a CPU)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--width", type=int, default=64, help="speednet base width (64: airbench's 2M-parameter net)")
    ap.add_argument("--accelerator", default="auto", help="auto (cuda when available), cpu or gpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-throughput", dest="throughput", action="store_false", help="skip (a)")
    ap.add_argument("--accuracy", action="store_true", help="also (b): mnist-5k at equal time vs the default recipe")
    ap.add_argument("--budget", default="4m", help="(b): the wall-clock budget of each run")
    ap.add_argument("--seeds", type=int, default=1, help="(b): seeds per arm")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write every number to this JSON file")
    a = ap.parse_args()
    gpu = a.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    a.n = a.n or (50_000 if gpu else 512)
    a.batch_size = a.batch_size or (1024 if gpu else 128)
    a.epochs = a.epochs or (3 if gpu else 2)
    if a.n < 2 * a.batch_size:
        sys.exit(f"--n {a.n} gives fewer than 2 batches of {a.batch_size}; lower --batch-size")
    result: dict = {}
    if a.throughput:
        result["throughput"] = throughput(a)
    if a.accuracy:
        result["accuracy"] = accuracy(a)
    summary, table = summarize(a, result)
    if a.json:
        bench_common.write_result(a.json, "speed_recipe", command="python benchmarks/speed_recipe.py " + " ".join(sys.argv[1:]),
                                  code=bench_common.code_state(), runs=a.rounds, summary=summary, table=table, **result)


if __name__ == "__main__":
    main()
