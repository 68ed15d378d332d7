"""Typed configs. ``--config FILE.yaml`` fills a config, command-line options override it, unknown
keys are an error, and the fully resolved config (every "auto" replaced) is saved in the run folder."""
from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

C = TypeVar("C")


@dataclass
class TrainConfig:
    """Options every task's training shares. ``None``/"auto" means: choose for the data."""

    data: str = "digits"
    out: str | None = None
    model: str = "auto"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    weights: str | None = None
    # data
    image_size: int | None = None
    channels: int | None = None
    data_dir: str = "data"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    limit: int | None = None
    augment: str = "auto"
    cache: bool = False  # folder:PATH: decode once into a memory-mapped uint8 file beside the data (data/cache.py)
    workers: int | None = None  # folder:PATH: processes decoding the files (None: one per CPU up to 4)
    # optimisation
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str = "adamw"
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    patience: int | None = None
    budget: str = "auto"  # wall-clock budget ("8m", "90s", "none"); "auto": the task's default
    # execution
    seed: int = 0
    precision: str = "auto"
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"  # auto, ddp or fsdp (Lightning's); several processes share each --batch-size
    num_nodes: int = 1
    channels_last: bool | None = None
    compile: bool = False  # torch.compile the network (tasks/base_module.py)
    progress: bool = True
    resume: bool = False

    def __post_init__(self) -> None:
        # The same checks for the CLI, YAML and the Python API: a bad value is one ConfigError before
        # anything is loaded or written.
        validate(self)


# Checks per field: (test, what the value must be). Fields absent here only get their type checked.
MAX_IMAGE_SIZE = 4096
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16", "bf16-true", "16-true", "64-true", "64")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
STRATEGIES = ("auto", "ddp", "fsdp")
_positive = (lambda v: v >= 1, "a whole number >= 1")
_fraction = (lambda v: 0 <= v < 1, "a number in [0, 1)")
RULES: dict[str, tuple[Any, str]] = {
    "image_size": (lambda v: 1 <= v <= MAX_IMAGE_SIZE, f"a whole number of pixels from 1 to {MAX_IMAGE_SIZE}"),
    "channels": (lambda v: v in (1, 3), "1 (grayscale) or 3 (RGB)"),
    "val_fraction": _fraction,
    "test_fraction": _fraction,
    "limit": _positive,
    "workers": (lambda v: v >= 0, "a whole number >= 0 (0: decode in the main process)"),
    "epochs": _positive,
    "batch_size": _positive,
    "lr": (lambda v: math.isfinite(v) and v > 0, "a positive finite number, e.g. 1e-3"),
    "weight_decay": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "patience": (lambda v: v >= 0, "a whole number >= 0"),
    # below 2**32: the per-epoch reseeds (seed * 100003 + epoch) must stay inside torch's 64-bit seed
    "seed": (lambda v: 0 <= v < 2**32, "a whole number from 0 to 4294967295"),
    "precision": (lambda v: v in PRECISIONS, "one of " + ", ".join(PRECISIONS)),
    "accelerator": (lambda v: v in ACCELERATORS, "one of " + ", ".join(ACCELERATORS)),
    "devices": (lambda v: bool(re.fullmatch(r"auto|-1|[1-9]\d*|\d+,|\d+(,\d+)+,?", v)),
                "auto, a number of devices >= 1, or a list of device indices like 0,1"),
    "strategy": (lambda v: v in STRATEGIES, "one of " + ", ".join(STRATEGIES)),
    "num_nodes": _positive,
    "augment": (lambda v: v in ("auto", "none", "light", "strong", "speed"), "one of auto, none, light, strong, speed (classify)"),
    "label_smoothing": _fraction,
    "unfreeze_at": (lambda v: v >= 1, "an epoch number >= 1 (epochs count from 0)"),
    "backbone_lr_mult": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0, e.g. 0.1"),
    "width": _positive,
    "latent_dim": _positive,
    "beta": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "ema": _fraction,
    "steps": _positive,
    "guidance": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
}
# Choices that depend on the task: config class name -> field -> allowed values.
CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "TrainConfig": {"optimizer": ("adamw", "sgd"), "schedule": ("onecycle", "cosine", "none")},
    "ClassifyConfig": {"recipe": ("default", "speed")},
    "GenerateConfig": {"optimizer": ("auto", "adam", "adamw"), "schedule": ("auto", "onecycle", "cosine", "none"),
                       "sampler": ("ddim", "dpm++")},
}


