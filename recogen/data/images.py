"""Reading user images for prediction: paths, folders, bytes, arrays, PIL images."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..errors import DataError
from .folder import IMAGE_EXTENSIONS


def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted); a missing path is a DataError."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            if not found:
                raise DataError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"no such file or folder: {p}")
    return out


def open_image(src):
    """Open a path, bytes, numpy array or PIL image as a fully decoded PIL image (clear error if corrupt).

    PNG chunk checksums are verified, truncated files are refused, and 16-bit grayscale is scaled to 8 bits.
    """
    import io

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from .folder import _strict_pil, open_verified, to_8bit

    def eight_bit(img):  # 16-bit grayscale (PNG, TIFF, uint16 arrays) scaled to 8 bits, not clipped
        return to_8bit(img) if img.mode.startswith("I;16") else img

    if isinstance(src, Image.Image):
        return eight_bit(src)
    if isinstance(src, np.ndarray):
        return eight_bit(Image.fromarray(src))
    name = str(src) if isinstance(src, (str, Path)) else "<bytes>"
    try:
        with _strict_pil():  # a truncated file fails even if other code relaxed PIL's global flag
            img = _open_verified_bytes(bytes(src)) if isinstance(src, (bytes, bytearray)) else open_verified(src)
            img.load()
        return eight_bit(img)
    except FileNotFoundError:
        raise DataError(f"no such file: {name}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {name}: {e}") from None


def _open_verified_bytes(data: bytes):
    """``open_verified`` for bytes: a PNG's chunk CRCs are checked on one stream and the image is decoded
    from a fresh one (Pillow 13 closes the stream it verified, so it cannot be rewound and reused)."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(data))
    if img.format == "PNG":
        img.verify()
        img = Image.open(io.BytesIO(data))
    return img
