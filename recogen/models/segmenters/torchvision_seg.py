"""torchvision's semantic-segmentation networks (LRASPP, DeepLabV3, FCN), returning plain logits.

torchvision's builders download ImageNet backbone weights by default; here nothing is fetched
unless ``pretrained`` is asked for, and then the full COCO-with-VOC-labels checkpoint comes through
torch.hub's cache (offline: an OfflineError naming the file to place).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..catalog import register_model
from ..parts import HEAD_ATTR, STEM_ATTR
from ..weights import fetch_pretrained


class TorchvisionSegmenter(nn.Module):
    """Wrap a torchvision segmentation model so ``forward`` returns the ``"out"`` logits (B, K, H, W)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def _first_conv(backbone: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """The backbone's input convolution as ``(parent module, attribute name, conv)``."""
    for name, mod in backbone.named_modules():
        if isinstance(mod, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            return backbone.get_submodule(parent_name) if parent_name else backbone, attr, mod
    raise ValueError("backbone has no convolution")


def _adapt_input(net: nn.Module, in_chans: int, pretrained: bool) -> None:
    parent, attr, conv = _first_conv(net.backbone)
    if conv.in_channels == in_chans:
        return
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None)
    if pretrained:  # keep the pretrained filters, folded onto the new channel count
        from timm.models import adapt_input_conv

        with torch.no_grad():
            new.weight.copy_(adapt_input_conv(in_chans, conv.weight))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    setattr(parent, attr, new)


def _new_head(net: nn.Module, num_classes: int) -> None:
    """Replace the final 1x1 classifier convolution(s) with fresh ones for ``num_classes``."""
    fresh = lambda c: nn.Conv2d(c.in_channels, num_classes, 1)  # noqa: E731
    head = net.classifier
    if hasattr(head, "low_classifier"):  # LRASPP: two 1x1 convs summed
        head.low_classifier, head.high_classifier = fresh(head.low_classifier), fresh(head.high_classifier)
    else:  # DeepLabHead / FCNHead: a Sequential ending in the 1x1 conv
        head[-1] = fresh(head[-1])


def fetch_published(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's published state dict of ``arch`` (COCO images with the 21 VOC classes) through
    torch.hub's cache; offline and not cached: an OfflineError naming the file and the folder."""
    import torchvision.models as tvm

    w = tvm.get_model_weights(arch).DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
    return fetch_pretrained(f"{arch} ({w})", lambda: w.get_state_dict(progress=True), str(cache))


def _published_net(arch: str, **kw) -> nn.Module:
    """``arch`` in the layout of its published weights (21 VOC classes, auxiliary head where it has one)."""
    import torchvision.models as tvm

    n = len(tvm.get_model_weights(arch).DEFAULT.meta["categories"])
    extra = {} if arch.startswith("lraspp") else {"aux_loss": True}
    return getattr(tvm.segmentation, arch)(weights=None, weights_backbone=None, num_classes=n, **extra, **kw)


def published_layout(arch: str) -> dict[str, torch.Tensor]:
    """The state dict (names and shapes) of ``arch``'s published weights, built without weights."""
    return _published_net(arch).state_dict()


def _head_names(net: nn.Module) -> tuple[str, ...]:
    """The qualified names of the final 1x1 classifier convolution(s) (what :func:`_new_head` replaces)."""
    if hasattr(net.classifier, "low_classifier"):
        return ("classifier.low_classifier", "classifier.high_classifier")
    return (f"classifier.{len(net.classifier) - 1}",)


def _build(arch: str, *, num_classes: int, in_chans: int, pretrained: bool, **kw) -> nn.Module:
    import torchvision.models as tvm

    builder = getattr(tvm.segmentation, arch)
    if not pretrained:
        net = builder(weights=None, weights_backbone=None, num_classes=num_classes, **kw)
    else:
        # The weights first: offline, the error comes before any time is spent building the network.
        sd = fetch_published(arch)
        # Build the architecture of the checkpoint (21 VOC classes, auxiliary head where it has one),
        # load it, then swap in a head for our classes; the auxiliary head is not trained here.
        net = _published_net(arch, **kw)
        missing, unexpected = net.load_state_dict(sd, strict=False)
        bad = [k for k in missing if not k.endswith("num_batches_tracked")] + list(unexpected)
        if bad:  # (a file saved from FrozenBatchNorm2d has no BatchNorm counters: they may be missing)
            from ...errors import ModelError

            raise ModelError(f"the {arch} weights in {Path(torch.hub.get_dir()) / 'checkpoints'} do not fit "
                             f"this network ({', '.join(bad[:3])}...); re-import them with `recogen weights import`")
        if getattr(net, "aux_classifier", None) is not None:
            net.aux_classifier = None
        _new_head(net, num_classes)
    _adapt_input(net, in_chans, pretrained)
    # For --weights PATH of a tv:NAME model (models/sources.py): the head that a file of other classes
    # does not fill, the input conv folded onto other channel counts.
    setattr(net, HEAD_ATTR, _head_names(net))
    setattr(net, STEM_ATTR, "backbone." + next(n for n, m in net.backbone.named_modules() if isinstance(m, nn.Conv2d)))
    return TorchvisionSegmenter(net)


def trainable_segmenters() -> list[str]:
    """torchvision's segmentation builders (``tv:NAME`` for ``segment``)."""
    import torchvision.models as tvm

    return tvm.list_models(module=tvm.segmentation)


def build_tv_segmenter(arch: str, *, num_classes: int, in_chans: int, image_size: int, pretrained: bool = False,
                       **kw) -> nn.Module:
    """torchvision's segmentation builder ``arch`` (``tv:NAME``), as the registered ones below."""
    return _build(arch, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kw)


def load_published_layout(model: TorchvisionSegmenter, sd: dict[str, torch.Tensor], what: str) -> None:
    """Load a state dict in torchvision's layout (keys without our wrapper's ``net.``; the auxiliary head,
    which recogen does not train, ignored) strictly except the class head (models/weights.py)."""
    from ..weights import load_backbone_strict

    if all(k.startswith("net.") for k in sd):  # a recogen run's own state dict
        sd = {k[len("net."):]: v for k, v in sd.items()}
    if getattr(model.net, "aux_classifier", None) is None:
        sd = {k: v for k, v in sd.items() if not k.startswith("aux_classifier.")}
    load_backbone_strict(model.net, sd, what)


_ARCHS = {
    "lraspp-mobilenet": ("lraspp_mobilenet_v3_large", "torchvision LR-ASPP, MobileNetV3-Large backbone (fast)"),
    "deeplabv3-mobilenet": ("deeplabv3_mobilenet_v3_large", "torchvision DeepLabV3, MobileNetV3-Large backbone"),
    "deeplabv3-resnet50": ("deeplabv3_resnet50", "torchvision DeepLabV3, ResNet-50 backbone (slow on CPU)"),
    "fcn-resnet50": ("fcn_resnet50", "torchvision FCN, ResNet-50 backbone (slow on CPU)"),
}

for _name, (_arch, _desc) in _ARCHS.items():
    def _builder(*, num_classes, in_chans, image_size, pretrained=False, _arch=_arch, **kw):
        return _build(_arch, num_classes=num_classes, in_chans=in_chans, pretrained=pretrained, **kw)

    register_model(_name, task="segment", description=_desc)(_builder)
