"""torchvision ResNets, with a small-image stem (3x3 conv, no max-pool) for inputs under 64 px."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..catalog import register_model
from ..weights import fetch_pretrained


class ResNetClassifier(nn.Module):
    """A torchvision ResNet split into ``forward_features`` (to layer4) and ``forward_head``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward_features(self, x):
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def forward_head(self, x):
        return self.net.fc(torch.flatten(self.net.avgpool(x), 1))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _resnet(arch: str, *, num_classes: int, in_chans: int, image_size: int, pretrained: bool, **kw) -> nn.Module:
    import torchvision.models as tvm

    net = getattr(tvm, arch)(weights=None, **kw)
    if pretrained:
        w = tvm.get_model_weights(arch).DEFAULT
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
        net.load_state_dict(fetch_pretrained(f"{arch} ({w})", lambda: w.get_state_dict(progress=True), str(cache)))
    conv1 = net.conv1
    if image_size < 64:
        # A 7x7/2 conv and a max-pool would shrink 32 px inputs to 8 px before layer1 (CIFAR practice).
        net.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        if pretrained:  # keep the pretrained filters, folded onto the new channel count
            from timm.models import adapt_input_conv

            with torch.no_grad():
                net.conv1.weight.copy_(adapt_input_conv(in_chans, conv1.weight))
    if net.fc.out_features != num_classes:
        net.fc = nn.Linear(net.fc.in_features, num_classes)
    return ResNetClassifier(net)


for _depth in (18, 34, 50):
    def _builder(*, num_classes, in_chans, image_size, pretrained=False, _arch=f"resnet{_depth}", **kw):
        return _resnet(_arch, num_classes=num_classes, in_chans=in_chans, image_size=image_size, pretrained=pretrained, **kw)

    register_model(f"resnet{_depth}", task="classify", description=f"torchvision ResNet-{_depth}, small stem under 64 px")(_builder)
