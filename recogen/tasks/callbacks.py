"""The Lightning callbacks of a run: history.json, finite-loss guard, resume bookkeeping, per-epoch log
lines or the progress bar, atomic checkpoint writes and the time budget."""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..config import TrainConfig, save_yaml
from ..errors import UserError
from ..utils import atomic_write, write_json
from .runs import load_checkpoint, plateau_patience, save_config, _saved_epochs

# One INFO line per finished epoch (see EpochLog); the CLI shows the ``recogen`` loggers' INFO lines.
epoch_log = logging.getLogger("recogen.train")


class LossNotFinite(UserError):
    """The training loss became NaN or infinite; the message says where and which checkpoint is good."""


def lightning():
    """``lightning.pytorch``, imported on first use (it takes seconds)."""
    import lightning.pytorch as pl

    return pl


def _callbacks(run: Path, cfg: TrainConfig, monitor: str, mode: str):
    pl = lightning()
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    class History(pl.Callback):
        """Keeps ``history.json``: one row per finished epoch; a resumed run drops rows it will redo."""

        def __init__(self):
            self.path = run / "history.json"
            self.rows: list[dict[str, Any]] = []
            self.t0 = time.perf_counter()

        def on_train_start(self, trainer, module):
            if self.path.is_file():
                self.rows = [r for r in json.loads(self.path.read_text()) if r["epoch"] < trainer.current_epoch]

        def on_train_epoch_start(self, trainer, module):
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            m = {k: float(v) for k, v in trainer.callback_metrics.items()}
            row = {"epoch": trainer.current_epoch, **{k: round(v, 6) for k, v in m.items()},
                   "lr": trainer.optimizers[0].param_groups[0]["lr"], "time_s": round(time.perf_counter() - self.t0, 3)}
            self.rows.append(row)
            if trainer.is_global_zero:  # several processes: the first writes
                write_json(self.path, self.rows)

    class Resumed(pl.Callback):
        """On --resume: fit the restored LR schedule to the (possibly changed) epoch count, then write
        config.yaml. Both happen only once the checkpoint is restored, so a failed resume changes nothing."""

        def on_load_checkpoint(self, trainer, module, checkpoint):
            # The lengths of the schedules the checkpoint's run planned (no schedule: a run too short for one).
            self.saved = [s.get("total_steps", s.get("T_max")) for s in checkpoint.get("lr_schedulers") or []]

        def on_fit_start(self, trainer, module):
            # Before the checkpoint's scheduler states replace them: the lengths this run plans.
            self.planned = [_schedule_total(sc.scheduler) for sc in trainer.lr_scheduler_configs]

        def on_train_start(self, trainer, module):
            planned = getattr(self, "planned", [])
            if planned and getattr(self, "saved", planned) != planned:
                # --epochs changed: rebuild the schedule for the new length from the step reached (as
                # the time budget does), instead of stepping past the old schedule's end.
                from .budget import replan

                for sc in trainer.lr_scheduler_configs:
                    sc.scheduler.last_epoch = max(sc.scheduler.last_epoch, trainer.global_step)
                replan(trainer, int(trainer.max_epochs))
            if trainer.is_global_zero:
                run.mkdir(parents=True, exist_ok=True)
                save_yaml(cfg, run / "config.yaml")
            _resumed_runs.add(id(trainer))

    class FiniteLoss(pl.Callback):
        """Stop at the first step whose loss is NaN or infinite, before any checkpoint holds the broken
        weights: last.ckpt keeps the previous epoch. (EarlyStopping's check_finite only sees the monitored
        validation metric, once per epoch, and lets that epoch's checkpoints be written.)

        Reading a value on the host waits for the device: on a GPU that is done every
        :data:`FINITE_CHECK_EVERY` steps and at each epoch's last step (before its checkpoints), not
        every step; the first bad step is recorded on the device meanwhile, so the message names it
        exactly. On a CPU, where reading costs nothing, every step is checked."""

        def on_train_epoch_start(self, trainer, module):
            self.pending = None  # accelerator: (steps taken, first bad one or -1, its loss) on the device
            self.global_steps: list[int] = []  # trainer.global_step after each batch of this epoch

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if not isinstance(loss, torch.Tensor):
                return
            loss = loss.detach()
            if _reading_is_free(loss.device):
                if not _all_finite(trainer, loss):
                    self._stop(trainer, trainer.global_step, batch_idx, float(loss.float().sum()))
                return
            # On the device, without waiting for it: count the steps, keep the first bad one and its loss.
            loss = loss.float().sum()
            if getattr(self, "pending", None) is None:
                self.pending = (torch.zeros((), device=loss.device), torch.full((), -1.0, device=loss.device),
                                torch.zeros((), device=loss.device))
                self.global_steps = []
            count, first, first_loss = self.pending
            count += 1
            new = ~torch.isfinite(loss) & (first < 0)
            self.pending = (count, torch.where(new, count, first), torch.where(new, loss, first_loss))
            self.global_steps.append(trainer.global_step)
            last = batch_idx + 1 == trainer.num_training_batches
            if (last or len(self.global_steps) % FINITE_CHECK_EVERY == 0) and not _all_finite(trainer, self.pending[2]):
                k = int(self.pending[1]) - 1  # this epoch's batch with the first bad loss
                self._stop(trainer, self.global_steps[k], batch_idx - (len(self.global_steps) - 1 - k),
                           float(self.pending[2]))

        def _stop(self, trainer, step: int, batch_idx: int, value: float):
            raise LossNotFinite(_nonfinite_message(run, "loss", value, f"at step {step} (epoch {trainer.current_epoch + 1}, "
                                                                       f"batch {batch_idx + 1})"))

        def on_train_epoch_end(self, trainer, module):
            # The epoch's losses (validation, and those of manual-optimisation steps, e.g. a GAN's), before
            # this epoch's checkpoints are written (Lightning runs checkpoint callbacks last).
            for k, v in trainer.callback_metrics.items():
                if "loss" in k and not _all_finite(trainer, v):
                    raise LossNotFinite(_nonfinite_message(run, k, float(v.float().sum()),
                                                           f"in epoch {trainer.current_epoch + 1} (step {trainer.global_step})"))

    cbs = [
        FiniteLoss(),
        # Saved at the end of the training epoch, after History wrote that epoch's row (Lightning runs
        # checkpoint callbacks last, in this order), so a crash between the two never loses a history row.
        ModelCheckpoint(dirpath=run / "checkpoints", filename="best", monitor=monitor, mode=mode,
                        save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True),
        # last.ckpt after every epoch, whether or not the monitored metric improved (save_last of the
        # checkpoint above is written only when best.ckpt is), so --resume never repeats an epoch.
        ModelCheckpoint(dirpath=run / "checkpoints", filename="last", monitor=None, save_top_k=1,
                        enable_version_counter=False, save_on_train_epoch_end=True),
        History(),
    ]
    if cfg.resume:
        cbs.append(Resumed())
    cbs.append(progress_bar() if cfg.progress else EpochLog())
    patience = cfg.patience
    if patience is None and monitor and cfg.budget not in (None, "none") and not cfg.resume:
        patience = plateau_patience(int(cfg.epochs))  # re-set when the budget re-plans the epochs
    if patience and monitor:
        cbs.append(EarlyStopping(monitor=monitor, mode=mode, patience=patience))
    return cbs