def _bad(name: str, value: Any, rule: str) -> ConfigError:
    return ConfigError(f"bad --{name.replace('_', '-')} {value!r} (YAML key {name}): it must be {rule}")


def _coerce(name: str, value: Any, t: Any) -> Any:
    """``value`` as the field's type ``t`` (int, float, bool, str, dict), or a ConfigError.

    Strings that spell a number are accepted for numeric fields: YAML 1.1 reads ``1e-3`` as a string.
    """
    if t is bool:
        if isinstance(value, bool):
            return value
        raise _bad(name, value, "true or false")
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
        raise _bad(name, value, RULES.get(name, (None, "a whole number"))[1])
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _bad(name, value, RULES.get(name, (None, "a number"))[1])
    if t is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return str(value if not isinstance(value, os.PathLike) else os.fspath(value))
        raise _bad(name, value, "a text value")
    if t is dict or typing.get_origin(t) is dict:
        if isinstance(value, dict):
            return value
        raise _bad(name, value, "a mapping (JSON object), e.g. {\"dropout\": 0.2}")
    return value


def validate(cfg: Any) -> None:
    """Coerce each field of the config ``cfg`` to its declared type and check its range, in place."""
    hints = typing.get_type_hints(type(cfg))
    choices: dict[str, tuple[str, ...]] = {}
    for klass in reversed(type(cfg).__mro__):
        choices.update(CHOICES.get(klass.__name__, {}))
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        t = hints[f.name]
        args = typing.get_args(t) if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union else (t,)
        if value is None:
            if type(None) in args:
                continue
            raise _bad(f.name, value, "given (it has no 'none' value)")
        base = next(a for a in args if a is not type(None))
        value = _coerce(f.name, value, base)
        object.__setattr__(cfg, f.name, value)
        if f.name in choices and value not in choices[f.name]:
            raise _bad(f.name, value, "one of " + ", ".join(choices[f.name]))
        rule = RULES.get(f.name)
        if rule is not None and not rule[0](value):
            raise _bad(f.name, value, rule[1])
    if cfg.val_fraction + cfg.test_fraction >= 1:
        raise ConfigError(f"--val-fraction {cfg.val_fraction} and --test-fraction {cfg.test_fraction} leave no "
                          "training images; their sum must be below 1")
    if cfg.budget != "auto":
        parse_budget(cfg.budget)


# ------------------------------------------------------------------ the --budget value ("8m30s")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh])")
OFF = ("none", "off", "0")


def parse_budget(text: str | float | int | None) -> float | None:
    """Seconds in a budget such as ``"90s"``, ``"5m"``, ``"1h30m"``, ``"1.5h"`` or ``300`` (seconds).

    ``None``, ``"none"`` and ``"off"`` mean no time limit. Anything else is a ConfigError naming the form.
    """
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower()
        if s in OFF:
            return None
        try:
            seconds = float(s)
        except ValueError:
            parts = _PART.findall(s)
            if not parts or _PART.sub("", s).strip():
                raise ConfigError(f"bad --budget {text!r}; use a duration like 90s, 5m, 1h30m or none") from None
            seconds = sum(float(v) * _UNITS[u] for v, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"bad --budget {text!r}: it must be a positive duration (e.g. 5m), or none")
    return seconds


def format_budget(seconds: float | None) -> str:
    """``510`` -> ``"8m30s"``; None -> ``"none"`` (the inverse of :func:`parse_budget`)."""
    if seconds is None:
        return "none"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (sec, "s")) if v) or "0s"


