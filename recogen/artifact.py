"""The run artifact: ``model.safetensors`` (weights) + ``model.json`` (the model card) of a trained run.

The card holds what is needed to rebuild and use the network without the training code's state:
registry name and constructor kwargs, task, class names, input size and channels, normalisation.
Loading never unpickles anything.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import RunError
from .utils import atomic_write, write_json

CARD_FORMAT = "recogen-model/1"


def save_portable(folder: Path, model, card: dict[str, Any]) -> dict[str, Any]:
    """Write ``folder/model.safetensors`` and ``folder/model.json`` atomically; returns the card as
    ``read_card`` would read it back (JSON types), so the caller passes it down instead of re-reading."""
    from safetensors.torch import save_file

    folder = Path(folder)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda t: save_file(sd, t))
    full = {"format": CARD_FORMAT, "recogen_version": __version__, **card}
    write_json(folder / "model.json", full)
    return json.loads(json.dumps(full))


def find_card(path: str | Path) -> Path:
    """Accept a run folder, a model.json or a model.safetensors path; return the model.json path."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "model.json"
    elif p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if not p.is_file():
        where = f"{path}" if str(p) == str(path) else f"{path} (no {p.name} in it)" if Path(path).expanduser().is_dir() else f"{path} (expected {p})"
        raise RunError(f"no trained model at {where}; train one first or point at a run folder")
    return p


def _check_card(card: Any, p: Path) -> None:
    """Each field a loader uses, with the right type: a damaged card is one RunError naming the field."""
    def bad(what: str) -> RunError:
        return RunError(f"{p} is damaged: {what}; re-export the model or train the run again")

    if not isinstance(card, dict):
        raise bad(f"it holds a JSON {type(card).__name__}, not a model card (an object)")
    if card.get("format") != CARD_FORMAT:
        raise RunError(f"{p} is not a recogen model card (format {card.get('format')!r})")
    need = {"task": str, "model": str, "classes": list, "image_size": int, "in_chans": int}
    for key, t in need.items():
        if key not in card:
            raise bad(f"the field {key!r} is missing")
        if not isinstance(card[key], t) or isinstance(card[key], bool):
            raise bad(f"{key!r} should be a {t.__name__}, not {card[key]!r}"[:300])
    if not all(isinstance(c, str) for c in card["classes"]):
        raise bad("'classes' should be a list of class names")
    if card["in_chans"] not in (1, 3) or not 1 <= card["image_size"] <= 4096:
        raise bad(f"in_chans {card['in_chans']} / image_size {card['image_size']} are out of range")
    if not isinstance(card.get("model_kwargs", {}), dict):
        raise bad("'model_kwargs' should be an object")
    if card["task"] in ("classify", "segment"):  # their predictors normalise with the card's numbers
        norm = card.get("normalize")
        ok = isinstance(norm, dict) and all(
            isinstance(norm.get(k), list) and len(norm[k]) == card["in_chans"]
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in norm[k]) for k in ("mean", "std"))
        if not ok:
            raise bad(f"'normalize' should be {{\"mean\": [...], \"std\": [...]}} with {card['in_chans']} numbers each")
        if any(v == 0 for v in norm["std"]):
            raise bad("a 'normalize' std is 0")


def read_card(path: str | Path, task: str | None = None, wrong_task: str = "") -> dict[str, Any]:
    """Read and check a model card. With ``task``, a card of another task is refused first (a
    RunError ending in ``wrong_task``), before its other fields are checked: "this is a classifier"
    helps more than "a field is missing" when the wrong run was named."""
    p = find_card(path)
    try:
        card = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{p} is not valid JSON ({getattr(e, 'msg', e)}); the run folder is damaged") from None
    if task is not None and isinstance(card, dict) and card.get("format") == CARD_FORMAT and card.get("task") != task:
        raise RunError(f"{path} holds a {card.get('task')} model{wrong_task}")
    _check_card(card, p)
    return card


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]


def load_portable(path: str | Path, device: str = "cpu", card: dict[str, Any] | None = None):
    """Rebuild the network from its card and load its weights; returns ``(model.eval(), card)``.
    ``card``: the card already read from ``path`` (it is then not read again).

    A damaged weights file (truncated, empty, not safetensors) or weights of another network are one
    RunError naming the file; safetensors never runs code.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .models import create_model

    p = find_card(path)
    card = read_card(p) if card is None else card
    weights = p.with_suffix(".safetensors")
    if not weights.is_file():
        raise RunError(f"weights file missing: {weights}")
    try:
        model = create_model(
            card["model"], num_classes=len(card["classes"]), in_chans=card["in_chans"],
            image_size=card["image_size"], **card.get("model_kwargs", {}),
        )
    except (TypeError, ValueError) as e:  # unknown keys, or values the constructor refuses
        raise RunError(f"{p} does not describe a model recogen can build ({_one_line(e)}); the model card is damaged") from None
    try:
        sd = load_file(str(weights), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(f"cannot read weights {weights}: {' '.join(str(e).split())[:200]}; the file is damaged "
                       "(copy it again, or train the run again)") from None
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        reason = " ".join(str(e).split())
        raise RunError(f"weights {weights} do not fit the model in {p.name} ({card['model']}): "
                       f"{reason[:240]}; the two files are from different runs") from None
    return model.to(device).eval(), card
