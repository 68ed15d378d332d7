"""Keyword options of torchvision's detectors: refuse the ones nothing takes."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from ...errors import ModelError


def check_kwargs(model: str, kw: dict[str, Any], *takers: Callable[..., Any]) -> None:
    """Raise a one-line :class:`ModelError` for keys of ``kw`` that none of ``takers`` names.

    torchvision's detection builders pass extra keywords down to ``GeneralizedRCNNTransform(**kwargs)``,
    which drops unknown ones silently: ``--model-kwargs '{"bogus": 1}'`` (or a typo such as
    ``score_tresh``) would train with the default and say nothing.
    """
    if not kw:
        return
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    named: dict[str, None] = {}  # in the takers' order: the model's own options are listed first
    for f in (*takers, GeneralizedRCNNTransform):
        named.update((p.name, None) for p in inspect.signature(f).parameters.values()
                     if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and not p.name.startswith("_"))
    unknown = sorted(set(kw) - set(named))
    if unknown:
        internal = {"self", "weights", "weights_backbone", "backbone", "num_classes", "in_chans", "image_size",
                    "pretrained", "progress"}
        shown = [k for k in named if k not in internal]
        raise ModelError(f"{model} takes no option {', '.join(map(repr, unknown))}; its options include "
                         f"{', '.join(shown[:14])}{', ...' if len(shown) > 14 else ''} "
                         "(remove or rename the key in --model-kwargs)")
