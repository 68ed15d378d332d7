"""CNN + RNN: a conv feature map read row by row (top to bottom) by a bidirectional GRU."""
from __future__ import annotations

from torch import nn

from ...errors import ModelError
from ..catalog import register_model


class CNNRNN(nn.Module):
    def __init__(self, num_classes: int, in_chans: int, image_size: int, widths=(32, 64), hidden: int = 128):
        super().__init__()
        if image_size < 2 ** len(widths):
            raise ModelError(f"cnn-rnn needs images of at least {2 ** len(widths)} px, got {image_size}")
        layers: list[nn.Module] = []
        c = in_chans
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        side = image_size // 2 ** len(widths)
        self.rnn = nn.GRU(c * side, hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, num_classes)

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, f):
        seq = f.permute(0, 2, 1, 3).flatten(2)  # (B, rows, C*W): one time step per feature-map row
        out, _ = self.rnn(seq)
        return self.fc(out.mean(1))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model("cnn-rnn", task="classify", description="conv feature map read row by row by a bidirectional GRU")
def cnn_rnn(*, num_classes, in_chans, image_size, pretrained=False, **kw):
    if pretrained:
        raise ModelError("cnn-rnn has no published pretrained weights; drop --pretrained or pass --weights PATH")
    return CNNRNN(num_classes, in_chans, image_size, **kw)
