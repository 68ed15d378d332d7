"""The run folder and its config: choose or resume a run, read and write config.yaml, read checkpoints
safely, build the configured network, and the time-budget arithmetic every task's recipe uses."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..config import TrainConfig, from_dict, load_yaml, save_yaml
from ..data import DataOptions, parse_spec
from ..errors import ConfigError, RunError
from ..utils import check_writable_folder

C = TypeVar("C", bound=TrainConfig)


def data_options(cfg: TrainConfig) -> DataOptions:
    """The data-set options a config implies (the same ones rebuild the same splits at eval time)."""
    return DataOptions(image_size=cfg.image_size, channels=cfg.channels, data_dir=Path(cfg.data_dir).expanduser(),
                       seed=cfg.seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                       skip_bad_images=getattr(cfg, "skip_bad_images", False), limit=cfg.limit, cache=cfg.cache,
                       workers=cfg.workers)


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
    if on_cpu and cfg.strategy == "fsdp":
        raise ConfigError("--strategy fsdp needs GPUs (Lightning's FSDP does not run on a CPU); on a CPU use "
                          "--strategy ddp")


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
    from .distributed import is_global_zero

    # In a multi-process run every process runs this with the same options: all check (reading only),
    # and only global rank 0 writes (the folder probe, the clean-up of a killed run's temporary files).
    lead = is_global_zero()
    check_environment(cfg)
    if not cfg.resume:
        out = Path(cfg.out).expanduser() if cfg.out else _default_out(task, cfg)
        if lead:
            check_writable_folder(out)
        if _has_run(out):
            raise RunError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        return dataclasses.replace(cfg, out=str(out)), out, None
    if not cfg.out:
        raise ConfigError("--resume needs --out RUN_DIR naming the run to continue")
    out = Path(cfg.out).expanduser()
    last = out / "checkpoints" / "last.ckpt"
    if not last.is_file() or not (out / "config.yaml").is_file():
        raise RunError(f"nothing to resume in {out}: {last} or config.yaml is missing")
    if lead:
        check_writable_folder(out)
    saved = load_run_config(cls, out)
    done = load_checkpoint(last)["epoch"] + 1
    epochs = cfg.epochs if cfg.epochs is not None else saved.epochs
    if epochs is not None and epochs < done:
        raise ConfigError(f"--epochs {epochs} is fewer than the {done} epochs {out} has already trained; "
                          f"give --epochs {done} or more")
    resumed = dataclasses.replace(saved, resume=True, out=str(out), epochs=epochs, progress=cfg.progress)
    check_environment(resumed)
    if lead:
        _remove_partial_writes(out)
    return resumed, out, last


def _remove_partial_writes(run: Path) -> None:
    """Delete the temporary files of atomic writes (``utils.atomic_write``: ``.NAME.XXXX.tmp``) that a
    killed process left in ``run``: never read, they only take space (one can be a checkpoint's size).
    One a live process still writes (a ``recogen report RUN`` beside the resume) is locked, and kept."""
    from ..utils import remove_stale_temporaries_in

    for folder in (run, run / "checkpoints"):
        if folder.is_dir():
            remove_stale_temporaries_in(folder)


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


def resolve_budget(cfg: TrainConfig, default: str, why: list[str]) -> float | None:
    """Resolve ``cfg.budget`` in place (call before the epochs are filled in) and return its seconds.

    "auto" is the task's ``default`` unless ``--epochs`` was given (then exact epochs, no clock).
    With a budget and no ``--patience``, early stopping watches for a validation plateau.
    """
    from ..config import format_budget, parse_budget

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


def _saved_epochs(last: Path) -> int | None:
    """Epochs finished in the checkpoint ``last`` (None if it cannot be read): for messages only."""
    try:
        return load_checkpoint(last)["epoch"] + 1
    except Exception:  # a damaged file: the message then names no epoch
        return None


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
