"""``fcos-s``: torchvision's FCOS on a small residual CNN + FPN, for training from scratch on a CPU.

The torchvision detectors are built around ImageNet backbones and sized for 800 px COCO images. A
training step of 16 images at 128 px on one CPU core (measured): SSDlite 0.54 s,
RetinaNet-R50 5.3 s, FCOS-R50 5.9 s, Faster R-CNN MobileNet 10.7 s, Faster R-CNN R50 26 s; this
model 0.72 s. In the ~15 core-minutes of the default schedule it reaches test mAP@.5 0.78 on
shapes:600 at 128 px; SSDlite, the only other one that gets many steps in, learns far slower from
scratch. It keeps FCOS's anchor-free head, losses (focal, GIoU, centre-ness) and post-processing, on
a small residual CNN with a torchvision FPN over strides 8/16/32 (P3-P5, as the FCOS paper), without
P6/P7, which only see objects larger than the small images this model is for.
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ...errors import ModelError
from ..catalog import register_model


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Module:
    from torchvision.ops.misc import Conv2dNormActivation

    return Conv2dNormActivation(cin, cout, 3, stride=stride)


class _Residual(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut (ResNet's basic block)."""

    def __init__(self, c: int):
        super().__init__()
        from torchvision.ops.misc import Conv2dNormActivation

        self.body = nn.Sequential(_cbr(c, c), Conv2dNormActivation(c, c, 3, activation_layer=None))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(x + self.body(x))


class SmallBackboneFPN(nn.Module):
    """Stem /2, then four stride-2 stages; C3-C5 (strides 8, 16, 32) go through a torchvision FPN.

    Returns an ``OrderedDict`` of ``fpn_channels``-channel maps, as torchvision detectors expect.
    """

    def __init__(self, width: int = 32, depth: int = 1, fpn_channels: int = 64):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        w = [width, 2 * width, 4 * width, 8 * width, 8 * width]

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(_cbr(cin, cout, stride=2), *[_Residual(cout) for _ in range(depth)])

        self.stem = _cbr(3, w[0], stride=2)
        self.stages = nn.ModuleList([stage(w[i], w[i + 1]) for i in range(4)])
        self.fpn = FeaturePyramidNetwork(w[2:], fpn_channels)  # no extra P6/P7 blocks
        self.out_channels = fpn_channels

    def forward(self, x):
        x = self.stem(x)
        feats = OrderedDict()
        for i, s in enumerate(self.stages):
            x = s(x)
            if i >= 1:  # stages 1-3 end at strides 8, 16, 32
                feats[f"p{i + 2}"] = x
        return self.fpn(feats)


@register_model("fcos-s", task="detect", description="FCOS head on a small residual CNN + FPN (P3-P5): from scratch on CPU")
def fcos_small(*, num_classes, in_chans=3, image_size=128, pretrained=False, width: int = 32, depth: int = 1,
               fpn_channels: int = 64, head_convs: int = 2, **kw):
    """``width`` scales the backbone (channels width..8*width), ``depth`` residual blocks per stage,
    ``fpn_channels`` the FPN and head width (a multiple of 32: the head uses GroupNorm(32)),
    ``head_convs`` the conv layers in each head branch (torchvision's FCOS uses 4)."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead

    if pretrained:
        raise ModelError("fcos-s has no pretrained weights (it is meant to train from scratch); "
                         "drop --pretrained, or use fcos-resnet50 --pretrained")
    if in_chans != 3:
        raise ModelError(f"detectors take 3-channel images, got in_chans={in_chans}; use --channels 3")
    if fpn_channels % 32:
        raise ModelError(f"fcos-s fpn_channels must be a multiple of 32 (GroupNorm), got {fpn_channels}")
    from .options import check_kwargs

    check_kwargs("fcos-s", kw, fcos_small, FCOS)
    backbone = SmallBackboneFPN(width, depth, fpn_channels)
    # FCOS wants one anchor per location whose size equals the level's stride.
    anchors = AnchorGenerator(((8,), (16,), (32,)), ((1.0,),) * 3)
    head = FCOSHead(fpn_channels, 1, num_classes + 1, num_convs=head_convs)
    return FCOS(backbone, num_classes + 1, min_size=image_size, max_size=image_size, anchor_generator=anchors,
                head=head, **kw)
