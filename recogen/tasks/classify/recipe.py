"""The default recipe of classification: model, batch, epochs for the data size, LR, augmentation, precision."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from ...config import ClassifyConfig
from ...data import ImageSplits
from ...errors import ConfigError
from ..runs import resolve_budget
from ..trainer import auto_precision

DEFAULT_BUDGET = "10m"  # a cap: small data sets finish their data_epochs() well before it
# epochs = EPOCHS_AT_1K / sqrt(images / 1000), clamped: a small set needs more passes over it. Chosen
# on mnist-5k's validation split (3,400 training images, cnn-s, seeds 0/1: 14 epochs 0.988/0.993,
# 20 epochs 0.990/0.995, 25 epochs 0.993/0.993, 30 epochs 0.995/0.995), so 30 epochs there.
EPOCHS_AT_1K, MIN_EPOCHS, MAX_EPOCHS = 55.0, 8, 100


def data_epochs(n_train: int) -> int:
    """How many epochs the data are worth: more passes for fewer images (chosen on validation splits)."""
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(EPOCHS_AT_1K / math.sqrt(max(n_train, 1) / 1000)))))


def resolve_defaults(cfg: ClassifyConfig, splits: ImageSplits) -> tuple[ClassifyConfig, list[str]]:
    """Replace every "auto"/None in ``cfg`` with a choice that fits the data; return the reasons.

    The recipe (AdamW + one-cycle, label smoothing, light augmentation, bf16 where the hardware has
    it) was tuned on digits and shapes; see BENCHMARKS.md for what it reaches.
    """
    n, size, chans = len(splits.train), splits.image_size[0], splits.channels
    why: list[str] = []
    c = dataclasses.replace(cfg, model_kwargs=dict(cfg.model_kwargs))
    if c.model == "auto":
        small = size <= 64 and n <= 20_000
        c.model = "cnn-s" if small else "resnet18"
        why.append(f"model {c.model} ({'small images, small data' if small else 'larger images or data'})")
    if c.batch_size is None:
        c.batch_size = 64 if n < 5_000 else 128
        why.append(f"batch size {c.batch_size} ({n} training images)")
    budget = resolve_budget(c, DEFAULT_BUDGET, why)
    if c.epochs is None:
        c.epochs = data_epochs(n)
        steps = max(1, n // c.batch_size)
        why.append(f"{'at most ' if budget else ''}{c.epochs} epochs (~{c.epochs * steps} steps; fewer images need more passes)")
    _check_unfreeze(c, explicit_epochs=cfg.epochs is not None, why=why)
    library = ":" in c.model  # tv:NAME / timm:NAME (models/sources.py)
    if c.lr is None:
        is_vit = c.model.startswith("vit")
        # A library model from weights gets its small rate from --backbone-lr-mult instead (the head
        # it trains is new); our short list keeps its measured rates.
        c.lr = ((5e-4 if is_vit else 1e-3 if c.model.startswith("resnet") or library else 3e-3)
                * (0.1 if c.pretrained and not library else 1))
        why.append(f"lr {c.lr:g} ({c.optimizer}, {c.schedule})")
    if c.backbone_lr_mult is None:
        from_weights = library and (c.pretrained or c.weights is not None)
        c.backbone_lr_mult = 0.1 if from_weights else 1.0
        if from_weights:
            why.append(f"backbone lr x{c.backbone_lr_mult:g} (fine-tuning pretrained weights)")
    if c.augment == "auto":
        c.augment = "light" if n < 50_000 else "strong"
        why.append(f"augment {c.augment}")
    if c.precision == "auto":
        c.precision = auto_precision()
        why.append(f"precision {c.precision}")
    if c.channels_last is None:
        c.channels_last = not (c.model.startswith("vit") or c.model == "cnn-rnn")
    c.image_size, c.channels = size, chans
    return c, why


def _check_unfreeze(c: Any, *, explicit_epochs: bool, why: list[str]) -> None:
    """``--unfreeze-at E`` must fall inside the run: with ``--epochs N`` given, E >= N would train a
    frozen backbone all along (refused); with chosen epochs it is said with the choice."""
    if c.unfreeze_at is None or c.unfreeze_at < c.epochs:
        return
    if explicit_epochs:
        raise ConfigError(f"--unfreeze-at {c.unfreeze_at} is not before the last epoch (--epochs {c.epochs} counts "
                          f"0..{c.epochs - 1}): the backbone would never train; use --unfreeze-at below "
                          f"{c.epochs}, more --epochs, or drop --unfreeze-at to keep it frozen")
    why.append(f"note: --unfreeze-at {c.unfreeze_at} is past the {c.epochs} chosen epochs: the backbone stays frozen")
