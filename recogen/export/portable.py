"""The portable model: ``model.safetensors`` (weights) + ``model.json`` (the model card).

The card holds what is needed to rebuild and use the network without the training code's state:
registry name and constructor kwargs, task, class names, input size and channels, normalisation.
Loading never unpickles anything.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import RunError
from ..utils import atomic_write, write_json

CARD_FORMAT = "recogen-model/1"


def save_portable(folder: Path, model, card: dict[str, Any]) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/model.json`` atomically; returns the card path."""
    from safetensors.torch import save_file

    folder = Path(folder)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda t: save_file(sd, t))
    full = {"format": CARD_FORMAT, "recogen_version": __version__, **card}
    write_json(folder / "model.json", full)
    return folder / "model.json"


def find_card(path: str | Path) -> Path:
    """Accept a run folder, a model.json or a model.safetensors path; return the model.json path."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "model.json"
    elif p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if not p.is_file():
        raise RunError(f"no trained model at {path} (expected {p}); train one first or point at a run folder")
    return p


def read_card(path: str | Path) -> dict[str, Any]:
    """Read and check a model card."""
    p = find_card(path)
    try:
        card = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise RunError(f"{p} is not valid JSON ({e.msg}); the run folder is damaged") from None
    if card.get("format") != CARD_FORMAT:
        raise RunError(f"{p} is not a recogen model card (format {card.get('format')!r})")
    return card


def load_portable(path: str | Path, device: str = "cpu"):
    """Rebuild the network from its card and load its weights; returns ``(model.eval(), card)``."""
    from safetensors.torch import load_file

    from ..models import create_model

    p = find_card(path)
    card = read_card(p)
    model = create_model(
        card["model"], num_classes=len(card["classes"]), in_chans=card["in_chans"],
        image_size=card["image_size"], **card.get("model_kwargs", {}),
    )
    weights = p.with_suffix(".safetensors")
    if not weights.is_file():
        raise RunError(f"weights file missing: {weights}")
    model.load_state_dict(load_file(str(weights), device=device))
    return model.to(device).eval(), card
