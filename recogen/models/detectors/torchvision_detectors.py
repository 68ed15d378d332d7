"""torchvision detectors: Faster R-CNN, RetinaNet, FCOS and SSDlite, sized for the training images.

``num_classes`` counts object classes without background; torchvision's heads reserve label 0 for
background, so every builder makes ``num_classes + 1`` outputs and the detect task feeds labels 1..K.

The network always has the from-scratch layout (trainable BatchNorm everywhere): ``--pretrained``
loads torchvision's COCO detector weights into that layout and then replaces the class head. So a
pretrained run, its resume and its portable model (rebuilt with ``pretrained=False``) are one and the
same architecture with one and the same state-dict keys.
"""
from __future__ import annotations

import inspect
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ...errors import ModelError
from ..catalog import register_model
from ..parts import HEAD_ATTR
from ..weights import fetch_pretrained

COCO_CLASSES = 91  # torchvision's COCO detectors: 90 category ids + background


def _check_input(in_chans: int, image_size: int) -> None:
    if in_chans != 3:
        raise ModelError(f"torchvision detectors take 3-channel images, got in_chans={in_chans}; use --channels 3")
    if image_size < 32:
        raise ModelError(f"image size {image_size} is too small for a detector; use --image-size 32 or more")


def _load_coco(model: nn.Module, sd: dict, what: str) -> None:
    """Load a COCO detector state dict (torchvision's layout) into ``model`` (same classes)."""
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # torchvision saved these models with FrozenBatchNorm2d, which has no num_batches_tracked counter.
    bad = [k for k in missing if not k.endswith("num_batches_tracked")] + list(unexpected)
    if bad:
        raise ModelError(f"the {what} weights do not fit this network ({', '.join(bad[:3])}...)")


def fetch_coco(arch: str, what: str) -> dict:
    """torchvision's published COCO state dict of the builder ``arch`` through torch.hub's cache
    (offline and not cached: an OfflineError naming the file and the folder)."""
    import torchvision.models as tvm

    weights = tvm.get_model_weights(arch).DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    return fetch_pretrained(what, lambda: weights.get_state_dict(progress=True, check_hash=True), str(cache))


def _build(make: Callable[..., nn.Module], replace_head: Callable[[nn.Module, int], None], arch: str,
           what: str, *, num_classes: int, in_chans: int, image_size: int, pretrained: bool, **kw) -> nn.Module:
    """Build ``make(...)`` at ``image_size`` with ``num_classes + 1`` outputs, initialised from the COCO
    weights of torchvision's builder ``arch`` if ``pretrained`` (the class head then replaced)."""
    from .options import check_kwargs

    _check_input(in_chans, image_size)
    # The weights first: offline, the error comes before any time is spent building the network.
    coco = fetch_coco(arch, what) if pretrained else None
    model = make(weights=None, weights_backbone=None, num_classes=(COCO_CLASSES if pretrained else num_classes + 1), **kw)
    check_kwargs(what, kw, make, type(model))  # the builder ignores keys nothing takes
    if coco is not None:
        _load_coco(model, coco, what)
        replace_head(model, num_classes + 1)
    setattr(model, HEAD_ATTR, (_HEAD_MODULE[replace_head],))  # what --weights PATH does not take from a file of other classes
    return model


# ------------------------------------------------------------------------------ head replacements
def _rcnn_head(model, n: int) -> None:
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    model.roi_heads.box_predictor = FastRCNNPredictor(model.roi_heads.box_predictor.cls_score.in_features, n)


def _retina_head(model, n: int) -> None:
    from torchvision.models.detection.retinanet import RetinaNetClassificationHead

    anchors = model.anchor_generator.num_anchors_per_location()[0]
    old = model.head.classification_head
    # The v2 builder's head has GroupNorm after each conv (v1: none); the new head is built alike.
    norm = partial(nn.GroupNorm, 32) if any(isinstance(m, nn.GroupNorm) for m in old.modules()) else None
    model.head.classification_head = RetinaNetClassificationHead(model.backbone.out_channels, anchors, n, norm_layer=norm)


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


