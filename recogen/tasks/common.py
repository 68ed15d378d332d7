"""Training machinery every task shares: run folders, configs, the Lightning trainer and its
callbacks (history, atomic checkpoints, early stopping), optimisers and resume."""
from __future__ import annotations

import dataclasses
import json
import logging
import time
import weakref
from pathlib import Path
from typing import Any, Iterable, TypeVar

import torch

from ..config import TrainConfig, from_dict, load_yaml, save_yaml
from ..data import DataOptions, parse_spec
from ..data.loaders import TensorBatches
from ..errors import ConfigError, RunError, TrainingInterrupted, UserError
from ..utils import atomic_write, bf16_supported, check_writable_folder, write_json

C = TypeVar("C", bound=TrainConfig)

# One INFO line per finished epoch (see EpochLog); the CLI shows the ``recogen`` loggers' INFO lines.
epoch_log = logging.getLogger("recogen.train")


class LossNotFinite(UserError):
    """The training loss became NaN or infinite; the message says where and which checkpoint is good."""


def lightning():
    """``lightning.pytorch``, imported on first use (it takes seconds)."""
    import lightning.pytorch as pl

    return pl


def auto_precision() -> str:
    """bf16 where the hardware runs it natively, fp16 on older GPUs, else fp32."""
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if bf16_supported() else "32-true"


class EpochBatches(TensorBatches):
    """TensorBatches that Lightning re-seeds each epoch through the ``sampler.set_epoch`` protocol."""

    @property
    def sampler(self):
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def data_options(cfg: TrainConfig) -> DataOptions:
    """The data-set options a config implies (the same ones rebuild the same splits at eval time)."""
    return DataOptions(image_size=cfg.image_size, channels=cfg.channels, data_dir=Path(cfg.data_dir).expanduser(),
                       seed=cfg.seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                       skip_bad_images=getattr(cfg, "skip_bad_images", False), limit=cfg.limit)


def make_config(cls: type[C], config: Any, options: dict[str, Any]) -> C:
    """A config of ``cls`` from another config, a dict or a YAML path, updated by ``options``."""
    if isinstance(config, TrainConfig):
        base = dataclasses.asdict(config)
    elif isinstance(config, (str, Path)):
        base = load_yaml(config)
    else:
        base = dict(config or {})
    return from_dict(cls, {**base, **options})


def load_run_config(cls: type[C], run: Path) -> C:
    """The resolved config saved in a run folder."""
    return from_dict(cls, load_yaml(run / "config.yaml"), str(run / "config.yaml"))


def _default_out(task: str, cfg: TrainConfig) -> Path:
    base = Path("runs") / task / parse_spec(cfg.data)[0]
    out, k = base, 2
    while out.exists():
        out, k = base.with_name(f"{base.name}{k}"), k + 1
    return out


def check_environment(cfg: TrainConfig) -> None:
    """Refuse an accelerator or precision this machine cannot run, before anything is loaded or written."""
    acc = cfg.accelerator
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--accelerator {acc}: no CUDA GPU is available on this machine; use --accelerator cpu or auto")
    if acc == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--accelerator mps: Apple's MPS is not available on this machine; use --accelerator cpu or auto")
    on_cpu = acc == "cpu" or (acc == "auto" and not torch.cuda.is_available() and not torch.backends.mps.is_available())
    if on_cpu and cfg.precision in ("16-mixed", "16", "16-true"):
        raise ConfigError(f"--precision {cfg.precision} (float16) needs a GPU; on a CPU use bf16-mixed, 32-true or auto")
    devices = str(cfg.devices)
    if on_cpu and ("," in devices or devices == "-1"):
        raise ConfigError(f"--devices {devices} names device indices, which only GPUs have; on a CPU use "
                          "--devices N (N processes) or auto")


