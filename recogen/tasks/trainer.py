"""The Lightning Trainer of a run (logger, callbacks, precision), its optimiser and LR schedule, and
``fit`` with truthful messages on interruption."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import torch

from ..config import TrainConfig
from ..errors import ConfigError, RunError, TrainingInterrupted
from ..utils import bf16_supported
from .budget import SCHEDULE_REBUILDERS
from .callbacks import _atomic_checkpoint_io, _budget_callbacks, _callbacks, _resumed_runs, lightning
from .runs import _first_line, _saved_epochs

def auto_precision() -> str:
    """bf16 where the hardware runs it natively, fp16 on older GPUs, else fp32."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if bf16_supported() else "32-true"




def make_scheduler(opt, schedule: str, lr: float | list[float], total_steps: int, warmup: float = 0.25):
    """The per-step LR schedule ``schedule`` (onecycle, cosine or none) for ``opt``; None for a constant rate.

    ``warmup`` is one-cycle's warm-up fraction. A very short run (a few batches) gets at least one step
    per one-cycle phase, and below 3 steps a constant rate: OneCycleLR divides by zero otherwise.
    """
    if schedule not in ("onecycle", "cosine", "none"):
        raise ConfigError(f"unknown --schedule {schedule!r}; choose onecycle, cosine or none")
    if schedule == "none" or total_steps < 3:
        return None
    if schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps,
                                                    pct_start=max(warmup, 2 / total_steps))
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    # A time budget re-plans the run's length after its first epochs (tasks/budget.py): it needs the
    # same schedule for another total. Kept outside the scheduler: its __dict__ is its checkpoint state.
    SCHEDULE_REBUILDERS[sched] = lambda total: make_scheduler(opt, schedule, lr, total, warmup)
    return sched


def configure_optimizers(cfg: TrainConfig, params, total_steps: int):
    """AdamW or SGD with a one-cycle, cosine or no schedule (stepped every batch), as Lightning wants it."""
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    else:
        raise ConfigError(f"unknown --optimizer {cfg.optimizer!r}; choose adamw or sgd")
    # Parameter groups with their own rates (fine-tuning: backbone vs head) peak at their own rates.
    lrs = [g.get("lr", cfg.lr) for g in opt.param_groups]
    sched = make_scheduler(opt, cfg.schedule, lrs if len(set(lrs)) > 1 else cfg.lr, total_steps)
    if sched is None:
        return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def make_trainer(cfg: TrainConfig, run: Path, *, monitor: str | None, mode: str = "max", steps_per_epoch: int,
                 extra_callbacks: Iterable = (), t_start: float | None = None, reserve: tuple[float, float] = (3.0, 1.5)):
    """The Lightning Trainer of a run: TensorBoard under ``run/tensorboard``, history, checkpoints, early
    stop, and the time budget.

    ``t_start`` (``time.perf_counter()`` when the run began) turns on ``cfg.budget``; ``reserve`` =
    (seconds, multiple of one validation pass) kept for the final evaluation and writing after training.
    """
    pl = lightning()
    import warnings

    from lightning.pytorch.loggers import TensorBoardLogger

    # Lightning-internal deprecation noise under this torch version; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
    # Resuming reuses the run's checkpoint folder on purpose.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    for name in ("lightning.pytorch", "lightning.fabric"):
        # Lightning's banner lines (GPU available..., tips) are noise in a CLI that prints its own summary.
        logging.getLogger(name).setLevel(logging.WARNING)
    devices: Any = cfg.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    return pl.Trainer(
        max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=devices, precision=cfg.precision,
        strategy=cfg.strategy, num_nodes=cfg.num_nodes,
        logger=TensorBoardLogger(save_dir=str(run), name="tensorboard", version="", default_hp_metric=False),
        callbacks=_callbacks(run, cfg, monitor, mode) + _budget_callbacks(cfg, run, t_start, reserve) + list(extra_callbacks),
        plugins=[_atomic_checkpoint_io()],
        enable_progress_bar=cfg.progress, enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, steps_per_epoch)), default_root_dir=str(run),
    )


def fit(trainer, module, train_dl, val_dl, ckpt: Path | None) -> None:
    """``trainer.fit`` that turns Lightning's Ctrl+C / SIGTERM shutdown into a :class:`TrainingInterrupted`
    (a KeyboardInterrupt) whose message says truthfully what is saved, and a checkpoint that does not fit
    this run into a RunError."""
    from .distributed import end_process_group

    run = Path(trainer.default_root_dir)
    try:
        trainer.fit(module, train_dl, val_dl, ckpt_path=str(ckpt) if ckpt else None)
        end_process_group()  # several processes: what follows is global rank 0's alone
    except SystemExit:
        # Lightning turns Ctrl+C into a graceful shutdown and sys.exit(1), and SIGTERM into a
        # SIGTERMException (a SystemExit); what the last finished epoch saved is kept.
        if trainer.interrupted:
            import signal

            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning set SIG_IGN
            raise TrainingInterrupted(_interrupted_message(run)) from None
        raise
    except KeyboardInterrupt as e:
        if isinstance(e, TrainingInterrupted):
            raise
        raise TrainingInterrupted(_interrupted_message(run)) from None
    except (RuntimeError, KeyError, ValueError) as e:
        if ckpt is not None and id(trainer) not in _resumed_runs:
            raise RunError(f"cannot resume from {ckpt}: it does not fit this run ({_first_line(e)}); "
                           "delete the checkpoints folder to start over") from None
        raise
    finally:
        _resumed_runs.discard(id(trainer))


def _interrupted_message(run: Path) -> str:
    last = run / "checkpoints" / "last.ckpt"
    if last.is_file():
        done = _saved_epochs(last)
        what = f"epoch {done} is saved" if done else "the last finished epoch is saved"
        return f"interrupted; {what} in {last} (continue with --resume --out {run})"
    return (f"interrupted before the first epoch finished: no checkpoint was saved in {run}; "
            f"run the same command again to start over")