def _ssd300_head(model, n: int) -> None:
    from torchvision.models.detection.ssd import SSDClassificationHead

    convs = list(model.head.classification_head.module_list)  # one 3x3 conv per feature map
    anchors = model.anchor_generator.num_anchors_per_location()
    model.head.classification_head = SSDClassificationHead([c.in_channels for c in convs], anchors, n)


# The module each replacement makes (the class head; ``recogen_head`` of the built model).
_HEAD_MODULE = {_rcnn_head: "roi_heads.box_predictor", _retina_head: "head.classification_head",
                _fcos_head: "head.classification_head", _ssd_head: "head.classification_head",
                _ssd300_head: "head.classification_head"}


# ---------------------------------------------------------------------------------------- builders
def _sized(fn_name: str, image_size: int) -> Callable[..., nn.Module]:
    """torchvision's builder with the resize set to the training size (its default is 800 px)."""
    import torchvision.models.detection as tvd

    return partial(getattr(tvd, fn_name), min_size=image_size, max_size=image_size)


def _fixed_sized(fn_name: str, image_size: int):
    """torchvision's SSD builder (``ssdlite320_*``, ``ssd300_*``) with its fixed input size replaced by
    ``image_size``."""
    import torchvision.models.detection as tvd
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    def make(**kw):
        model = getattr(tvd, fn_name)(**kw)
        t = model.transform
        # The anchors are fractions of the input, so only the resize changes with the size ...
        model.transform = GeneralizedRCNNTransform(image_size, image_size, t.image_mean, t.image_std,
                                                   size_divisible=1, fixed_size=(image_size, image_size))
        steps = getattr(model.anchor_generator, "steps", None)
        if steps is not None and image_size != 300:
            # ... except SSD300's, whose centres are placed with strides in pixels of a 300 px input:
            # at another size they are placed on the feature maps' own grid.
            model.anchor_generator.steps = None
        return model

    make.__signature__ = inspect.signature(getattr(tvd, fn_name))  # for check_kwargs
    return make


def _ssdlite_sized(image_size: int):
    """torchvision's ssdlite320 builder with its fixed 320 px input replaced by ``image_size``."""
    return _fixed_sized("ssdlite320_mobilenet_v3_large", image_size)


