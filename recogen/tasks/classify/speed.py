"""``--recipe speed``: the CIFAR-10 speed-run recipe (after Keller Jordan's airbench94) on any small-image data.

What it is, and where each part lives:

- the network: ``speednet`` (``models/classifiers/speednet.py``), whose first conv whitens 2x2 patches
  with filters computed from the training images when training starts (``init_from_data``), at
  airbench's width 64 (2M parameters; ``--model-kwargs '{"width": 32}'`` for 0.5M);
- SGD with Nesterov momentum 0.85 at airbench's *decoupled* rates: 11.5 per 1024 images, divided by
  the momentum's step amplification 1 + 1/(1 - 0.85) (so ``lr`` = 1.5 at batch 1024, scaled linearly
  with the batch), weight decay 0.0153 per 1024 images in the same units (torch's ``weight_decay``
  0.0153/11.5 = 1.33e-3 whatever the batch), BatchNorm shifts at 64x the rate (and 1/64 the decay);
- a triangular one-cycle schedule (0.2x the rate at the start, the peak at 23% of the steps, 0.07x at
  the end) and label smoothing 0.2;
- lookahead (an EMA of the weights copied back into the network every 5 steps, whose decay grows as
  0.95^5 x progress^3) from 30% of the epochs on, and a final copy-back at each epoch's end: the
  checkpoints, validation and the saved model are the averaged weights;
- the whitening layer's bias trains for the first 30% of the epochs only;
- augmentation ``speed``: random integer translations of up to 1/16 of the side (reflect padding; 2 px
  at 32 px) and, where the data allow mirror images (``hflip_ok``), airbench's *alternating* flip: each
  image is flipped in every other epoch, starting with a random half (:class:`ShiftFlip`);
- test-time augmentation: the mean of the logits of the image and its mirror image, where the data
  allow mirrors and the training flipped (:func:`tta_mode`; written to the model card as ``tta``, and
  applied by validation, ``eval``, ``predict``, ``serve`` and the ONNX backend alike).

Progressive batch size is not implemented as such: the batch is fixed, and the annealed learning rate
(with the growing lookahead decay) is its standard equivalent (Smith et al. 2018, "Don't decay the
learning rate, increase the batch size").
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from ...config import ClassifyConfig
from ...errors import ConfigError
from ...models.classifiers.speednet import BN_BIAS_LR_SCALE

LR_PER_1024 = 11.5
WD_PER_1024 = 0.0153
MOMENTUM = 0.85
LABEL_SMOOTHING = 0.2
WARM_FRACTION = 0.3  # of the epochs: whitening bias trains before, lookahead averages after
LOOKAHEAD_EVERY, LOOKAHEAD_DECAY, LOOKAHEAD_POWER = 5, 0.95, 3.0
TRIANGLE = (0.2, 0.23, 0.07)  # schedule: start factor, peak position (fraction of steps), end factor
WHITEN_IMAGES = 5000  # training images the whitening filters are computed from
EPOCHS_AT_50K, MIN_EPOCHS, MAX_EPOCHS = 10, 10, 40
BIG_BATCH, SMALL_BATCH, STEPS_PER_EPOCH = 1024, 64, 32
# speednet keeps airbench's width 64 on small data sets too. On mnist-5k (3,400 training images, seed 0,
# recipe's batch 64) the best validation accuracy of width 64 in 10 epochs was 0.997; width 32 (a quarter of
# the compute) reached 0.987 in 10 epochs and 0.995 in 20, so a narrower default was not supported.


def speed_lr(batch_size: int) -> float:
    """SGD's learning rate (for the mean loss of a batch) of airbench's decoupled 11.5 per 1024 images."""
    return LR_PER_1024 * batch_size / (1024 * (1 + 1 / (1 - MOMENTUM)))


SPEED_WEIGHT_DECAY = WD_PER_1024 / LR_PER_1024  # torch's coupled weight_decay that gives airbench's decay


def speed_batch(n_train: int) -> int:
    """A power of two giving at least ~32 steps per epoch, from 64 up to airbench's 1024."""
    b = 2 ** int(math.floor(math.log2(max(1, n_train) / STEPS_PER_EPOCH)))
    return int(min(BIG_BATCH, max(SMALL_BATCH, b)))


