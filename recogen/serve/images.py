"""Safe decoding of uploaded images: size limits are checked before any pixel is decoded, PNG checksums
are verified, and 16-bit grey images are scaled (not clipped) to 8 bits."""
from __future__ import annotations

import io

from .errors import ApiError

# Default pixel limit: 16 MP (4000 x 4000). Segmentation keeps K float logits per pixel at the image's
# own size, so this bounds its memory (11 classes: about 0.7 GB).
DEFAULT_MAX_PIXELS = 16_000_000
# Default limit on the longer side. Within the pixel limit a 1 x 16,000,000 PNG is only 31 KB, yet
# resizing it to a model's input is far slower than resizing a 4000 x 4000 image; 10,000 px still takes
# any real photograph or panorama.
DEFAULT_MAX_SIDE = 10_000
# Pillow's modes of 16-bit grey images (PNG, TIFF): scaled by 255/65535 to "L".
_MODES_16BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = DEFAULT_MAX_SIDE):
    """Decode ``data`` to a fully loaded PIL image, or raise :class:`ApiError` (400 / 413).

    The header is read first and its width x height compared with ``max_pixels`` and its longer side
    with ``max_side`` before decoding, so a decompression bomb (a small file that expands to
    gigapixels) costs nothing. A PNG's chunk checksums are verified (Pillow's ``load`` skips the
    image data's CRC), so a corrupted upload is a 400, not a silently wrong prediction; so is a damaged
    file that Pillow would decode with only a warning (:mod:`recogen.data.pil_damage`).

    Runs in the thread pool: no ``warnings.catch_warnings()`` here, it is not thread-safe before Python
    3.14 (so Pillow's own DecompressionBombWarning, above 89 MP, is logged once; our limit is checked
    just below with a clearer message).
    """
    from PIL import Image, UnidentifiedImageError

    from ..data.pil_damage import damage_reason, refuse_damaged

    if not data:
        raise ApiError(400, "the upload is empty (0 bytes); send an image file (PNG, JPEG, ...)", "empty")
    refuse_damaged()
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ApiError(413, f"image too large: {e}", "too_many_pixels") from None
    except UserWarning as e:  # one of Pillow's damage warnings, raised as an error
        raise ApiError(400, f"{damage_reason(e)}; send the file again, or re-save it", "corrupt_image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ApiError(400, "not an image: the upload could not be read as PNG, JPEG, BMP, GIF, TIFF or WebP",
                       "not_an_image") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise ApiError(400, f"the image has no pixels ({w}x{h})", "not_an_image")
    if w * h > max_pixels:
        raise ApiError(413, f"image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels} "
                            "(resize it, or start the server with a larger --max-pixels)", "too_many_pixels")
    if max(w, h) > max_side:
        raise ApiError(413, f"image is {w}x{h}: its longer side is over the limit of {max_side} px "
                            "(resize or crop it, or start the server with a larger --max-side)", "too_many_pixels")
    try:
        if img.format == "PNG":
            img.verify()  # every chunk's CRC, the image data's too; the image must be reopened after it
            img = Image.open(io.BytesIO(data))
        img.load()
        img = _to_8bit(img)
        img.convert("RGB")  # exotic modes that cannot become RGB fail here, not inside a model
    except (OSError, EOFError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ApiError(400, f"truncated or corrupt image ({e}); send the file again, or re-save it", "corrupt_image") from None
    except UserWarning as e:
        raise ApiError(400, f"{damage_reason(e)}; send the file again, or re-save it", "corrupt_image") from None
    return img


def _to_8bit(img):
    """A 16-bit grey image scaled to 8 bits (v * 255 / 65535, rounded); other images unchanged.

    Pillow's own ``convert("L")`` clips such images at 255, which turns most of them white.
    """
    if img.mode not in _MODES_16BIT:
        return img
    import numpy as np
    from PIL import Image

    a = np.asarray(img).astype(np.uint32)
    return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8))