@dataclass
class ClassifyConfig(TrainConfig):
    """A classification training run."""

    recipe: str = "default"  # default, or speed (tasks/classify/speed.py)
    skip_bad_images: bool = False
    label_smoothing: float = 0.1
    synthetic: str | None = None
    # fine-tuning (tasks/finetune.py)
    freeze_backbone: bool = False
    unfreeze_at: int | None = None
    backbone_lr_mult: float | None = None  # None: 0.1 when starting from weights, else 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.unfreeze_at is not None and not self.freeze_backbone:
            raise ConfigError(f"--unfreeze-at {self.unfreeze_at} needs --freeze-backbone (there is nothing to unfreeze)")


@dataclass
class DetectConfig(TrainConfig):
    """An object-detection training run."""

    data: str = "shapes"


@dataclass
class SegmentConfig(TrainConfig):
    """A semantic-segmentation training run."""

    data: str = "shapes"
    loss: str = "auto"  # ce, or ce+dice (adds the soft Dice loss: thin and rare classes)


@dataclass
class GenerateConfig(TrainConfig):
    """A generative-model training run (vae, dcgan, ddpm). ``None``/"auto": chosen per model family."""

    model: str = "auto"
    augment: str = "none"
    optimizer: str = "auto"
    weight_decay: float = 0.0
    schedule: str = "auto"
    width: int | None = None
    latent_dim: int | None = None
    beta: float | None = None
    prior: str | None = None
    loss: str = "auto"
    spectral_norm: bool = False
    ema: float | None = None
    conditional: bool | None = None
    steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None