def _has_run(out: Path) -> bool:
    return (out / "model.json").exists() or any((out / "checkpoints").glob("*.ckpt"))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a Lightning checkpoint with ``torch.load(weights_only=True)``, whatever the environment says
    (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off): nothing in the file is executed."""
    import pickle

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise RunError(f"refused to load {path}: it holds objects other than weights and tensors, and loading "
                           "it could run code; use a checkpoint recogen wrote, or delete it to start over") from None
        raise RunError(f"cannot read checkpoint {path}: it is damaged ({_first_line(e)}); delete it to start over") from None
    except Exception as e:  # truncated or empty files raise RuntimeError, EOFError, ...
        raise RunError(f"cannot read checkpoint {path}: it is damaged or not a checkpoint ({_first_line(e)}); "
                       "delete it to start over") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or not isinstance(ckpt.get("epoch"), int):
        raise RunError(f"{path} is not a Lightning checkpoint written by recogen; delete it to start over")
    return ckpt


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def prepare_run(cls: type[C], task: str, cfg: C) -> tuple[C, Path, Path | None]:
    """Decide the run folder; for --resume, reload its resolved config (``--epochs`` may change).

    Returns ``(config, run folder, checkpoint to resume from or None)``. A folder that already holds
    a run is never trained into without --resume, so nothing saved is overwritten. Everything that can
    be checked before loading data is checked here: the folder is writable, the machine has the asked
    accelerator, and a resumed checkpoint reads safely and has not trained more epochs than asked for.
    """
    check_environment(cfg)
    if not cfg.resume:
        out = Path(cfg.out).expanduser() if cfg.out else _default_out(task, cfg)
        check_writable_folder(out)
        if _has_run(out):
            raise RunError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        return cfg, out, None
    if not cfg.out:
        raise ConfigError("--resume needs --out RUN_DIR naming the run to continue")
    out = Path(cfg.out).expanduser()
    last = out / "checkpoints" / "last.ckpt"
    if not last.is_file() or not (out / "config.yaml").is_file():
        raise RunError(f"nothing to resume in {out}: {last} or config.yaml is missing")
    check_writable_folder(out)
    saved = load_run_config(cls, out)
    done = load_checkpoint(last)["epoch"] + 1
    epochs = cfg.epochs if cfg.epochs is not None else saved.epochs
    if epochs is not None and epochs < done:
        raise ConfigError(f"--epochs {epochs} is fewer than the {done} epochs {out} has already trained; "
                          f"give --epochs {done} or more")
    resumed = dataclasses.replace(saved, resume=True, out=str(out), epochs=epochs, progress=cfg.progress)
    check_environment(resumed)
    _remove_partial_writes(out)
    return resumed, out, last


def _remove_partial_writes(run: Path) -> None:
    """Delete the temporary files of atomic writes (``utils.atomic_write``: ``.NAME.XXXX.tmp``) that a
    killed process left in ``run``: never read, they only take space (one can be a checkpoint's size)."""
    for folder in (run, run / "checkpoints"):
        for tmp in folder.glob(".*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)


def create_model(name: str, model_kwargs: dict[str, Any], **kw: Any):
    """``recogen.models.create_model`` with ``--model-kwargs`` the model does not take as a ConfigError."""
    from ..models import create_model as create

    try:
        return create(name, **kw, **model_kwargs)
    except (TypeError, ValueError) as e:
        # An unknown key (TypeError "unexpected keyword argument") or a value the constructor refuses
        # (e.g. {"dropout": 2}: ValueError; {"dropout": "x"}: TypeError from a comparison). Without
        # --model-kwargs such an error is a bug of ours and stays a traceback.
        if not model_kwargs:
            raise
        raise ConfigError(f"bad --model-kwargs {json.dumps(model_kwargs)} for model {name}: {_first_line(e)}; "
                          "fix or remove the key(s)") from None


def save_config(cfg: TrainConfig, run: Path) -> None:
    """Write ``config.yaml``. A resumed run writes it only once its checkpoint is restored (make_trainer),
    so a resume that fails changes nothing."""
    if cfg.resume and (run / "config.yaml").is_file():
        return
    run.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, run / "config.yaml")


# scheduler -> function(total_steps) building the same schedule for another length (see make_scheduler).
SCHEDULE_REBUILDERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def make_scheduler(opt, schedule: str, lr: float, total_steps: int, warmup: float = 0.25):
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
    sched = make_scheduler(opt, cfg.schedule, cfg.lr, total_steps)
    if sched is None:
        return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


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
            run.mkdir(parents=True, exist_ok=True)
            save_yaml(cfg, run / "config.yaml")
            _resumed_runs.add(id(trainer))

    class FiniteLoss(pl.Callback):
        """Stop at the first step whose loss is NaN or infinite, before any checkpoint holds the broken
        weights: last.ckpt keeps the previous epoch. (EarlyStopping's check_finite only sees the monitored
        validation metric, once per epoch, and lets that epoch's checkpoints be written.)"""

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all()):
                raise LossNotFinite(_nonfinite_message(run, "loss", float(loss.detach().float().sum()),
                                                       f"at step {trainer.global_step} (epoch {trainer.current_epoch + 1}, "
                                                       f"batch {batch_idx + 1})"))

        def on_train_epoch_end(self, trainer, module):
            # The epoch's losses (validation, and those of manual-optimisation steps, e.g. a GAN's), before
            # this epoch's checkpoints are written (Lightning runs checkpoint callbacks last).
            for k, v in trainer.callback_metrics.items():
                if "loss" in k and not bool(torch.isfinite(v).all()):
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