def speed_epochs(n_train: int) -> int:
    """airbench's 10 epochs at 50,000 images, more passes for fewer images (10 x sqrt(50,000 / n), at most 40)."""
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(EPOCHS_AT_50K * math.sqrt(50_000 / max(1, n_train))))))


def _default(name: str) -> Any:
    f = next(f for f in dataclasses.fields(ClassifyConfig) if f.name == name)
    return f.default


def resolve_speed(cfg: ClassifyConfig, splits) -> tuple[ClassifyConfig, list[str]]:
    """The speed recipe's choices for what ``cfg`` leaves open; returns (config, reasons).

    Options with an "auto"/None default are filled only when not given. The optimiser, weight decay and
    label smoothing have plain defaults (adamw, 5e-4, 0.1) that cannot be told from the same value
    given on purpose: those are replaced while they hold their defaults (so ``--recipe speed`` always
    trains with SGD; any other weight decay or label smoothing given is kept).
    """
    from ..runs import resolve_budget
    from ..trainer import auto_precision
    from .recipe import DEFAULT_BUDGET, _check_unfreeze

    if cfg.freeze_backbone or cfg.pretrained or (cfg.backbone_lr_mult not in (None, 1.0)):
        raise ConfigError("--recipe speed trains the whole network at one set of rates; drop --freeze-backbone, "
                          "--pretrained and --backbone-lr-mult, or use --recipe default for fine-tuning")
    n = len(splits.train)
    why: list[str] = ["recipe speed (airbench-style CIFAR-10 speed-run recipe)"]
    c = dataclasses.replace(cfg, model_kwargs=dict(cfg.model_kwargs))
    if c.model == "auto":
        c.model = "speednet"
        why.append("model speednet (whitened 2x2 first conv, conv-BN-GELU groups, airbench's 2M parameters)")
    if c.batch_size is None:
        c.batch_size = speed_batch(n)
        why.append(f"batch size {c.batch_size} (~{max(1, n // c.batch_size)} steps per epoch, at most 1024)")
    budget = resolve_budget(c, DEFAULT_BUDGET, why)
    if c.epochs is None:
        c.epochs = speed_epochs(n)
        why.append(f"{'at most ' if budget else ''}{c.epochs} epochs (10 at 50,000 images, more for fewer)")
    _check_unfreeze(c, explicit_epochs=cfg.epochs is not None, why=why)
    if c.optimizer == _default("optimizer"):
        c.optimizer = "sgd"
    if c.lr is None:
        c.lr = round(speed_lr(c.batch_size), 6)
        why.append(f"lr {c.lr:g} (SGD Nesterov, momentum {MOMENTUM}: {LR_PER_1024} per 1024 images, decoupled; "
                   f"BatchNorm shifts x{BN_BIAS_LR_SCALE:g})")
    if c.weight_decay == _default("weight_decay"):
        c.weight_decay = round(SPEED_WEIGHT_DECAY, 7)
        why.append(f"weight decay {c.weight_decay:g} ({WD_PER_1024} per 1024 images)")
    if c.label_smoothing == _default("label_smoothing"):
        c.label_smoothing = LABEL_SMOOTHING
        why.append(f"label smoothing {LABEL_SMOOTHING}")
    if c.schedule == "onecycle":
        why.append("triangular one-cycle LR (0.2x -> peak at 23% -> 0.07x)")
    why.append(f"lookahead EMA of the weights from {WARM_FRACTION:.0%} of the epochs")
    c.backbone_lr_mult = 1.0
    if c.augment == "auto":
        c.augment = "speed"
    flips = splits.hflip_ok and c.augment != "none"
    if c.augment == "speed":
        why.append("augment speed (translate up to 1/16 of the side" +
                   (", alternating flips)" if splits.hflip_ok else "; no flips: mirror images change these classes)"))
    why.append("flip TTA (mean of the image and its mirror) in eval and predict" if flips else
               "no flip TTA (" + ("--augment none" if splits.hflip_ok else "mirror images change these classes") + ")")
    if c.precision == "auto":
        c.precision = auto_precision()
        why.append(f"precision {c.precision}")
    if c.channels_last is None:
        c.channels_last = True
    c.image_size, c.channels = splits.image_size[0], splits.channels
    return c, why