@register_model("fasterrcnn-mobilenet", task="detect", description="torchvision Faster R-CNN, MobileNetV3-Large FPN")
def fasterrcnn_mobilenet(*, num_classes, in_chans=3, image_size=320, pretrained=False, **kw):
    if image_size <= 320:
        # torchvision's own low-resolution recipe (fasterrcnn_mobilenet_v3_large_320_fpn): 150 RPN
        # proposals instead of 1,000 at test time. The RoI head over 1,000 boxes is nearly all of the
        # CPU cost at small sizes (measured: 320 and 640 px cost the same with the 800-px settings).
        for k, v in {"rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150, "rpn_score_thresh": 0.05}.items():
            kw.setdefault(k, v)
    return _build(_sized("fasterrcnn_mobilenet_v3_large_fpn", image_size), _rcnn_head,
                  "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn-mobilenet (COCO)",
                  num_classes=num_classes, in_chans=in_chans, image_size=image_size, pretrained=pretrained, **kw)


@register_model("fasterrcnn-resnet50", task="detect", description="torchvision Faster R-CNN, ResNet-50 FPN")
def fasterrcnn_resnet50(*, num_classes, in_chans=3, image_size=320, pretrained=False, **kw):
    return _build(_sized("fasterrcnn_resnet50_fpn", image_size), _rcnn_head, "fasterrcnn_resnet50_fpn",
                  "fasterrcnn-resnet50 (COCO)", num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                  pretrained=pretrained, **kw)


@register_model("retinanet-resnet50", task="detect", description="torchvision RetinaNet, ResNet-50 FPN")
def retinanet_resnet50(*, num_classes, in_chans=3, image_size=320, pretrained=False, **kw):
    return _build(_sized("retinanet_resnet50_fpn", image_size), _retina_head, "retinanet_resnet50_fpn",
                  "retinanet-resnet50 (COCO)", num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                  pretrained=pretrained, **kw)


@register_model("fcos-resnet50", task="detect", description="torchvision FCOS, ResNet-50 FPN")
def fcos_resnet50(*, num_classes, in_chans=3, image_size=320, pretrained=False, **kw):
    return _build(_sized("fcos_resnet50_fpn", image_size), _fcos_head, "fcos_resnet50_fpn",
                  "fcos-resnet50 (COCO)", num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                  pretrained=pretrained, **kw)


@register_model("ssdlite", task="detect", description="torchvision SSDlite, MobileNetV3-Large")
def ssdlite(*, num_classes, in_chans=3, image_size=320, pretrained=False, **kw):
    return _build(_ssdlite_sized(image_size), _ssd_head, "ssdlite320_mobilenet_v3_large", "ssdlite (COCO)",
                  num_classes=num_classes, in_chans=in_chans, image_size=image_size, pretrained=pretrained, **kw)


# ------------------------------------------------------------------ every torchvision builder: tv:NAME
# torchvision's detection builders by family (name prefix): how the class head is replaced, how the
# input size is set. Mask and keypoint R-CNN train on instance masks / keypoints, which the detect task
# does not give them: they are refused (REFUSED) instead of trained without their second head's loss.
_FAMILIES = {"fasterrcnn_": (_rcnn_head, _sized), "retinanet_": (_retina_head, _sized),
             "fcos_": (_fcos_head, _sized), "ssdlite": (_ssd_head, _fixed_sized), "ssd300": (_ssd300_head, _fixed_sized)}
REFUSED = {
    "maskrcnn_": "trains on instance masks as well as boxes, which `recogen detect train` does not give it; "
                 "use tv:{fasterrcnn} (the same detector without the mask head) for boxes, or `recogen segment "
                 "train` for masks",
    "keypointrcnn_": "trains on keypoints as well as boxes, which `recogen detect train` does not give it; use "
                     "tv:{fasterrcnn} (the same detector without the keypoint head) for boxes",
}
# The smallest input each family builds at (SSD300's VGG extra layers end in unpadded 3x3 convs).
_MIN_SIZE = {"ssd300": 268}


def refusal(arch: str) -> str | None:
    """Why torchvision's detection builder ``arch`` does not train in recogen (None: it does)."""
    for prefix, why in REFUSED.items():
        if arch.startswith(prefix):
            return why.format(fasterrcnn="fasterrcnn_" + arch[len(prefix):])
    return None


def _family(arch: str):
    for prefix, fam in _FAMILIES.items():
        if arch.startswith(prefix):
            return prefix, fam
    raise ModelError(f"tv:{arch}: recogen does not know how to replace this detector's class head")


def trainable_detectors() -> list[str]:
    """torchvision's detection builders that train on boxes and labels (``tv:NAME`` for ``detect``)."""
    import torchvision.models as tvm

    return [a for a in tvm.list_models(module=tvm.detection) if refusal(a) is None]


def build_tv_detector(arch: str, *, num_classes: int, in_chans: int = 3, image_size: int = 320,
                      pretrained: bool = False, **kw) -> nn.Module:
    """torchvision's detection builder ``arch`` (``tv:NAME``) sized for the training images with
    ``num_classes + 1`` outputs, as the registered ones above (the same ``_build``)."""
    why = refusal(arch)
    if why:
        raise ModelError(f"tv:{arch} {why}")
    prefix, (head, sized) = _family(arch)
    if image_size < _MIN_SIZE.get(prefix, 0):
        raise ModelError(f"tv:{arch} needs --image-size {_MIN_SIZE[prefix]} or more (its last feature maps "
                         f"shrink to nothing below that), got {image_size}")
    return _build(sized(arch, image_size), head, arch, f"tv:{arch} (COCO)", num_classes=num_classes,
                  in_chans=in_chans, image_size=image_size, pretrained=pretrained, **kw)


def published_layout(arch: str) -> dict[str, torch.Tensor]:
    """The state dict (names and shapes) of ``arch``'s published COCO weights, built without weights
    (BatchNorm counters included: FrozenBatchNorm2d checkpoints lack them, the importer allows both)."""
    import torchvision.models as tvm

    why = refusal(arch)
    if why:
        raise ModelError(f"tv:{arch} {why}")
    n = len(tvm.get_model_weights(arch).DEFAULT.meta["categories"])
    return getattr(tvm.detection, arch)(weights=None, weights_backbone=None, num_classes=n).state_dict()