# On a GPU, how many training steps may pass between two finite-loss checks (each waits for the device).
FINITE_CHECK_EVERY = 32


def _reading_is_free(device: torch.device) -> bool:
    """Whether reading a tensor of ``device`` on the host costs no wait (a CPU's: it is computed already)."""
    return device.type == "cpu"


def _all_finite(trainer, value: torch.Tensor) -> bool:
    """Whether ``value`` is finite in every process of the run: each process sees only its own share of a
    batch, and all must stop together (one that raised alone would leave the others waiting)."""
    # One number on a CPU: read it (one call, no tensor ops); else one reduction and one read.
    finite = math.isfinite(value.item()) if value.numel() == 1 and value.device.type == "cpu" else \
        bool(torch.isfinite(value).all())
    if trainer.world_size > 1:
        finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
    return finite


def _nonfinite_message(run: Path, name: str, value: float, where: str) -> str:
    last = run / "checkpoints" / "last.ckpt"
    if last.is_file():
        done = _saved_epochs(last)
        good = f"the last good checkpoint is {last}" + (f" (epoch {done})" if done else "")
    else:
        good = f"no epoch had finished, so {run} holds no checkpoint"
    what = "nan" if value != value else "inf" if value > 0 else "-inf"
    return f"{name} became {what} {where}; lower --lr or check the data; {good}"