def _saved_epochs(last: Path) -> int | None:
    """Epochs finished in the checkpoint ``last`` (None if it cannot be read): for messages only."""
    try:
        return load_checkpoint(last)["epoch"] + 1
    except Exception:  # a damaged file: the message then names no epoch
        return None


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
        """Write each checkpoint to a temporary file and rename it: an interrupted save keeps the old one."""

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            # Always weights_only=True (explicitly, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot undo it).
            return load_checkpoint(Path(path))

    return AtomicCheckpointIO()


def resolve_budget(cfg: TrainConfig, default: str, why: list[str]) -> float | None:
    """Resolve ``cfg.budget`` in place (call before the epochs are filled in) and return its seconds.

    "auto" is the task's ``default`` unless ``--epochs`` was given (then exact epochs, no clock).
    With a budget and no ``--patience``, early stopping watches for a validation plateau.
    """
    from .budget import format_budget, parse_budget

    text = (None if cfg.epochs is not None else default) if cfg.budget == "auto" else cfg.budget
    seconds = parse_budget(text)
    cfg.budget = format_budget(seconds)
    if seconds is not None:
        why.append(f"budget {cfg.budget} (epochs planned from the measured speed to end in it; --budget to change)")
    return seconds


def eval_reserve(splits, fixed: float) -> tuple[float, float]:
    """The time a budgeted run keeps for after training: ``fixed`` seconds (saving, plots) plus the final
    evaluation, estimated in validation passes (one, plus the test split's size in val splits)."""
    return fixed, 1.0 + len(splits.test or ()) / max(1, len(splits.val))


def plan_text(cfg: TrainConfig) -> str:
    """"12 epochs", or "at most 80 epochs in 8m" for a budgeted fresh run (the clock re-plans it)."""
    if cfg.budget not in (None, "none") and not cfg.resume:
        return f"at most {cfg.epochs} epochs in {cfg.budget}"
    return f"{cfg.epochs} epochs"


def plateau_patience(epochs: int) -> int:
    """Early-stopping patience of a budgeted run: a third of its epochs, at least 10 (one-cycle runs
    often stall at their peak learning rate and improve again as it falls)."""
    return max(10, epochs // 3)


def _budget_callbacks(cfg: TrainConfig, run: Path, t_start: float | None, reserve: tuple[float, float]):
    """The time-budget callback of a fresh budgeted run (none for --resume: its plan is in config.yaml)."""
    from .budget import budget_callback, parse_budget

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
        save_config(cfg, run)  # --resume continues the plan actually made

    fixed, per_val = reserve
    return [budget_callback(seconds, t_start, int(cfg.epochs), lambda val_s: fixed + per_val * val_s, on_replan)]


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
    run = Path(trainer.default_root_dir)
    try:
        trainer.fit(module, train_dl, val_dl, ckpt_path=str(ckpt) if ckpt else None)
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


def write_run_report(run: Path) -> Path:
    """``run/report.html`` (metrics, per-class table, curves, figures, config), written at the end of every
    training run; ``recogen report RUN`` rebuilds it."""
    from ..report import write_report

    return write_report(run)


def load_best(module, run: Path) -> None:
    """Load ``checkpoints/best.ckpt`` (if any) into the module, without unpickling code."""
    best = run / "checkpoints" / "best.ckpt"
    if best.is_file():
        module.load_state_dict(torch.load(str(best), map_location="cpu", weights_only=True)["state_dict"])
