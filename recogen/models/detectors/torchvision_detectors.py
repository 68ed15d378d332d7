"""torchvision detectors: Faster R-CNN, RetinaNet, FCOS and SSDlite, sized for the training images.

``num_classes`` counts object classes without background; torchvision's heads reserve label 0 for
background, so every builder makes ``num_classes + 1`` outputs and the detect task feeds labels 1..K.

The network always has the from-scratch layout (trainable BatchNorm everywhere): ``--pretrained``
loads torchvision's COCO detector weights into that layout and then replaces the class head. So a
pretrained run, its resume and its portable model (rebuilt with ``pretrained=False``) are one and the
same architecture with one and the same state-dict keys.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ...errors import ModelError
from .. import register_model
from ..weights import fetch_pretrained

COCO_CLASSES = 91  # torchvision's COCO detectors: 90 category ids + background


def _check_input(in_chans: int, image_size: int) -> None:
    if in_chans != 3:
        raise ModelError(f"torchvision detectors take 3-channel images, got in_chans={in_chans}; use --channels 3")
    if image_size < 32:
        raise ModelError(f"image size {image_size} is too small for a detector; use --image-size 32 or more")


def _load_coco(model: nn.Module, weights, what: str) -> None:
    """Load the COCO detector weights (download through torch.hub's cache; offline -> OfflineError)."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    sd = fetch_pretrained(what, lambda: weights.get_state_dict(progress=True, check_hash=True), str(cache))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # torchvision saved these models with FrozenBatchNorm2d, which has no num_batches_tracked counter.
    bad = [k for k in missing if not k.endswith("num_batches_tracked")] + list(unexpected)
    if bad:
        raise ModelError(f"the {what} weights do not fit this network ({', '.join(bad[:3])}...)")


def _build(make: Callable[..., nn.Module], replace_head: Callable[[nn.Module, int], None], weights_name: str,
           what: str, *, num_classes: int, in_chans: int, image_size: int, pretrained: bool, **kw) -> nn.Module:
    """Build ``make(...)`` at ``image_size`` with ``num_classes + 1`` outputs, COCO-initialised if ``pretrained``."""
    import torchvision.models.detection as tvd

    from .options import check_kwargs

    _check_input(in_chans, image_size)
    model = make(weights=None, weights_backbone=None, num_classes=(COCO_CLASSES if pretrained else num_classes + 1), **kw)
    check_kwargs(what, kw, make, type(model))  # the builder ignores keys nothing takes
    if not pretrained:
        return model
    _load_coco(model, getattr(tvd, weights_name).DEFAULT, what)
    replace_head(model, num_classes + 1)
    return model


# ------------------------------------------------------------------------------ head replacements
def _rcnn_head(model, n: int) -> None:
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    model.roi_heads.box_predictor = FastRCNNPredictor(model.roi_heads.box_predictor.cls_score.in_features, n)


def _retina_head(model, n: int) -> None:
    from torchvision.models.detection.retinanet import RetinaNetClassificationHead

    anchors = model.anchor_generator.num_anchors_per_location()[0]
    model.head.classification_head = RetinaNetClassificationHead(model.backbone.out_channels, anchors, n)


def _fcos_head(model, n: int) -> None:
    from torchvision.models.detection.fcos import FCOSClassificationHead

    old = model.head.classification_head
    model.head.classification_head = FCOSClassificationHead(model.backbone.out_channels, 1, n, num_convs=len(old.conv) // 3)


def _ssd_head(model, n: int) -> None:
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.ssdlite import SSDLiteClassificationHead

    channels = det_utils.retrieve_out_channels(model.backbone, (320, 320))
    anchors = model.anchor_generator.num_anchors_per_location()
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)  # as torchvision's ssdlite builder
    model.head.classification_head = SSDLiteClassificationHead(channels, anchors, n, norm)


# ---------------------------------------------------------------------------------------- builders
def _sized(fn_name: str, image_size: int) -> Callable[..., nn.Module]:
    """torchvision's builder with the resize set to the training size (its default is 800 px)."""
    import torchvision.models.detection as tvd

    return partial(getattr(tvd, fn_name), min_size=image_size, max_size=image_size)


@register_model("fasterrcnn-mobilenet", task="detect", description="torchvision Faster R-CNN, MobileNetV3-Large FPN")
def fasterrcnn_mobilenet(*, num_classes, in_chans=3, image_size=320, pretrained=False, **kw):
    if image_size <= 320:
        # torchvision's own low-resolution recipe (fasterrcnn_mobilenet_v3_large_320_fpn): 150 RPN
        # proposals instead of 1,000 at test time. The RoI head over 1,000 boxes is nearly all of the
        # CPU cost at small sizes (measured: 320 and 640 px cost the same with the 800-px settings).
        for k, v in {"rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150, "rpn_score_thresh": 0.05}.items():
            kw.setdefault(k, v)
    return _build(_sized("fasterrcnn_mobilenet_v3_large_fpn", image_size), _rcnn_head,
                  "FasterRCNN_MobileNet_V3_Large_FPN_Weights", "fasterrcnn-mobilenet (COCO)",
                  num_classes=num_classes, in_chans=in_chans, image_size=image_size, pretrained=pretrained, **kw)


@register_model("fasterrcnn-resnet50", task="detect", description="torchvision Faster R-CNN, ResNet-50 FPN")
def fasterrcnn_resnet50(*, num_classes, in_chans=3, image_size=320, pretrained=False, **kw):
    return _build(_sized("fasterrcnn_resnet50_fpn", image_size), _rcnn_head, "FasterRCNN_ResNet50_FPN_Weights",
                  "fasterrcnn-resnet50 (COCO)", num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                  pretrained=pretrained, **kw)


@register_model("retinanet-resnet50", task="detect", description="torchvision RetinaNet, ResNet-50 FPN")
def retinanet_resnet50(*, num_classes, in_chans=3, image_size=320, pretrained=False, **kw):
    return _build(_sized("retinanet_resnet50_fpn", image_size), _retina_head, "RetinaNet_ResNet50_FPN_Weights",
                  "retinanet-resnet50 (COCO)", num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                  pretrained=pretrained, **kw)


@register_model("fcos-resnet50", task="detect", description="torchvision FCOS, ResNet-50 FPN")
def fcos_resnet50(*, num_classes, in_chans=3, image_size=320, pretrained=False, **kw):
    return _build(_sized("fcos_resnet50_fpn", image_size), _fcos_head, "FCOS_ResNet50_FPN_Weights",
                  "fcos-resnet50 (COCO)", num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                  pretrained=pretrained, **kw)


def _ssdlite_sized(image_size: int):
    """torchvision's ssdlite320 builder with its fixed 320 px input replaced by ``image_size``."""
    import torchvision.models.detection as tvd
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    def make(**kw):
        model = tvd.ssdlite320_mobilenet_v3_large(**kw)
        t = model.transform
        # Its anchors are fractions of the input, so only the resize changes with the size.
        model.transform = GeneralizedRCNNTransform(image_size, image_size, t.image_mean, t.image_std,
                                                   size_divisible=1, fixed_size=(image_size, image_size))
        return model

    return make


@register_model("ssdlite", task="detect", description="torchvision SSDlite, MobileNetV3-Large")
def ssdlite(*, num_classes, in_chans=3, image_size=320, pretrained=False, **kw):
    return _build(_ssdlite_sized(image_size), _ssd_head, "SSDLite320_MobileNet_V3_Large_Weights", "ssdlite (COCO)",
                  num_classes=num_classes, in_chans=in_chans, image_size=image_size, pretrained=pretrained, **kw)
