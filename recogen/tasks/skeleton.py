"""The one training and evaluation skeleton every task runs; a task's spec supplies only what differs.

train: prepare the run folder -> data -> default recipe -> model -> batches -> LightningModule -> fit ->
best checkpoint -> run artifact (card + weights) -> finish (evaluate, or samples) -> report.html.
Library code logs (``recogen.train``); the CLI shows those lines.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Iterable

from ..errors import DataError, RunError
from . import runs, trainer

log = logging.getLogger("recogen.train")


def train(task, config: Any = None, callbacks: Iterable | None = None, **options: Any) -> Path:
    """Train ``task`` (a :class:`~recogen.tasks.spec.Task`) with ``config`` (a config object, dict or YAML
    path) updated by ``options``; returns the run folder (config.yaml, checkpoints/, tensorboard/, history.json, model.safetensors + model.json,
    the task's metrics and plots, report.html)."""
    import torch

    from ..artifact import save_portable
    from ..data.manifest import write_manifest
    from ..utils import seed_everything

    from ..errors import ConfigError
    from .distributed import is_global_zero

    # Several processes (--devices N --strategy ddp, torchrun, srun) each run all of this; only global
    # rank 0 writes (run folder, report, model) and logs. The others train, and return after fit.
    lead = is_global_zero()
    if not lead:
        logging.getLogger("recogen").setLevel(logging.WARNING)
    cfg, run, ckpt = runs.prepare_run(task.config, task.name, runs.make_config(task.config, config, options))
    if cfg.resume and "compile" in options:  # how to run, not what to train: --resume takes it from the command
        cfg = dataclasses.replace(cfg, compile=bool(options["compile"]))
    trainer.check_compile(cfg, task.name)  # --compile where torch.compile cannot work: one line, before any data loads
    if cfg.model != "auto":  # a model of another task (tv:resnet18 to detect) is one line, before any data loads
        from ..models import check_model_task

        check_model_task(cfg.model, task.name)
    cfg = task.prepare_config(cfg)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    splits = task.load_data(cfg)
    cfg, why = task.resolve_defaults(cfg, splits)
    splits = task.fit_data(cfg, splits)
    log.info(task.describe_data(cfg, splits))
    if why:
        log.info("auto: " + "; ".join(why))
    for note in getattr(splits, "notes", ()):
        log.info("note: " + note)

    model = task.build_model(cfg, splits)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_batches, val_batches = task.batches(cfg, splits)
    module = task.build_module(model, cfg, splits, train_batches)
    fitter = trainer.make_trainer(cfg, run, monitor=task.monitor, mode=task.mode, steps_per_epoch=len(train_batches),
                                  extra_callbacks=callbacks or (), t_start=t0,
                                  reserve=task.reserve(splits))
    world = fitter.num_devices * fitter.num_nodes
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch and must divide evenly among the "
                          f"{world} processes of this run; use a multiple of {world}")
    if world > 1 and getattr(module, "single_process_only", None):
        raise ConfigError(f"{module.single_process_only}: not supported yet in a run of {world} processes; "
                          "train it in one process")
    if lead:
        runs.save_config(cfg, run)
        write_manifest(run, splits, cfg)  # which images each split holds (splits.json)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    per = f" ({cfg.batch_size // world} in each of {world} processes)" if world > 1 else ""
    log.info(f"model {cfg.model}: {n_params / 1e6:.2f}M trainable parameters; {runs.plan_text(cfg)}, "
             f"batch {cfg.batch_size}{per}, {cfg.precision}; run folder {run}")

    trainer.fit(fitter, module, train_batches, val_batches, ckpt)
    if not fitter.is_global_zero:
        return run
    runs.load_best(module, run)
    from .base_module import uncompile

    # Evaluation and sampling run the network eagerly (--compile would compile again for eval mode).
    model = uncompile(module.model).to(memory_format=torch.contiguous_format).cpu().eval()
    task.finalize_model(model, cfg, splits)
    card = save_portable(run, model, task.card(cfg, model, splits))
    train_s = time.perf_counter() - t0
    summary = task.finish(model, card, splits, run, cfg)
    runs.write_run_report(run)
    log.info(f"trained {fitter.current_epoch} epochs in {train_s:.1f} s; {summary}; wrote {run}")
    return run


def evaluate(task, run: str | Path, data: str | None = None, split: str | None = None, write: bool = True,
             device: str = "cpu") -> dict[str, Any]:
    """Evaluate a trained run of ``task`` on a split of its data (test, else val) or of another data set
    with the same classes; the task's :meth:`~recogen.tasks.spec.Task.evaluate_model` writes its files."""
    from ..artifact import load_portable
    from ..utils import check_writable_folder

    run = Path(run)
    model, card = load_portable(run, device)
    if card.get("task") != task.name:
        raise RunError(f"{run} holds a {card.get('task')} model, not a {task.noun}")
    if write and run.is_dir():  # before any data is loaded
        check_writable_folder(run, "run folder", "pass --no-write to only print the metrics, or make it writable")
    cfg = runs.load_run_config(task.config, run) if (run / "config.yaml").is_file() else task.config(data=card["data"])
    spec = data or cfg.data
    opts = runs.data_options(cfg)
    if data and data != cfg.data:
        # Another data set: at the model's size, and all of it is the split asked for unless it defines one.
        opts = dataclasses.replace(opts, image_size=card["image_size"], channels=task.eval_channels(card), limit=None)
    splits = task.create_splits(spec, opts)
    classes = task.classes(splits)
    if classes != card["classes"]:
        raise DataError(f"data {spec!r} has classes {classes[:5]}... but the model was trained on "
                        f"{card['classes'][:5]}...; evaluate on data with the same classes in the same order")
    split = split or ("test" if splits.test is not None else "val")
    return task.evaluate_model(model, card, splits.split(split), run if write and run.is_dir() else None, split, spec,
                               has_test=splits.test is not None)


def write_metrics(run: Path, split: str, metrics: dict[str, Any]) -> Path:
    """``metrics.json`` for the test split, ``metrics_<split>.json`` for others."""
    from ..utils import write_json

    path = Path(run) / ("metrics.json" if split == "test" else f"metrics_{split}.json")
    write_json(path, metrics)
    return path
