"""Reading the inputs of an edit at the model's size and channels, and naming and laying out its PNGs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError


def load_generator(run: Any):
    """A loaded generator: ``run`` may be a run folder, a ``model.json`` or an already loaded one."""
    from ..tasks import generate

    if isinstance(run, generate.Generator):
        return run
    from ..artifact import read_card

    read_card(run, generate.TASK, "; edit needs a run of `recogen generate train`")
    return generate.load(run)


def read_image(src: Any, card: dict[str, Any]) -> torch.Tensor:
    """One image as uint8 (1, C, H, W) at the model's side and channels (grayscale <-> RGB by PIL).

    ``src`` is a path, bytes, a PIL image, a numpy array or a uint8 tensor (C, H, W). A non-square
    image is resized to the square side, as ``predict`` does (crop it first to keep its aspect).
    """
    if isinstance(src, torch.Tensor):
        t = src if src.dim() == 4 else src.unsqueeze(0)
        if t.dtype != torch.uint8:
            raise DataError("image tensors must be uint8 (C, H, W); scale floats by 255 first")
        from ..data.images import fit_to_card

        return fit_to_card(t, card)
    from ..data.images import read_for_card

    if isinstance(src, (str, Path)) and not Path(src).is_file():
        raise DataError(f"no such image file: {src}")
    return read_for_card(src, card)[0]


def read_mask(src: Any, image_src: Any, card: dict[str, Any]) -> torch.Tensor:
    """The region to fill as bool (1, 1, H, W) at the model's side: white (> 127) = fill.

    The mask must have the size of the image it belongs to (a mask drawn for another image is
    refused rather than stretched); both are then resized to the model's side, the mask with
    nearest-neighbour so it stays binary. A mask that fills nothing or everything is refused.
    """
    import numpy as np

    from ..data.images import open_image

    if isinstance(src, torch.Tensor):
        m = src.reshape(1, 1, *src.shape[-2:])
        m = (m > 127) if m.dtype == torch.uint8 else m.bool()
        in_size = tuple(m.shape[-2:])[::-1]
    else:
        if isinstance(src, (str, Path)) and not Path(src).is_file():
            raise DataError(f"no such mask file: {src}")
        pil = open_image(src).convert("L")
        in_size = pil.size
        m = torch.from_numpy(np.array(pil))[None, None] > 127
    img_size = _size_of(image_src)
    if img_size is not None and tuple(img_size) != tuple(in_size):
        raise DataError(f"mask is {in_size[0]}x{in_size[1]} px but the image is {img_size[0]}x{img_size[1]}; "
                        "draw the mask at the image's size")
    s = card["image_size"]
    if tuple(m.shape[-2:]) != (s, s):
        from torch.nn import functional as F

        m = F.interpolate(m.float(), size=(s, s), mode="nearest") > 0.5
    if not m.any():
        raise DataError(f"mask has no white pixels at the model's {s}x{s} px: nothing to fill (white = fill)")
    if m.all():
        raise DataError("mask is all white: nothing of the image is kept; use `recogen generate sample` for new images")
    return m


def _size_of(src: Any) -> tuple[int, int] | None:
    """(width, height) of an image source, or None when it cannot be told cheaply."""
    if isinstance(src, torch.Tensor):
        return int(src.shape[-1]), int(src.shape[-2])
    if isinstance(src, (str, Path)):
        from ..data.images import open_image

        return open_image(src).size
    return getattr(src, "size", None)


def out_paths(out: Any, run_path: Path | None, op: str) -> tuple[Path, Path]:
    """``(result, strip)``: ``out`` (a .png path) or ``RUN/edits/<op>.png``, and ``<stem>_strip.png`` beside it."""
    if out is None:
        if run_path is None:
            raise ConfigError("give --out PATH.png (the model was not loaded from a run folder)")
        out = Path(run_path) / "edits" / f"{op}.png"
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must end in .png, got {out}")
    return out, out.with_name(out.stem + "_strip.png")


def row(images: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """A uint8 batch side by side (torchvision's make_grid, one row, ``pad`` px black gaps)."""
    from torchvision.utils import make_grid

    grid = make_grid(images, nrow=len(images), padding=pad, pad_value=0)
    return grid[: images.shape[1]]  # make_grid repeats one channel into three; keep grayscale grayscale
