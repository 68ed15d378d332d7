"""Training throughput of `recogen TASK train` against a plain hand-written PyTorch loop, for every task.

For each task both sides train the same network (built by the task's own model registry from the same
resolved config), on the same in-memory data, with the same batch size, optimiser (the task's: AdamW
or Adam with the same betas, learning rate, weight decay and per-step schedule), loss, preprocessing,
precision (fp32 unless --precision) and memory format, with no augmentation, and both validate once
per epoch computing the task's validation metric:

  classify  seed-cnn on digits at 28 px, batch 64: label-smoothed cross-entropy; val accuracy.
  segment   the default U-Net (width 8) on shapes at 64 px, batch 16: cross-entropy + soft Dice;
            val loss and mIoU from one confusion matrix.
  detect    fcos-s on shapes at 64 px, batch 16: the detector's own losses; val mAP (torchmetrics,
            the evaluation's caps).
  generate  dcgan (the default: width 32, latent 64, EMA of the generator) on digits at 28 px,
            batch 64: discriminator then generator step, EMA update; the model's val metrics.

The plain loop is what a person would write: index the in-memory tensors in a shuffled order,
forward, loss, backward, ``optimizer.step()`` with torch's default optimiser implementation (pass
``--plain-fused`` to give it the fused one too, which leaves the framework's cost alone), step the
schedule, validate. recogen also does everything a run does: progress bar, TensorBoard, history.json,
best/last checkpoints written atomically every epoch, the finite-loss guard, per-epoch re-seeding
(and for generate a TensorBoard sample grid per epoch).

images/s = training images per epoch / wall time between consecutive epoch starts (so validation,
logging and checkpointing are inside the time), the first epoch skipped (warm-up); median over the
epochs of a run. The two sides run in this process, interleaved for several rounds with alternating
order (the machine's noise is a few percent; more on a shared machine), and the median ratio is
reported. CPU seconds of this process per epoch are measured alongside (less sensitive to other
processes on the machine than the wall clock). The last line of each task reads
``TASK: ratio recogen/plain = X.XX``.

    python benchmarks/train_throughput.py --task classify|segment|detect|generate|all [--rounds 5]
        [--epochs N] [--precision 32-true] [--plain-fused] [--threads N] [--json FILE] [--quick]
        [--accelerator cpu|gpu]

``benchmarks/classify_throughput.py`` is this script's classify row with its own options.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The default setting of each task's row: small enough for a few minutes on 2 CPU cores.
SETTINGS: dict[str, dict[str, Any]] = {
    "classify": dict(data="digits", image_size=28, model="seed-cnn", batch_size=64, epochs=8, lr=3e-3),
    "segment": dict(data="shapes:240", image_size=64, model="unet", batch_size=16, epochs=5),
    "detect": dict(data="shapes:160", image_size=64, model="fcos-s", batch_size=16, epochs=4),
    "generate": dict(data="digits", model="dcgan", batch_size=64, epochs=5),
}
# --quick: a smoke run of every path in seconds (its figures mean nothing).
QUICK: dict[str, dict[str, Any]] = {
    "classify": dict(data="digits", limit=128, image_size=16, model="cnn-s", batch_size=32, epochs=2),
    "segment": dict(data="shapes:32", image_size=32, model="unet", batch_size=8, epochs=2),
    "detect": dict(data="shapes:24", image_size=32, model="fcos-s", batch_size=8, epochs=2),
    "generate": dict(data="digits", limit=128, model="dcgan", width=8, batch_size=32, epochs=2),
}
TASK_NAMES = tuple(SETTINGS)


DEVICE = torch.device("cpu")  # --accelerator gpu: cuda (both sides; set by main)


def dev(t: torch.Tensor) -> torch.Tensor:
    """A CPU batch on the device, as Lightning moves recogen's batches."""
    return t.to(DEVICE, non_blocking=True) if DEVICE.type != "cpu" else t


