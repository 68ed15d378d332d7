"""Shape arithmetic shared by the convolutional generators: how many 2x stages reach a side."""
from __future__ import annotations

from ...errors import ModelError


def num_stages(image_size: int, in_chans: int = 1) -> tuple[int, int]:
    """``(stages, base)``: halve ``image_size`` down to 4..7 px (16 -> 4, 28 -> 7, 32 -> 4, 64 -> 4), the
    starting maps of DCGAN's generators.

    The generators upsample from ``base`` by ``2**stages``, so the side must divide evenly.
    """
    stages, side = 0, image_size
    while side > 7 and side % 2 == 0:
        side, stages = side // 2, stages + 1
    if stages == 0 or side > 8 or side < 3:
        raise ModelError(f"image size {image_size} does not halve down to 3..8 px; use --image-size 16, 28, 32 or 64")
    return stages, side