def progress_bar():
    """Lightning's progress bar (Rich when installed, else tqdm) with 1-based epochs: "Epoch 3/3" on the
    last of 3 (Lightning's own counts from 0 and shows "Epoch 2/2")."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE

    if _RICH_AVAILABLE:
        class EpochBar(RichProgressBar):
            def _get_train_description(self, current_epoch: int) -> str:
                text = f"Epoch {current_epoch + 1}" + (f"/{self.trainer.max_epochs}" if self.trainer.max_epochs else "")
                # Padded as Lightning pads it, so the bar does not jump between training and validation.
                return f"{text:{len(self.validation_description)}}"

        return EpochBar()

    class EpochTqdm(TQDMProgressBar):
        def on_train_epoch_start(self, trainer, *args):
            super().on_train_epoch_start(trainer, *args)
            self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    return EpochTqdm()


def _epoch_log_class():
    pl = lightning()

    class EpochLog(pl.Callback):
        """One line per finished epoch on the ``recogen.train`` logger (INFO), used instead of the progress
        bar (``--no-progress``): epoch i/N, the numbers the progress bar shows (train loss, validation
        metrics) and the epoch's seconds. Library code only logs; the CLI shows INFO lines."""

        def on_train_epoch_start(self, trainer, module):
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            if not epoch_log.isEnabledFor(logging.INFO):
                return
            metrics = {k: float(v) for k, v in trainer.progress_bar_metrics.items() if k != "v_num"}
            train = [k for k in metrics if not k.startswith("val")]
            vals = [k for k in metrics if k.startswith("val")]
            text = "  ".join(f"{k} {metrics[k]:.4g}" for k in train + vals)
            seconds = time.perf_counter() - getattr(self, "t0", time.perf_counter())
            epoch_log.info("epoch %d/%s  %s  %.1f s", trainer.current_epoch + 1, trainer.max_epochs, text, seconds)

    return EpochLog


def EpochLog():  # noqa: N802 - a callback instance, built on first use (Lightning imports slowly)
    return _epoch_log_class()()


# ids of trainers whose resumed checkpoint was restored (fit tells a failed restore from a failed run).
_resumed_runs: set[int] = set()


def _schedule_total(sched) -> int | None:
    """The length in steps of a per-step schedule (OneCycleLR, CosineAnnealingLR), None if unknown."""
    for name in ("total_steps", "T_max"):
        if hasattr(sched, name):
            return int(getattr(sched, name))
    return None


def _atomic_checkpoint_io():
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Write each checkpoint to a temporary file and rename it: an interrupted save keeps the old one.

        An epoch that improves writes best.ckpt and last.ckpt, which then usually hold the same
        checkpoint: the second is a copy of the first file's bytes (what torch.save would write again,
        at a fraction of its cost) whenever its content is the first's, tensor for tensor."""

        def __init__(self):
            super().__init__()
            self.previous: tuple[Any, Path] | None = None  # (checkpoint, file) of the last save

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            import shutil

            prev = self.previous
            if prev is not None and prev[1] != Path(path) and prev[1].is_file() and _same_content(prev[0], checkpoint):
                atomic_write(Path(path), lambda tmp: shutil.copyfile(prev[1], tmp))
            else:
                atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))
            self.previous = (checkpoint, Path(path))

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            # Always weights_only=True (explicitly, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot undo it).
            return load_checkpoint(Path(path))

    return AtomicCheckpointIO()


def _same_content(a: Any, b: Any) -> bool:
    """Whether checkpoints ``a`` and ``b`` serialise to the same bytes: the same keys in the same order,
    equal plain values, and tensors that are views of the same storage (same place, shape, strides,
    dtype) not modified in between (same version counter). Anything else counts as different."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a is b or (a.device == b.device and a.dtype == b.dtype and a.shape == b.shape
                          and a.stride() == b.stride() and a.storage_offset() == b.storage_offset()
                          and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
                          and a._version == b._version and a.requires_grad == b.requires_grad)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same_content(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_content(x, y) for x, y in zip(a, b))
    if isinstance(a, (str, bytes, int, float, bool, type(None))):
        return a == b
    return False  # any other object: serialised again


def _budget_callbacks(cfg: TrainConfig, run: Path, t_start: float | None, reserve: tuple[float, float]):
    """The time-budget callback of a fresh budgeted run (none for --resume: its plan is in config.yaml)."""
    from ..config import parse_budget
    from .budget import budget_callback

    seconds = parse_budget(cfg.budget)
    if seconds is None or t_start is None or cfg.resume:
        return []
    auto_patience = cfg.patience is None

    def on_replan(trainer, epochs: int) -> None:
        from lightning.pytorch.callbacks import EarlyStopping

        cfg.epochs = epochs
        if auto_patience:
            cfg.patience = plateau_patience(epochs)
            for cb in trainer.callbacks:
                if isinstance(cb, EarlyStopping):
                    cb.patience = cfg.patience
        if trainer.is_global_zero:
            save_config(cfg, run)  # --resume continues the plan actually made

    fixed, per_val = reserve
    return [budget_callback(seconds, t_start, int(cfg.epochs), lambda val_s: fixed + per_val * val_s, on_replan)]
