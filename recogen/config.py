"""Typed configs. ``--config FILE.yaml`` fills a config, command-line options override it, unknown
keys are an error, and the fully resolved config (every "auto" replaced) is saved in the run folder."""
from __future__ import annotations

import dataclasses
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
    channels_last: bool | None = None
    progress: bool = True
    resume: bool = False


@dataclass
class ClassifyConfig(TrainConfig):
    """A classification training run."""

    skip_bad_images: bool = False
    label_smoothing: float = 0.1
    synthetic: str | None = None


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
    loss: str = "auto"
    spectral_norm: bool = False
    ema: float | None = None
    conditional: bool = False
    steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None


def from_dict(cls: type[C], d: dict[str, Any], source: str = "config") -> C:
    """Build ``cls`` from a dict; unknown keys raise ConfigError naming them and the valid keys."""
    names = {f.name for f in fields(cls)}
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
        d = yaml.safe_load(p.read_text()) or {}
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