# The command-line help of each config field (the CLI makes one --option per field).
OPTION_HELP: dict[str, str] = {
    "data": "data set, e.g. digits, shapes[:COUNT], cifar10, folder:PATH, coco:JSON, yolo:PATH, masks:PATH (see `recogen datasets`)",
    "out": "run folder (default runs/<task>/<data>[N])",
    "model": "registered model name (see `recogen models`), or auto",
    "model_kwargs": "JSON of extra constructor arguments, e.g. '{\"dropout\": 0.2}'",
    "pretrained": "start from the library's published weights (needs network or a filled cache)",
    "weights": "start from a local weights file (.safetensors, .pt or Lightning .ckpt)",
    "image_size": "resize images to this side in pixels (default: the data's own)",
    "channels": "1 (grayscale) or 3 (RGB); default: the data's own",
    "data_dir": "where downloadable data sets are stored",
    "val_fraction": "fraction held out for validation when the data has no val split",
    "test_fraction": "fraction held out for testing when the data has no test split",
    "limit": "use at most this many training images",
    "cache": "folder:PATH data: decode the images once (in worker processes) into a uint8 file in a "
             ".recogen-cache folder beside PATH (or in ~/.cache/recogen if that is read-only), which later runs "
             "memory-map: no decoding, and data larger than memory trains through the OS page cache; rebuilt when "
             "files change",
    "workers": "folder:PATH data: worker processes that decode the image files (default: one per CPU up to 4, "
               "or $RECOGEN_DATA_WORKERS; 0 decodes in the main process)",
    "skip_bad_images": "skip unreadable images (with a warning and a count) instead of stopping",
    "augment": "augmentation preset: none, light, strong or auto; classify also speed (the speed recipe's "
               "integer shifts and alternating flips)",
    "epochs": "training epochs (default: chosen for the data size)",
    "batch_size": "global batch size: with several processes (--devices N, --num-nodes M) each process takes "
                  "batch/(N*M) images of every batch, so a run trains the same batches at any process count "
                  "(default: chosen for the data size)",
    "lr": "peak learning rate (default: chosen for the model)",
    "optimizer": "adamw or sgd",
    "weight_decay": "weight decay",
    "label_smoothing": "label smoothing of the cross-entropy loss",
    "recipe": "default (the data-aware recipe) or speed (the CIFAR-10 speed-run recipe: speednet with a data-whitened "
              "first layer, SGD Nesterov, label smoothing 0.2, lookahead, shifts and alternating flips, flip TTA); "
              "options given override it, except an optimiser, weight decay or label smoothing equal to its default",
    "schedule": "learning-rate schedule: onecycle, cosine or none",
    "patience": "stop early after this many epochs without a better validation score (default: on with a budget)",
    "budget": "wall-clock budget of the run, e.g. 90s, 5m, 1h30m, or none; the epochs and LR schedule are planned "
              "to end in it (default: the task's budget unless --epochs is given)",
    "seed": "random seed (data split, initialisation, augmentation)",
    "precision": "Lightning precision: 32-true, bf16-mixed, 16-mixed or auto",
    "accelerator": "cpu, gpu, mps or auto",
    "devices": "number of devices (processes per node; on a CPU, N processes), or auto",
    "strategy": "how several processes train: auto, ddp (DistributedDataParallel) or fsdp (fully sharded, GPUs "
                "only); only global rank 0 writes the run folder",
    "num_nodes": "number of machines (nodes) of a multi-node run (torchrun or SLURM's srun starts them)",
    "channels_last": "channels-last memory format for the network and its input batches (default: on for the CNN "
                     "classifiers, the segmenters, dcgan and vae; off for vit/cnn-rnn, the detectors and ddpm)",
    "compile": "compile the network with torch.compile (classify, segment, generate; not detect): slower first "
               "steps, then faster ones on a GPU (on a CPU it needs a C++ compiler); the saved weights and "
               "checkpoints are the same files as without",
    "progress": "show the progress bar",
    "synthetic": "RUN:N adds N images per class from a class-conditional `generate` run to the training split",
    "resume": "continue the run in --out from its last checkpoint",
    "freeze_backbone": "train only the classifier head; the backbone's weights and BatchNorm statistics stay fixed",
    "unfreeze_at": "with --freeze-backbone: train the whole network from this epoch on (counted from 0)",
    "backbone_lr_mult": "the backbone's learning rate as a fraction of --lr (default 0.1 when starting from "
                        "--pretrained or --weights, else 1)",
    # generation (GenerateConfig)
    "width": "base channel width of the generative network (default: per model)",
    "latent_dim": "size of the latent vector z (vae, dcgan)",
    "beta": "weight of the KL term of the VAE (beta-VAE; default 0.25)",
    "prior": "latent prior a vae samples from: gmm (a Gaussian mixture fitted to the training images' latents after "
             "training; the default) or normal (N(0, I))",
    "loss": "generate: GAN loss nonsaturating, hinge or wgan-gp; segment: ce or ce+dice (cross-entropy plus soft Dice)",
    "spectral_norm": "spectral normalisation in the GAN discriminator",
    "ema": "decay of the EMA of the generator/UNet weights used for sampling (0 turns it off)",
    "conditional": "class-conditional model (sample a class with `generate sample --class`; samples without --class "
                   "follow the training images' class mix); default: on for vae and ddpm when the data has 2+ classes, off for dcgan",
    "steps": "sampling steps of ddpm (default 15)",
    "sampler": "ddpm sampler: dpm++ (DPM-Solver++ 2M, with thresholding; the default) or ddim",
    "guidance": "classifier-free guidance scale of a conditional ddpm (1 = none)",
}


def from_dict(cls: type[C], d: dict[str, Any], source: str = "config") -> C:
    """Build ``cls`` from a dict; unknown keys raise ConfigError naming them and the valid keys."""
    names = {f.name for f in fields(cls)}
    odd = [k for k in d if not isinstance(k, str)]
    if odd:
        raise ConfigError(f"{source}: keys must be option names, got {', '.join(map(repr, odd[:3]))}; "
                          f"valid keys: {', '.join(sorted(names))}")
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {source}; valid keys: {', '.join(sorted(names))}")
    return cls(**d)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a ConfigError."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        d = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not UTF-8 text; save it as UTF-8") from None
    except RecursionError:
        raise ConfigError(f"{p} is nested too deeply to be a recogen config; a config is a flat mapping of option: value") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse {p}: {str(e).splitlines()[0]}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{p} must hold a mapping of option: value")
    return d


def save_yaml(obj: Any, path: str | Path) -> None:
    """Write a dataclass or dict as YAML, atomically."""
    import yaml

    from .utils import atomic_write_text

    d = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
    atomic_write_text(Path(path), yaml.safe_dump(d, sort_keys=False))
