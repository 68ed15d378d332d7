"""Fine-tuning: which parameters are the classifier head and which the backbone, freezing the backbone
(its BatchNorm statistics too), and optimiser parameter groups with a smaller backbone learning rate."""
from __future__ import annotations

from typing import Any

from torch import nn

# Where our own classifiers keep their head (library models carry ``recogen_head``, models/sources.py).
_HEAD_NAMES = ("head", "net.fc", "fc", "classifier", "heads")


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The qualified names of ``model``'s classifier-head modules (``fc``, ``head.fc``, ``net.fc``...)."""
    from ..models.parts import HEAD_ATTR

    given = getattr(model, HEAD_ATTR, None)
    if given:
        return tuple(given)
    names = dict(model.named_modules())
    found = next((n for n in _HEAD_NAMES if n in names), None)
    return (found,) if found else ()


def split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(backbone, head)`` parameters of ``model``; a model without a known head is all head (trained at the full rate)."""
    heads = tuple(f"{h}." for h in head_names(model))
    if not heads:
        return [], list(model.parameters())
    backbone, head = [], []
    for name, p in model.named_parameters():
        (head if name.startswith(heads) else backbone).append(p)
    return backbone, head


def backbone_modules(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm modules outside the head: kept in eval mode while the backbone is frozen, so that
    its running statistics stay those of the pretrained weights."""
    heads = tuple(f"{h}." for h in head_names(model))
    return [m for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not (heads and f"{n}.".startswith(heads))]


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (``requires_grad=False``, BatchNorm in eval) or unfreeze the backbone of ``model``."""
    backbone, _ = split_params(model)
    for p in backbone:
        p.requires_grad_(not frozen)
    for m in backbone_modules(model):
        # Frozen: eval, so the running statistics stay the pretrained ones; unfrozen: as the model is.
        m.train(model.training and not frozen)


def frozen_at(cfg: Any, epoch: int) -> bool:
    """Whether the backbone is frozen in ``epoch`` (0-based): from the start until ``--unfreeze-at``."""
    if not getattr(cfg, "freeze_backbone", False):
        return False
    return cfg.unfreeze_at is None or epoch < cfg.unfreeze_at


def param_groups(model: nn.Module, lr: float, backbone_mult: float) -> list[dict[str, Any]]:
    """Optimiser groups: the backbone at ``lr * backbone_mult``, the head at ``lr``. Frozen parameters
    stay in the optimiser (without gradients AdamW and SGD skip them) so that unfreezing needs no new one."""
    backbone, head = split_params(model)
    groups = [{"params": head, "lr": lr, "name": "head"}]
    if backbone:
        groups.insert(0, {"params": backbone, "lr": lr * backbone_mult, "name": "backbone"})
    return groups