def tta_mode(cfg: Any, hflip_ok: bool) -> str:
    """"hflip" (average with the mirror image) for a speed-recipe run on data that allow mirrors and that
    trained with flips; else "none". The model card keeps it (``tta``) for eval, predict and serve."""
    if getattr(cfg, "recipe", "default") != "speed" or not hflip_ok or cfg.augment == "none":
        return "none"
    return "hflip"


def tta_logits(model: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    """The model's logits for ``x``, averaged with those of its mirror image when ``mode`` is "hflip"."""
    logits = model(x)
    if mode == "hflip":
        logits = (logits + model(x.flip(-1))) / 2
    elif mode != "none":
        raise ConfigError(f"unknown test-time augmentation {mode!r} in the model card; expected hflip or none")
    return logits


# ------------------------------------------------------------------------------------- augmentation
class ShiftFlip(nn.Module):
    """Random integer translations (reflect padding) and airbench's alternating flip, on a float batch.

    Alternating flip: an image is mirrored in every other epoch, and which half of the images starts
    mirrored is random. Batches carry no image indices, so an image's starting state is a bit drawn from
    its pixels (the parity of a fixed random subset of them): the same image always gets the same bit.
    """

    def __init__(self, hflip: bool, seed: int = 0):
        super().__init__()
        self.hflip, self.seed, self.epoch = hflip, seed, 0
        self._mask: torch.Tensor | None = None

    def start_bits(self, x: torch.Tensor) -> torch.Tensor:
        """One bit per image of ``x`` (floats in [0, 1]), a function of its pixels only."""
        d = x[0].numel()
        if self._mask is None or self._mask.numel() != d or self._mask.device != x.device:
            g = torch.Generator().manual_seed(self.seed + 12_345)
            self._mask = torch.randint(0, 2, (d,), generator=g, dtype=torch.int32).to(x.device)
        pixels = (x.reshape(len(x), -1) * 255).round_().to(torch.int32)
        return (pixels * self._mask).sum(1) % 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if self.hflip:
            flip = (self.start_bits(x) + self.epoch) % 2 == 1
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        r = max(1, round(min(h, w) / 16))
        if r >= min(h, w):
            return x
        padded = nn.functional.pad(x, (r, r, r, r), mode="reflect").permute(0, 2, 3, 1)  # (B, H+2r, W+2r, C)
        dy = torch.randint(0, 2 * r + 1, (b,), device=x.device)
        dx = torch.randint(0, 2 * r + 1, (b,), device=x.device)
        rows = (dy.view(-1, 1) + torch.arange(h, device=x.device)).view(b, h, 1)
        cols = (dx.view(-1, 1) + torch.arange(w, device=x.device)).view(b, 1, w)
        out = padded[torch.arange(b, device=x.device).view(-1, 1, 1), rows, cols]  # (B, H, W, C)
        return out.permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------- optimisation
class TriangleLR(torch.optim.lr_scheduler.LambdaLR):
    """airbench's triangular one-cycle: linear from ``start`` x to 1 x the rate at ``peak`` of the steps,
    then linear to ``end`` x at the last step (per step; ``total_steps`` is saved in its state)."""

    def __init__(self, opt, total_steps: int, start: float = TRIANGLE[0], peak: float = TRIANGLE[1],
                 end: float = TRIANGLE[2]):
        self.total_steps = int(total_steps)
        top = max(1, int(peak * total_steps))

        def factor(t: int) -> float:
            if t <= top:
                return start + (1 - start) * t / top
            return 1 + (end - 1) * min(1.0, (t - top) / max(1, total_steps - top))

        super().__init__(opt, factor)


def configure_optimizers(module) -> Any:
    """SGD (or AdamW) in two groups, the network's BatchNorm shifts at ``bn_bias_lr_scale`` x the rate
    (speednet: 64, with 1/64 the decay, so their decay per step stays the same), and the triangle
    schedule (``--schedule onecycle``; cosine and none as the default recipe makes them)."""
    from ..budget import SCHEDULE_REBUILDERS
    from ..trainer import make_scheduler

    cfg, model = module.cfg, module.model
    total = int(module.trainer.estimated_stepping_batches)
    scale = float(getattr(model, "bn_bias_lr_scale", 1.0))
    shifts = [m.bias for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and m.bias is not None and m.bias.requires_grad] if scale != 1.0 else []
    ids = {id(p) for p in shifts}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": others, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    if shifts:
        groups.append({"params": shifts, "lr": cfg.lr * scale, "weight_decay": cfg.weight_decay / scale})
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=MOMENTUM, nesterov=True)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.schedule == "onecycle":
        if total < 3:
            return opt
        sched = TriangleLR(opt, total)
        SCHEDULE_REBUILDERS[sched] = lambda steps: TriangleLR(opt, steps)
    else:
        sched = make_scheduler(opt, cfg.schedule, [g["lr"] for g in opt.param_groups], total)
        if sched is None:
            return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def warm_epochs(max_epochs: int) -> int:
    """Epochs before the lookahead starts and the whitening bias stops training (30%, at least 1)."""
    return max(1, int(round(WARM_FRACTION * max_epochs)))