class Clock:
    """Wall and CPU time at each epoch start and at the end of training (after the GPU's queued work)."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def tick(self) -> None:
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def rates(self, images_per_epoch: int) -> tuple[float, float]:
        """(median images/s by the wall clock, median images per CPU second), epochs 2.. of the run."""
        def med(t):
            return statistics.median(images_per_epoch / (b - a) for a, b in zip(t[1:-1], t[2:]))

        return med(self.wall), med(self.cpu)


# ------------------------------------------------------------------------------ the shared setup
def resolved(task_name: str, options: dict[str, Any]):
    """The task's resolved config and data (recogen's own recipe code: the same for both sides)."""
    from recogen.tasks import get_task
    from recogen.tasks.runs import make_config

    task = get_task(task_name)
    cfg = task.prepare_config(make_config(task.config, None, options))
    splits = task.load_data(cfg)
    cfg, _ = task.resolve_defaults(cfg, splits)
    return task, cfg, task.fit_data(cfg, splits)


def plain_optimizers(cfg, groups: list[list[nn.Parameter]], total_steps: int, fused: bool, betas=None,
                     warmup: float = 0.25):
    """The optimiser(s) and per-step schedule(s) a hand-written loop would make for ``cfg``."""
    opts, scheds = [], []
    kw = {"fused": True} if fused else {}
    for params in groups:
        if cfg.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, **kw)
        elif cfg.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    **({"betas": betas} if betas else {}), **kw)
        opts.append(opt)
        if cfg.schedule == "onecycle":
            scheds.append(torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps,
                                                              pct_start=max(warmup, 2 / total_steps)))
        elif cfg.schedule == "cosine":
            scheds.append(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps))
    return opts, scheds


def autocast(cfg):
    """The precision of ``cfg`` as a hand-written loop sets it: autocast for bf16-mixed, nothing for fp32."""
    import contextlib

    if cfg.precision in ("bf16-mixed", "bf16"):
        return torch.autocast(DEVICE.type, dtype=torch.bfloat16)
    if cfg.precision not in ("32-true", "32"):
        raise SystemExit(f"this benchmark runs fp32 or bf16-mixed, not {cfg.precision}")
    return contextlib.nullcontext()


def batches(n: int, batch_size: int):
    """Shuffled index batches of one epoch, the last partial one dropped (as recogen's training batches)."""
    order = torch.randperm(n)
    for i in range(n // batch_size):
        yield order[i * batch_size:(i + 1) * batch_size]


# ------------------------------------------------------------------------------ the plain loops
def fit_plain(cfg, model, n_train: int, clock: Clock, step: Callable[[int, torch.Tensor], None],
              validate: Callable[[], None]) -> None:
    """The epoch loop every plain loop shares: ``step(b, index batch)`` over a shuffled epoch, then
    ``validate()`` in eval mode; the clock ticks at each epoch start and at the end."""
    for _ in range(cfg.epochs):
        clock.tick()
        model.train()
        for b, idx in enumerate(batches(n_train, cfg.batch_size)):
            step(b, idx)
        model.eval()
        validate()
    clock.tick()


def update(opt, loss: torch.Tensor) -> None:
    """One optimiser step on ``loss``, as a hand-written loop does it."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def placed(cfg, model, channels_last: bool = True):
    """``model`` on the device in the run's memory format, and that format."""
    fmt = torch.channels_last if cfg.channels_last and channels_last else torch.contiguous_format
    return model.to(DEVICE, memory_format=fmt), fmt


def normaliser(splits, fmt) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 images -> the normalised float batch on the device, in memory format ``fmt``."""
    mean, std = (dev(torch.tensor(v).view(1, -1, 1, 1)) for v in splits.mean_std())
    return lambda x: ((dev(x).float().div_(255) - mean) / std).contiguous(memory_format=fmt)


def plain_classify(cfg, splits, model, clock: Clock, fused: bool) -> None:
    model, fmt = placed(cfg, model)
    prep = normaliser(splits, fmt)
    tr, va = splits.train, splits.val
    (opt,), scheds = plain_optimizers(cfg, [list(model.parameters())], len(tr) // cfg.batch_size * cfg.epochs, fused)

    def step(b, idx):
        with autocast(cfg):
            loss = nn.functional.cross_entropy(model(prep(tr.images[idx])), dev(tr.labels[idx]),
                                               label_smoothing=cfg.label_smoothing)
        update(opt, loss)
        for s in scheds:
            s.step()

    def validate():
        correct = 0
        with torch.inference_mode(), autocast(cfg):
            for i in range(0, len(va), 256):
                y = dev(va.labels[i:i + 256])
                logits = model(prep(va.images[i:i + 256]))
                nn.functional.cross_entropy(logits.float(), y)
                correct += int((logits.argmax(1) == y).sum())

    fit_plain(cfg, model, len(tr), clock, step, validate)


def plain_segment(cfg, splits, model, clock: Clock, fused: bool) -> None:
    from recogen.data.dense import IGNORE_INDEX
    from recogen.models.segmenters.losses import get_loss

    model, fmt = placed(cfg, model)
    prep = normaliser(splits, fmt)
    loss_fn = get_loss(cfg.loss)
    tr, va = splits.train, splits.val
    (opt,), scheds = plain_optimizers(cfg, [list(model.parameters())], len(tr) // cfg.batch_size * cfg.epochs, fused)
    k, vb = len(splits.seg_classes), max(32, cfg.batch_size)

    def step(b, idx):
        with autocast(cfg):
            loss = loss_fn(model(prep(tr.images[idx])).float(), dev(tr.masks[idx]).long())
        update(opt, loss)
        for s in scheds:
            s.step()

    def validate():
        cm = torch.zeros(k, k, dtype=torch.long, device=DEVICE)
        with torch.inference_mode(), autocast(cfg):
            for i in range(0, len(va), vb):
                m = dev(va.masks[i:i + vb]).long()
                logits = model(prep(va.images[i:i + vb])).float()
                nn.functional.cross_entropy(logits, m, ignore_index=IGNORE_INDEX)
                keep = m != IGNORE_INDEX
                cm += torch.bincount(m[keep] * k + logits.argmax(1)[keep], minlength=k * k).view(k, k)
        tp = cm.diag().double()
        union = cm.sum(0) + cm.sum(1) - tp
        float((tp[union > 0] / union[union > 0]).mean())

    fit_plain(cfg, model, len(tr), clock, step, validate)


def plain_detect(cfg, splits, model, clock: Clock, fused: bool) -> None:
    from recogen.metrics.detection import MAX_DETECTIONS, mean_average_precision
    from recogen.tasks.detect.outputs import EVAL_SCORE_THRESH, _from_model_outputs, postprocess

    model, _ = placed(cfg, model, channels_last=False)  # detection trains in the contiguous format
    tr, va = splits.train, splits.val
    (opt,), scheds = plain_optimizers(cfg, [list(model.parameters())], len(tr) // cfg.batch_size * cfg.epochs, fused)
    metric = mean_average_precision(class_metrics=False).to(DEVICE)

    def step(b, idx):
        images = dev(tr.images[idx]).float().div_(255)
        targets = [{"boxes": dev(tr.boxes[j]).float(), "labels": dev(tr.labels[j]) + 1} for j in idx.tolist()]
        with autocast(cfg):
            loss = sum(model(list(images), targets).values())
        update(opt, loss)
        for s in scheds:
            s.step()

    def validate():
        with torch.inference_mode(), autocast(cfg), postprocess(model, EVAL_SCORE_THRESH, max_det=MAX_DETECTIONS):
            for i in range(0, len(va), 32):
                preds = _from_model_outputs(model(list(dev(va.images[i:i + 32]).float().div_(255))))
                metric.update([{k: v.float() if k != "labels" else v for k, v in p.items()} for p in preds],
                              [{"boxes": dev(va.boxes[j]).float(), "labels": dev(va.labels[j])}
                               for j in range(i, min(i + 32, len(va)))])
        float(metric.compute()["map"])
        metric.reset()

    fit_plain(cfg, model, len(tr), clock, step, validate)


def plain_generate(cfg, splits, model, clock: Clock, fused: bool) -> None:
    model, fmt = placed(cfg, model)
    names = list(model.param_groups())
    tr, va = splits.train, splits.val
    opts, scheds = plain_optimizers(cfg, list(model.param_groups().values()), len(tr) // cfg.batch_size * cfg.epochs,
                                    fused, betas=model.adam_betas, warmup=0.1)

    def step(b, idx):
        x, y = dev(tr.images[idx]).float().div_(255).contiguous(memory_format=fmt), dev(tr.labels[idx])
        for phase in model.phases(b):
            with autocast(cfg):
                loss, _ = model.phase_loss(phase, x, y)
            update(opts[names.index(phase)], loss)
            model.after_step(phase)
        for s in scheds:
            s.step()

    def validate():
        with torch.no_grad(), autocast(cfg):
            for i in range(0, len(va), 256):
                model.val_metrics(dev(va.images[i:i + 256]).float().div_(255), dev(va.labels[i:i + 256]))

    fit_plain(cfg, model, len(tr), clock, step, validate)


PLAIN: dict[str, Callable] = {"classify": plain_classify, "segment": plain_segment, "detect": plain_detect,
                              "generate": plain_generate}


def plain_run(task_name: str, options: dict[str, Any], fused: bool, clock: Clock) -> int:
    """The plain loop of ``task_name``; returns the training images per epoch."""
    from recogen.utils import seed_everything

    task, cfg, splits = resolved(task_name, options)
    seed_everything(cfg.seed)
    model = task.build_model(cfg, splits)
    PLAIN[task_name](cfg, splits, model, clock, fused)
    return (len(splits.train) // cfg.batch_size) * cfg.batch_size


def recogen_run(task_name: str, options: dict[str, Any], out: Path, clock: Clock, progress: bool) -> None:
    """`recogen TASK train` in-process, timed by a callback at every epoch start and the end of training."""
    import lightning.pytorch as pl

    from recogen.tasks import get_task

    class EpochClock(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            clock.tick()

        def on_train_end(self, trainer, module):
            clock.tick()

    get_task(task_name).train(None, [EpochClock()], **options, out=str(out), progress=progress)


def images_per_epoch(task_name: str, options: dict[str, Any]) -> int:
    _, cfg, splits = resolved(task_name, options)
    return (len(splits.train) // cfg.batch_size) * cfg.batch_size


def bench(task_name: str, a) -> dict[str, Any]:
    options = {**(QUICK if a.quick else SETTINGS)[task_name], "augment": "none", "precision": a.precision, "seed": a.seed,
               "accelerator": a.accelerator, "devices": "1"}
    if a.epochs:
        options["epochs"] = a.epochs
    for key in ("data", "image_size", "model", "batch_size"):
        if getattr(a, key) is not None:
            options[key] = getattr(a, key)
    n_img = images_per_epoch(task_name, options)
    _, cfg, splits = resolved(task_name, options)
    print(f"{task_name}: {cfg.data} {cfg.image_size}px, {len(splits.train)} train images, {cfg.model}, batch "
          f"{cfg.batch_size}, {cfg.epochs} epochs x {a.rounds} rounds, {cfg.precision}, channels-last "
          f"{cfg.channels_last}, {cfg.optimizer}{' (plain loop fused too)' if a.plain_fused else ''}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            # Alternate which goes first so drift in the machine's speed does not favour one side.
            order = ("plain", "recogen") if r % 2 == 0 else ("recogen", "plain")
            res = {}
            for who in order:
                clock = Clock()
                if who == "plain":
                    plain_run(task_name, options, a.plain_fused, clock)
                else:
                    recogen_run(task_name, options, Path(tmp) / f"{task_name}{r}", clock, a.progress)
                res[who] = clock.rates(n_img)
            row = {"round": r + 1, "plain_img_s": res["plain"][0], "recogen_img_s": res["recogen"][0],
                   "ratio": res["recogen"][0] / res["plain"][0],
                   "cpu_ratio": res["recogen"][1] / res["plain"][1]}
            rows.append(row)
            print(f"{task_name} round {r + 1}: plain {row['plain_img_s']:.0f} img/s, recogen "
                  f"{row['recogen_img_s']:.0f} img/s, ratio {row['ratio']:.3f} (CPU-time ratio "
                  f"{row['cpu_ratio']:.3f})", flush=True)
    out = {"task": task_name, "settings": {k: v for k, v in options.items()}, "rounds": rows,
           "plain_img_s": statistics.median(r["plain_img_s"] for r in rows),
           "recogen_img_s": statistics.median(r["recogen_img_s"] for r in rows),
           "ratio": statistics.median(r["ratio"] for r in rows),
           "cpu_ratio": statistics.median(r["cpu_ratio"] for r in rows)}
    print(f"{task_name}: median plain {out['plain_img_s']:.0f} img/s, recogen {out['recogen_img_s']:.0f} img/s; "
          f"CPU-time ratio {out['cpu_ratio']:.2f}")
    print(f"{task_name}: ratio recogen/plain = {out['ratio']:.2f}", flush=True)
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="all", choices=(*TASK_NAMES, "all"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default: per task)")
    ap.add_argument("--precision", default="32-true", help="32-true (default) or bf16-mixed, both sides")
    ap.add_argument("--plain-fused", action="store_true",
                    help="the plain loop uses the fused optimiser too (measures the framework's cost alone)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="with one --task: another data set")
    ap.add_argument("--image-size", type=int, default=None, help="with one --task: another image size")
    ap.add_argument("--model", default=None, help="with one --task: another model")
    ap.add_argument("--batch-size", type=int, default=None, help="with one --task: another batch size")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="recogen progress bar")
    ap.add_argument("--json", default=None, help="write the rounds and medians here")
    ap.add_argument("--quick", action="store_true", help="tiny data and models, to check the script runs")
    ap.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu"),
                    help="where both sides train (gpu: the first CUDA device, one process)")
    return ap


def main(argv: list[str] | None = None, defaults: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    ap = parser()
    if defaults:
        ap.set_defaults(**defaults)
    a = ap.parse_args(argv)
    if a.task == "all" and any(getattr(a, k) is not None for k in ("data", "image_size", "model", "batch_size")):
        ap.error("--data, --image-size, --model and --batch-size apply to one --task")
    if a.threads:
        torch.set_num_threads(a.threads)
    global DEVICE
    if a.accelerator == "gpu":
        if not torch.cuda.is_available():
            ap.error("--accelerator gpu: no CUDA GPU on this machine")
        DEVICE = torch.device("cuda", 0)
    else:
        DEVICE = torch.device("cpu")
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if DEVICE.type == "cuda" else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}{gpu}", flush=True)
    results = [bench(t, a) for t in (TASK_NAMES if a.task == "all" else (a.task,))]
    if len(results) > 1:
        print("summary: " + ", ".join(f"{r['task']} {r['ratio']:.2f}" for r in results))
    if a.json:
        import bench_common

        bench_common.write_result(Path(a.json), "train_throughput", argv=sys.argv[1:], torch=torch.__version__,
                                  threads=torch.get_num_threads(), precision=a.precision, runs=a.rounds,
                                  code=bench_common.code_state(), load_average=os.getloadavg()[0],
                                  optimizer="default" if os.environ.get("RECOGEN_FUSED_OPTIMIZER", "1").strip() == "0" else "fused",
                                  results=results)
    return results


if __name__ == "__main__":
    main()
