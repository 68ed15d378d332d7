"""Model export: the portable safetensors + JSON model card, ONNX (checked against onnxruntime) and
TorchScript; and the prediction backends that run them (``load_backend``).

>>> from recogen.export import export_model
>>> export_model("runs/classify/digits", "onnx")["max_abs_diff"]
3.1e-07
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, RunError

# format -> file suffix of its default output (model<suffix> beside the run's model.json)
FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
BACKENDS = ("torch", "onnx")


def _exporter(fmt: str) -> Callable[..., dict[str, Any]]:
    if fmt == "onnx":
        from .onnx import export_onnx

        return lambda model, card, out, opset, weights: export_onnx(model, card, out, opset=opset, weights=weights)
    if fmt == "torchscript":
        from .torchscript import export_torchscript

        return lambda model, card, out, opset, weights: export_torchscript(model, card, out)
    return lambda model, card, out, opset, weights: _export_safetensors(model, out)


def _export_safetensors(model, out: Path) -> dict[str, Any]:
    """Weights as safetensors, re-read and compared bit for bit."""
    import torch
    from safetensors.torch import load_file, save_file

    from ..utils import atomic_write

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

    def write(tmp: str) -> None:
        save_file(sd, tmp)
        back = load_file(tmp)
        if back.keys() != sd.keys() or not all(torch.equal(back[k], sd[k]) for k in sd):
            raise RunError(f"the safetensors file written for {out} does not read back identically")

    atomic_write(out, write)
    return {"path": str(out), "max_abs_diff": 0.0}


def resolve_out(run: str | Path, fmt: str, out: str | Path | None) -> tuple[Path, Path]:
    """``(card path of the run, output file)``: default ``model<suffix>`` beside the run's card; a
    folder (an existing one, or a path without a suffix) gets ``model<suffix>`` inside it."""
    from ..artifact import find_card

    card_path = find_card(run)
    suffix = FORMATS[fmt]
    if out is None:
        return card_path, card_path.with_suffix(suffix)
    o = Path(out).expanduser()
    if o.is_dir() or not o.suffix or str(out).endswith(("/", "\\")):  # a folder (made if missing)
        o = o / f"model{suffix}"
    if o.suffix != suffix:
        raise ConfigError(f"--out {out} should end in {suffix} for --format {fmt} (or name a folder)")
    return card_path, o


def export_model(run: str | Path, fmt: str = "onnx", out: str | Path | None = None, opset: int | None = None,
                 force: bool = False) -> dict[str, Any]:
    """Export a trained run (folder or model.json) to ``fmt``; the model card is written beside.

    The export is written atomically and only after it has been checked against the PyTorch model
    (ONNX: onnxruntime on sample batches of 1 and 3, max abs difference under 1e-4). An existing
    output is refused unless ``force``. Returns ``{"path", "card", "max_abs_diff", ...}``.
    """
    from ..artifact import load_portable, read_card
    from ..utils import remove_stale_temporaries, write_json

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    card_path, path = resolve_out(run, fmt, out)
    from ..utils import check_writable_folder

    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; name the file to write, or another folder")
    check_writable_folder(path.parent, "--out" if out is not None else "run folder",  # before any work
                          "give --out a writable file or folder")
    if path.exists() and not force:
        card_beside = path.with_suffix(".json")
        if card_beside.resolve() != card_path.resolve() and not card_beside.exists():
            # The card is written after the exported file: a kill between the two leaves this.
            raise RunError(f"{path} exists without its card {card_beside.name} (an interrupted export?); pass "
                           "--force to export again, or --out to write elsewhere")
        raise RunError(f"{path} already exists; pass --force to replace it or --out to write elsewhere")
    if fmt == "safetensors" and path.resolve() == card_path.with_suffix(".safetensors").resolve():
        raise RunError(f"{path} is the run's own weights file; give --out a new path to copy it")
    card = read_card(card_path)
    model, _ = load_portable(card_path, "cpu")
    from .onnx import DEFAULT_OPSET

    result = _exporter(fmt)(model, card, path, opset or DEFAULT_OPSET, card_path.with_suffix(".safetensors"))
    card_out = path.with_suffix(".json")
    if card_out.resolve() != card_path.resolve():
        write_json(card_out, card)  # the card travels beside the exported file
    for written in (path, card_out):  # what earlier exports killed mid-write left (one file each kill)
        remove_stale_temporaries(written)
    return {**result, "format": fmt, "card": str(card_out)}


def load_backend(path: str | Path, device: str = "cpu", backend: str = "torch", card: dict[str, Any] | None = None):
    """``(network, card)`` for a predictor: the PyTorch model, or its ONNX export run by onnxruntime.
    ``card``: the run's card if already read (the ONNX backend reads the card exported beside its file)."""
    if backend == "torch":
        from ..artifact import load_portable

        return load_portable(path, device, card)
    if backend == "onnx":
        from .onnx import load_onnx_model

        return load_onnx_model(path, device)
    raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
