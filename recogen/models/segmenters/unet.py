"""A small U-Net (Ronneberger et al. 2015) trained from scratch: BatchNorm, bilinear upsampling."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..catalog import register_model
from ...errors import ModelError


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) twice: one U-Net stage."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """Encoder of ``depth`` max-pool stages doubling the width, decoder of bilinear upsampling + skips.

    ``width`` is the channel count of the first stage (the original paper uses 64; 16 trains on a
    2-core CPU). ``stem_stride`` 2 runs the whole network at half resolution and upsamples the
    logits at the end (as DeepLab and LR-ASPP do): a quarter of the compute for images whose objects
    are many pixels wide. Any input size of at least ``stem_stride * 2**depth`` px works: each
    decoder stage upsamples to the exact size of its skip connection, so odd sizes need no padding.

    ``fuse_logits`` adds class logits read from every decoder stage (a 1x1 convolution each, upsampled
    and summed, as FCN-8s fuses its score maps; Long et al. 2015). A narrow U-Net's last stage has
    only ``width`` channels per pixel to tell all classes apart; the deeper, wider stages see a whole
    object and decide its class, the last stage then mostly places the boundary.
    """

    def __init__(self, in_chans: int, num_classes: int, width: int = 16, depth: int = 4, stem_stride: int = 1,
                 fuse_logits: bool = False):
        super().__init__()
        chans = [width * 2**i for i in range(depth + 1)]
        self.stem = DoubleConv(in_chans, chans[0], stride=stem_stride)
        self.down = nn.ModuleList(DoubleConv(chans[i], chans[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(DoubleConv(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], num_classes, 1)
        # one head per decoder stage but the last (which ``head`` reads)
        self.side_heads = nn.ModuleList(nn.Conv2d(chans[i], num_classes, 1) for i in reversed(range(1, depth))) \
            if fuse_logits else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        x = skips.pop()
        side = None
        for i, up in enumerate(self.up):
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([x, skip], dim=1))
            if self.side_heads is not None and i < len(self.side_heads):
                # running sum, upsampled stage by stage (coarse class evidence carried to full size)
                s = self.side_heads[i](x)
                side = s if side is None else s + F.interpolate(side, size=s.shape[-2:], mode="bilinear", align_corners=False)
        x = self.head(x)
        if side is not None:
            x = x + F.interpolate(side, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@register_model("unet", task="segment", description="small U-Net from scratch (BatchNorm, bilinear upsampling; width, depth, stem_stride, fuse_logits)")
def unet(*, num_classes: int, in_chans: int, image_size: int, pretrained: bool = False, width: int = 16,
         depth: int = 4, stem_stride: int = 1, fuse_logits: bool = False) -> nn.Module:
    if pretrained:
        raise ModelError("unet has no pretrained weights; drop --pretrained, or use lraspp-mobilenet or deeplabv3-mobilenet")
    if width < 1 or depth < 1 or stem_stride not in (1, 2):
        raise ModelError(f"unet needs width >= 1, depth >= 1 and stem_stride 1 or 2, got width={width}, "
                         f"depth={depth}, stem_stride={stem_stride}")
    if image_size < stem_stride * 2**depth:
        raise ModelError(f"unet with depth {depth} and stem_stride {stem_stride} needs inputs of at least "
                         f"{stem_stride * 2**depth} px, got {image_size}; use a larger --image-size or a smaller depth")
    return UNet(in_chans, num_classes, width=width, depth=depth, stem_stride=stem_stride, fuse_logits=bool(fuse_logits))
