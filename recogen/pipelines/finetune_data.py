"""The training images of ``recogen generate finetune`` and their captions.

A folder of images (searched recursively; hidden files skipped). Each image's caption comes from, in
this order: ``--prompt`` (one caption for every image, DreamBooth-style: "a photo of sks dog"), a
``metadata.jsonl`` at the top of the folder (Hugging Face ``imagefolder`` layout: one
``{"file_name": "a.png", "text": "..."}`` per line; ``caption`` or ``prompt`` are read as well), or a
same-name ``.txt`` file beside each image (``a.png`` -> ``a.txt``). Listing and captions are checked
before anything heavy is imported, so a mistake costs no model load.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError

# recogen.data.folder's list, repeated: importing recogen.data imports torch (seconds), and a wrong folder
# must fail at once (tests check the two lists agree)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
METADATA = "metadata.jsonl"
CAPTION_KEYS = ("text", "caption", "prompt")


@dataclass(frozen=True)
class Example:
    """One training image and its caption."""

    path: Path
    caption: str


def list_images(folder: Any) -> list[Path]:
    """The image files under ``folder`` (sorted, recursive, hidden files and folders skipped)."""
    root = Path(folder).expanduser()
    if not root.exists():
        raise DataError(f"--data {root}: no such folder")
    if not root.is_dir():
        raise DataError(f"--data {root} is a file; pass a folder of images")
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not found:
        raise DataError(f"no image files ({' '.join(IMAGE_EXTENSIONS)}) in {root}; put the training images there")
    return found


def read_examples(folder: Any, prompt: str | None = None) -> tuple[list[Example], str]:
    """Images and captions of ``folder``; returns ``(examples, where the captions came from)``."""
    root = Path(folder).expanduser()
    images = list_images(root)
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError("--prompt must be a non-empty text")
        return [Example(p, prompt) for p in images], "--prompt"
    if (root / METADATA).is_file():
        captions = _read_metadata(root)
        source = METADATA
    else:
        captions = {p: _read_caption(p.with_suffix(".txt")) for p in images if p.with_suffix(".txt").is_file()}
        source = ".txt files"
        if not captions:
            raise DataError(f"no captions for the images in {root}: pass --prompt \"a photo of sks dog\" (one caption "
                            f"for all), or add a {METADATA} or a same-name .txt file beside each image")
    missing = [p for p in images if not captions.get(p)]
    if missing:
        raise DataError(f"{len(missing)} of {len(images)} images in {root} have no caption in the {source} (first: "
                        f"{missing[0].relative_to(root)}); add them, or pass --prompt for one caption for all")
    return [Example(p, captions[p]) for p in images], source


def _read_caption(path: Path) -> str:
    """A same-name ``.txt`` caption; an unreadable or non-UTF-8 file is a DataError naming it."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the caption {path} ({type(e).__name__}: {e}); save it as UTF-8 text") from None


def _read_metadata(root: Path) -> dict[Path, str]:
    """``metadata.jsonl``: file name (relative to the folder) -> caption; every named file must exist."""
    captions: dict[Path, str] = {}
    path = root / METADATA
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {n} is not JSON ({e.msg})") from None
        name = row.get("file_name") if isinstance(row, dict) else None
        text = next((row[k] for k in CAPTION_KEYS if isinstance(row.get(k), str)), None) if name else None
        if not isinstance(name, str) or text is None:
            raise DataError(f"{path} line {n}: each line needs \"file_name\" and a \"text\" (or \"caption\") string")
        file = root / name
        if not file.is_file():
            raise DataError(f"{path} line {n} names {name}, which is not in {root}")
        captions[file] = text.strip()
    return captions


def load_pixels(examples: list[Example], size: tuple[int, int]):
    """The images as one float tensor (N, 3, H, W) in [-1, 1]: each resized so it covers ``size``
    (width, height), then centre-cropped to it (what diffusers' training examples do)."""
    import numpy as np
    import torch
    from PIL import Image

    from ..data.images import open_image

    w, h = size
    out = []
    for ex in examples:
        img = open_image(ex.path).convert("RGB")  # a corrupt file is a DataError naming it
        scale = max(w / img.width, h / img.height)
        rw, rh = max(w, round(img.width * scale)), max(h, round(img.height * scale))
        img = img.resize((rw, rh), Image.Resampling.BILINEAR)
        left, top = (rw - w) // 2, (rh - h) // 2
        img = img.crop((left, top, left + w, top + h))
        out.append(np.asarray(img, dtype=np.uint8))
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0
