"""speednet: the small conv-BN-GELU network of the CIFAR-10 speed runs (the ``--recipe speed`` model).

After Keller Jordan's airbench94 (github.com/KellerJordan/cifar10-airbench; our own code):

- a first 2x2 convolution whose filters *whiten* the input patches: the eigenvectors of the training
  images' 2x2-patch covariance, each scaled by 1/sqrt(eigenvalue + eps), with and without a minus sign
  (2 x C x 2 x 2 filters). The filters are computed once from the training images (:meth:`SpeedNet.init_from_data`,
  called by the classification module when training starts) and never trained: they are a buffer, so the
  checkpoint and ``model.safetensors`` carry them and predict/export/resume use exactly the same ones.
  Before that call they are ordinary random conv filters (a network built elsewhere still runs);
- three groups of conv3x3 - max-pool 2 - BatchNorm - GELU - conv3x3 - BatchNorm - GELU, widths
  (w, 4w, 4w), w = 64 by default (about 2M parameters; ``{"width": 32}`` about 0.5M); each conv's first
  filters start as the identity (a residual path without the extra add);
- BatchNorm with its scale fixed at 1 (only the shift trains; the speed recipe gives those shifts a 64x
  learning rate), momentum 0.4 (torch's convention), eps 1e-12;
- a global max-pool and a bias-free linear head whose logits are scaled by 1/9.

Any image size from 4 px works: a group pools only while its input is at least 2 px (8 px digits: 7 -> 3
-> 1 -> 1), and the head pools whatever is left. 1 or 3 channels.
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import ModelError
from ..catalog import register_model

BN_BIAS_LR_SCALE = 64.0  # the speed recipe's learning-rate multiplier of the BatchNorm shifts


class Whitening(nn.Module):
    """A ``k x k`` valid convolution with fixed, data-computed filters (a buffer) and a trainable bias."""

    def __init__(self, in_chans: int, kernel: int = 2, eps: float = 5e-4):
        super().__init__()
        self.kernel, self.eps = kernel, eps
        d = in_chans * kernel * kernel
        w = torch.empty(2 * d, in_chans, kernel, kernel)
        nn.init.kaiming_uniform_(w, a=5 ** 0.5)  # nn.Conv2d's init until the data's filters replace it
        self.register_buffer("weight", w)
        self.register_buffer("ready", torch.zeros(1, dtype=torch.uint8))  # 1 once computed from data
        self.bias = nn.Parameter(torch.zeros(2 * d))

    def forward(self, x):
        return nn.functional.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype))

    @torch.no_grad()
    def fit(self, images: torch.Tensor, chunk: int = 256) -> None:
        """Set the filters from ``images`` (float (N, C, H, W), normalised as the network sees them)."""
        k, c = self.kernel, images.shape[1]
        d = c * k * k
        cov = torch.zeros(d, d, dtype=torch.float64, device=images.device)
        count = 0
        for i in range(0, len(images), chunk):  # patches of a few hundred images at a time: bounded memory
            p = images[i : i + chunk].float().unfold(2, k, 1).unfold(3, k, 1)  # (n, C, H', W', k, k)
            p = p.permute(0, 2, 3, 1, 4, 5).reshape(-1, d).double()
            cov += p.T @ p
            count += len(p)
        cov = (cov / max(count, 1)).cpu()  # uncentred, as in airbench: the inputs are already normalised
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals, evecs = evals.flip(0), evecs.flip(1).T  # largest first; one eigenvector per row
        # Each eigenvector's sign is arbitrary: make its largest entry positive, so the filters (and their
        # order) are the same on every machine and in every process of a multi-process run.
        rows = torch.arange(d)
        evecs = evecs * torch.sign(evecs[rows, evecs.abs().argmax(1)]).unsqueeze(1)
        w = (evecs / torch.sqrt(evals.clamp_min(0) + self.eps).unsqueeze(1)).reshape(d, c, k, k)
        self.weight.copy_(torch.cat([w, -w]).to(self.weight))
        self.ready.fill_(1)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(cin, cout)])  # the first filters pass their input through
    return conv


def _norm(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, eps=1e-12, momentum=0.4)
    bn.weight.requires_grad_(False)  # scale fixed at 1: only the shift trains
    return bn


def _group(cin: int, cout: int, pool: bool) -> nn.Sequential:
    return nn.Sequential(_conv(cin, cout), nn.MaxPool2d(2) if pool else nn.Identity(), _norm(cout), nn.GELU(),
                         _conv(cout, cout), _norm(cout), nn.GELU())


class SpeedNet(nn.Module):
    """Whitening conv, GELU, three conv groups, global max-pool, scaled linear head."""

    bn_bias_lr_scale = BN_BIAS_LR_SCALE

    def __init__(self, num_classes: int, in_chans: int, image_size: int, width: int = 64,
                 whiten_kernel: int = 2, whiten_eps: float = 5e-4, logit_scale: float = 1 / 9):
        super().__init__()
        if image_size < whiten_kernel + 2:
            raise ModelError(f"speednet needs images of at least {whiten_kernel + 2} px, got {image_size}; "
                             f"use --image-size 16 or more")
        if width < 1:
            raise ModelError(f"speednet width must be at least 1, got {width}")
        widths = (width, 4 * width, 4 * width)
        side = image_size - whiten_kernel + 1
        layers: list[nn.Module] = [Whitening(in_chans, whiten_kernel, whiten_eps), nn.GELU()]
        c = 2 * in_chans * whiten_kernel ** 2
        for w in widths:
            pool = side >= 2
            side = side // 2 if pool else side
            layers.append(_group(c, w, pool))
            c = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes, bias=False)
        self.logit_scale = logit_scale

    @property
    def whiten(self) -> Whitening:
        """The first layer (``features.0``)."""
        return self.features[0]

    @property
    def needs_data_init(self) -> bool:
        """True until :meth:`init_from_data` has computed the whitening filters."""
        return not bool(self.whiten.ready.item())

    def init_from_data(self, images: torch.Tensor) -> None:
        """Compute the whitening filters from training images (float, normalised as in training)."""
        self.whiten.fit(images)

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, f):
        return self.fc(f.amax(dim=(2, 3))) * self.logit_scale

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model("speednet", task="classify",
                description="CIFAR speed-run net (airbench-style): data-whitened 2x2 first conv, conv-BN-GELU groups; "
                            "--recipe speed")
def speednet(*, num_classes, in_chans, image_size, pretrained=False, **kw):
    if pretrained:
        raise ModelError("speednet has no published pretrained weights; drop --pretrained or pass --weights PATH")
    return SpeedNet(num_classes, in_chans, image_size, **kw)
