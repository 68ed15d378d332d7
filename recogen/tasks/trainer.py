"""The Lightning Trainer of a run (logger, callbacks, precision), its optimiser and LR schedule, and
``fit`` with truthful messages on interruption."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import torch

from ..config import TrainConfig
from ..errors import ConfigError, RunError, TrainingInterrupted
from ..utils import bf16_supported as _mkldnn_bf16
from .budget import SCHEDULE_REBUILDERS
from .callbacks import _atomic_checkpoint_io, _budget_callbacks, _callbacks, _resumed_runs, lightning
from .runs import _first_line, _saved_epochs


def bf16_supported() -> bool:
    """Whether this CPU does bf16 arithmetic natively (AVX512-BF16 or AMX on x86, BF16 on Arm).

    oneDNN's own check (``utils.bf16_supported``) also says yes on AVX-512 CPUs without BF16, where
    bf16 is emulated: there bf16 autocast would be slower than fp32, so x86 also needs the instructions.
    """
    if not _mkldnn_bf16():
        return False
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch without these probes: oneDNN's answer
        return True


def auto_precision() -> str:
    """bf16 where the hardware runs it natively, fp16 on older GPUs, else fp32."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if bf16_supported() else "32-true"


# Tasks whose networks torch.compile cannot train usefully, and why (measured on a CPU, torch 2.14).
COMPILE_REFUSED = {
    "detect": ("torchvision's detectors have data-dependent shapes (boxes per image, kept anchors): torch.compile "
               "breaks their graph many times a step and recompiles as the shapes change (fcos-s at 64 px had not "
               "finished one epoch after 35 minutes of compiling)"),
}


def check_compile(cfg: TrainConfig, task: str | None = None) -> None:
    """Refuse ``--compile`` where torch.compile cannot work, before anything is loaded or written."""
    if not getattr(cfg, "compile", False):
        return
    if task in COMPILE_REFUSED:
        raise ConfigError(f"--compile is not supported for {task}: {COMPILE_REFUSED[task]}; train without it "
                          "(--no-compile)")
    try:
        import torch._dynamo

        supported = torch._dynamo.is_dynamo_supported()
    except Exception:  # noqa: BLE001 - an import error of torch's compiler is the same answer
        supported = False
    if not supported:
        import sys

        raise ConfigError(f"--compile: torch.compile is not supported with this Python ({sys.version.split()[0]}) "
                          f"and torch ({torch.__version__}); train with --no-compile")
    on_gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
    if not on_gpu and cfg.accelerator != "mps" and _cpp_compiler() is None:
        raise ConfigError("--compile on a CPU needs a C++ compiler (torch.compile builds its CPU kernels with "
                          "g++ or clang++; set CXX to another one): install one (e.g. apt-get install g++) or "
                          "train with --no-compile")


def _cpp_compiler() -> str | None:
    """The C++ compiler torch.compile would use on a CPU (CXX, else g++, clang++ or c++), or None."""
    import os
    import shutil

    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "clang++", "c++"]
    return next((path for path in map(shutil.which, names) if path), None)


def _compile_error(e: BaseException) -> bool:
    """Whether ``e`` comes from torch.compile (TorchDynamo tracing or the Inductor backend)."""
    return any(c.__module__.startswith(("torch._dynamo", "torch._inductor")) for c in type(e).__mro__)


def optimizer_impl(params) -> dict[str, bool]:
    """``fused=True`` where every parameter is a floating-point tensor on a device torch has fused optimiser
    kernels for (CPU and CUDA included), else {} (torch's default). ``RECOGEN_FUSED_OPTIMIZER=0`` turns it off.

    A fused AdamW updates all tensors in one kernel: on a 2-core CPU it took 0.7 ms a step instead
    of 5.6 (seed-cnn) and 11 ms instead of 99 (fcos-s) for torch's default per-tensor loop. It does
    the same arithmetic in another order (results agree to float rounding, about 1e-7 a step), so a
    seeded run follows another, equally good trajectory than with torch's default: the suite's learning
    thresholds were re-measured with it (the whole suite with and without it: one sanity check moved).
    """
    import os

    if os.environ.get("RECOGEN_FUSED_OPTIMIZER", "1").strip() == "0":
        return {}
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    devices = set(_get_fused_kernels_supported_devices())
    if tensors and all(torch.is_floating_point(p) and p.device.type in devices for p in tensors):
        return {"fused": True}
    return {}


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
    params = list(params)
    impl = optimizer_impl(params)
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **impl)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay, **impl)
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
        if getattr(module.cfg, "compile", False) and _compile_error(e):
            raise RunError(f"--compile: torch.compile failed on {module.cfg.model} ({type(e).__name__}: "
                           f"{_first_line(e)}); train it with --no-compile") from None
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
