"""Semantic segmentation networks: ``fn(*, num_classes, in_chans, image_size, pretrained)`` returns a
module mapping (B, C, H, W) images to (B, num_classes, H, W) logits. Importing registers the builders."""
from . import torchvision_seg, unet  # noqa: F401 - registers the builders