class Lookahead:
    """airbench's lookahead: every ``every`` steps from ``start_epoch`` on, a slow copy of the weights
    (and float buffers) moves toward the network (``slow += (1 - rho) (net - slow)``) and is copied back
    into it; ``rho`` grows as ``decay^every x progress^power``. :meth:`sync` copies the slow weights back
    at an epoch's end, so checkpoints hold them and a resumed run re-creates the same state from them."""

    def __init__(self, every: int = LOOKAHEAD_EVERY, decay: float = LOOKAHEAD_DECAY, power: float = LOOKAHEAD_POWER):
        self.every, self.decay, self.power = every, decay, power
        self.slow: list[torch.Tensor] | None = None

    @staticmethod
    def _tensors(model: nn.Module) -> list[torch.Tensor]:
        return [t for t in model.state_dict(keep_vars=False).values() if t.is_floating_point()]

    def first_step(self, start_epoch: int, steps_per_epoch: int) -> int:
        """The first (1-based) optimiser step at which the slow weights exist."""
        first = start_epoch * steps_per_epoch + 1
        return -(-first // self.every) * self.every

    def resume(self, model: nn.Module, step: int, start_epoch: int, steps_per_epoch: int) -> None:
        """A run restored at ``step``: the slow weights exist if they were made before, and equal the
        network (the last epoch ended with :meth:`sync`)."""
        self.slow = None
        if step >= self.first_step(start_epoch, steps_per_epoch):
            self.slow = [t.detach().clone() for t in self._tensors(model)]

    @torch.no_grad()
    def step(self, model: nn.Module, step: int, total: int, epoch: int, start_epoch: int) -> None:
        if epoch < start_epoch or step % self.every:
            return
        if self.slow is None:
            self.slow = [t.detach().clone() for t in self._tensors(model)]
            return
        rho = self.decay ** self.every * min(1.0, step / max(1, total)) ** self.power
        for s, t in zip(self.slow, self._tensors(model)):
            s.lerp_(t, 1 - rho)
            t.copy_(s)

    @torch.no_grad()
    def sync(self, model: nn.Module) -> None:
        if self.slow is not None:
            for s, t in zip(self.slow, self._tensors(model)):
                t.copy_(s)


def train_images(trainer) -> torch.Tensor | None:
    """The uint8 training images behind the trainer's training batches (recogen's in-memory
    ``EpochSeeded(TensorBatches(ImageSet))``), or None for other loaders."""
    batches = getattr(trainer.train_dataloader, "batches", trainer.train_dataloader)
    images = getattr(getattr(batches, "ds", None), "images", None)
    return images if isinstance(images, torch.Tensor) else None
