"""Image I/O, one place for every task: decode user images (paths, folders, bytes, arrays, PIL images),
encode PNGs, fit a batch to a model card's input, and the class palette."""
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

    PNG chunk checksums are verified, truncated files are refused, and so are damaged files that Pillow
    would decode with only a warning (:mod:`.pil_damage`); 16-bit grayscale is scaled to 8 bits.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from .folder import _strict_pil, open_verified, to_8bit
    from .pil_damage import damage_reason

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
    except UserWarning as e:  # one of Pillow's damage warnings, raised as an error (see pil_damage)
        raise DataError(f"cannot read image {name}: {damage_reason(e)}") from None
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


# ------------------------------------------------------------------------------------------ encode
def _chw_uint8(img):
    """A uint8 tensor (C, H, W) from a tensor (C, H, W) / (H, W) or a numpy array (H, W[, C])."""
    import numpy as np
    import torch

    if not isinstance(img, torch.Tensor):
        img = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))
        img = img.unsqueeze(0) if img.ndim == 2 else img.permute(2, 0, 1)
    elif img.ndim == 2:
        img = img.unsqueeze(0)
    if img.dtype != torch.uint8:
        raise TypeError(f"PNG pixels must be uint8, got {img.dtype}")
    return img.contiguous().cpu()


def encode_png(img) -> bytes:
    """PNG bytes of a uint8 image: tensor (C, H, W) or (H, W), numpy (H, W[, C]) or PIL image (a palette
    image keeps its palette). Pillow encodes: torchvision's ``encode_png`` is deprecated since 0.29."""
    import io

    from PIL import Image

    if not isinstance(img, Image.Image):
        arr = _chw_uint8(img).permute(1, 2, 0).numpy()
        img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_png(img, path: str | Path) -> Path:
    """Write a uint8 image (see :func:`encode_png`) as a PNG file, atomically; returns the path."""
    from ..utils import atomic_write

    data = encode_png(img)
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return path


# --------------------------------------------------------------------------------------------- fit
def fit_to_card(images, card: dict):
    """A uint8 batch (N, C, H, W) converted to the card's channels (``in_chans``) and resized to its
    ``image_size``: what a trained model takes."""
    from .base import convert_channels, resize_images

    return resize_images(convert_channels(images, card.get("in_chans")), card["image_size"])


def read_for_card(src, card: dict):
    """Decode one image (path, bytes, array or PIL image) in the card's channels ("L" for 1, else RGB) and
    fit it to the card's input: ``(uint8 batch of one (1, C, S, S), the decoded PIL image at its own size)``."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    img = open_image(src).convert("L" if card.get("in_chans") == 1 else "RGB")
    return fit_to_card(pil_to_tensor(img).unsqueeze(0), card), img


def palette(n: int = 256):
    """The PASCAL VOC colour map (n, 3) uint8: class 0 black, then well-separated colours."""
    import numpy as np

    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):  # spread the bits of the index over the high bits of r, g, b
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out
