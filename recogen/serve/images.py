"""Safe decoding of uploaded images: size and pixel limits are checked before any pixel is decoded."""
from __future__ import annotations

import io

from .errors import ApiError

# Default pixel limit: 16 MP (4000 x 4000). Segmentation keeps K float logits per pixel at the image's
# own size, so this bounds its memory (11 classes: about 0.7 GB).
DEFAULT_MAX_PIXELS = 16_000_000


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Decode ``data`` to a fully loaded PIL image, or raise :class:`ApiError` (400 / 413).

    The header is read first and its width x height compared with ``max_pixels`` before decoding,
    so a decompression bomb (a small file that expands to gigapixels) costs nothing.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ApiError(400, "the upload is empty (0 bytes); send an image file (PNG, JPEG, ...)", "empty")
    try:
        with warnings.catch_warnings():
            # PIL warns above its own limit; ours is checked just below with a clearer message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ApiError(413, f"image too large: {e}", "too_many_pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ApiError(400, "not an image: the upload could not be read as PNG, JPEG, BMP, GIF, TIFF or WebP",
                       "not_an_image") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise ApiError(400, f"the image has no pixels ({w}x{h})", "not_an_image")
    if w * h > max_pixels:
        raise ApiError(413, f"image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels} "
                            "(resize it, or start the server with a larger --max-pixels)", "too_many_pixels")
    try:
        img.load()
        img.convert("RGB")  # exotic modes that cannot become RGB fail here, not inside a model
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ApiError(400, f"truncated or corrupt image ({e})", "corrupt_image") from None
    return img


def png_bytes(array) -> bytes:
    """Encode a uint8 numpy array (H, W) or (H, W, C) or a PIL image as PNG bytes."""
    from PIL import Image

    img = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
