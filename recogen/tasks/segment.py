"""Semantic segmentation: the Lightning module, training, evaluation and prediction.

Masks hold a class index per pixel (``seg_classes``; 255 = ignore). Training, validation and
evaluation all read the same pixel confusion matrix (recogen.metrics.segmentation); evaluation and
prediction score masks at the resolution of the data (logits are resized back bilinearly before
the argmax), never at the network's input size.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ..config import SegmentConfig
from ..data.base import convert_channels, resize_images
from ..data.dense import IGNORE_INDEX, DenseSet, DenseSplits, create_dense_dataset
from ..data.images import expand_inputs, open_image
from ..data.loaders import TensorBatches
from ..data.manifest import write_manifest
from ..errors import ConfigError, DataError, RunError
from ..artifact import load_portable, read_card, save_portable
from ..utils import atomic_write, seed_everything, write_json
from . import common

TASK = "segment"
# Learning to tell shapes apart from scratch takes tens of thousands of image presentations (on
# ``shapes`` the mIoU grows about linearly with them), so the default recipe is a time budget spent on
# as many images as possible: a narrow U-Net at ~64 px of internal resolution. The budget (wall clock,
# re-planned from measured epoch times: tasks/budget.py) decides the epochs; the data set an upper
# bound of pixel passes, about 4x what fits 8 minutes of 2 CPU cores.
DEFAULT_BUDGET = "8m"
# Cross-entropy plus soft Dice: on digit-scenes' validation split (seed 0, equal 3-minute budgets) it
# reached mIoU 0.166 against 0.145 for cross-entropy alone (a thin "1" stayed unpredicted with CE).
DEFAULT_LOSS = "ce+dice"
_PIXEL_PASSES = 420 * 64 * 64 * 320
# Training cost per pixel relative to the default U-Net (width 8), measured on this CPU at 64-128 px;
# scales the epochs of the other models so their runs take about as long (at least 5 epochs).
_RELATIVE_COST = {"unet": 1.0, "lraspp-mobilenet": 1.3, "deeplabv3-mobilenet": 2.5, "deeplabv3-resnet50": 22.0,
                  "fcn-resnet50": 23.0}
_UNET_WIDTH = 8  # a quarter of the compute of width 16 and no slower to learn per image (measured)


# --------------------------------------------------------------------------------------- defaults
def resolve_defaults(cfg: SegmentConfig, splits: DenseSplits) -> tuple[SegmentConfig, list[str]]:
    """Replace every "auto"/None in ``cfg`` with a choice that fits the data and this CPU; return the reasons.

    The recipe: a U-Net of width 8 from scratch (``stem_stride`` 2 above 96 px, so the network runs
    at half resolution and upsamples its logits; class logits fused from every decoder stage), AdamW + one-cycle at 3e-3, light augmentation,
    batch 16, cross-entropy + soft Dice, bf16 where the hardware has it (else fp32), channels-last;
    trained for the time budget (8 minutes by default, epochs re-planned from measured epoch times)
    within an upper bound of pixel passes.
    """
    n, (h, w), chans = len(splits.train), splits.image_size, splits.channels
    why: list[str] = []
    c = dataclasses.replace(cfg, model_kwargs=dict(cfg.model_kwargs))
    if c.model == "auto":
        # Only the torchvision networks have pretrained weights; from scratch the small U-Net wins on CPU.
        c.model = "lraspp-mobilenet" if c.pretrained else "unet"
        why.append(f"model {c.model} ({'pretrained weights asked for' if c.pretrained else 'from scratch, fast on CPU'})")
    stride = 1
    if c.model == "unet" and not c.model_kwargs:
        stride = 2 if min(h, w) > 96 else 1
        # One more level where the network's input allows a bottleneck of >= 2 px: telling the shapes
        # apart needs context, and depth 5 learned it faster than 4 at the same budget (measured:
        # shapes:600 at 128 px, 100 epochs, mIoU 0.66 vs 0.53).
        depth = 5 if min(h, w) // stride >= 64 else 4
        # Class logits fused from every decoder stage: with 8 channels at the last stage alone, whole
        # classes were never predicted (a "1" read as "4"); fused, every class was (measured on the
        # digit-scenes val split, 30 epochs: mIoU 0.61 vs 0.37, worst class 0.44 vs 0.00).
        c.model_kwargs = {"width": _UNET_WIDTH, "depth": depth, "stem_stride": stride, "fuse_logits": True}
        why.append(f"unet width {_UNET_WIDTH}, depth {depth}" + (", stem stride 2 (works at half resolution)" if stride == 2 else "")
                   + ", logits fused from every decoder stage")
    elif c.model == "unet":
        stride = int(c.model_kwargs.get("stem_stride", 1))
    if c.batch_size is None:
        c.batch_size = 16 if h * w <= 256 * 256 else 8
        why.append(f"batch size {c.batch_size}")
    budget = common.resolve_budget(c, DEFAULT_BUDGET, why)
    if c.epochs is None:
        cost = _RELATIVE_COST.get(c.model, 4.0)
        if c.model == "unet":
            cost *= (int(c.model_kwargs.get("width", 16)) / _UNET_WIDTH) ** 2
        passes = _PIXEL_PASSES / (cost * n * (h / stride) * (w / stride))
        c.epochs = int(min(300, max(5, round(passes))))
        why.append(f"{'at most ' if budget else ''}{c.epochs} epochs (~{c.epochs * max(1, n // c.batch_size)} steps)")
    if c.lr is None:
        c.lr = 3e-3 if c.model == "unet" else 1e-3
        if c.pretrained:
            c.lr *= 0.3
        why.append(f"lr {c.lr:g} ({c.optimizer}, {c.schedule})")
    if c.augment == "auto":
        c.augment = "light"
        why.append(f"augment {c.augment}")
    if c.loss == "auto":
        c.loss = DEFAULT_LOSS
        why.append(f"loss {c.loss}")
    if c.precision == "auto":
        c.precision = common.auto_precision()
        why.append(f"precision {c.precision}")
    if c.channels_last is None:
        c.channels_last = True  # about 15% faster convolutions on this CPU (measured, U-Net)
    c.image_size, c.channels = h, chans
    return c, why


# ------------------------------------------------------------------------------------------ batches
@dataclasses.dataclass
class _Pairs:
    """(images, masks) viewed as what TensorBatches indexes: ``images`` and ``labels``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.images)


def mask_batches(ds: DenseSet, batch_size: int, *, shuffle: bool = False, drop_last: bool = False, seed: int = 0):
    """``(uint8 images (B,C,H,W), uint8 masks (B,H,W))`` batches of a DenseSet, indexed in memory.

    Shuffled batches are re-seeded per (seed, epoch) through Lightning's ``set_epoch``, as classify's
    :class:`~recogen.tasks.common.EpochBatches`, so a resumed run sees the same order.
    """
    if ds.masks is None:
        raise DataError("this data set has no masks; segmentation needs masks:PATH, coco: with segmentations, or shapes")
    # Only the training loader may look like a sampler: Lightning inspects those as DataLoaders.
    cls = common.EpochBatches if shuffle else TensorBatches
    return cls(_Pairs(ds.images, ds.masks), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)


# ---------------------------------------------------------------------------------- Lightning module
def make_module(model: nn.Module, cfg: SegmentConfig, num_classes: int, mean: list[float], std: list[float],
                label_offset: int = 1, hflip_ok: bool = True):
    """Build the LightningModule that trains ``model`` as ``cfg`` says.

    ``label_offset`` is the mask value of object class 0 (1 when mask class 0 is background); the
    augmentation uses it to keep boxes and masks in step.
    """
    pl = common.lightning()
    from torchmetrics.classification import MulticlassConfusionMatrix

    from ..data.transforms import get_preset
    from ..metrics.segmentation import miou_from_confusion

    from ..models.segmenters.losses import get_loss

    loss_fn = get_loss(cfg.loss)
    preset = get_preset(cfg.augment)
    augment = None
    if not preset.is_identity:
        try:
            from ..data.dense_transforms import DenseAugment
        except ImportError:
            raise ConfigError(f"--augment {cfg.augment} needs recogen.data.dense_transforms, which is missing; "
                              f"use --augment none") from None
        augment = DenseAugment(preset, hflip_ok=hflip_ok, label_offset=label_offset)

    class SegmenterModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
            self.val_cm = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, validate_args=False)

        def forward(self, x):
            return self.model(x)

        def on_train_epoch_start(self):
            # Re-seed per epoch: augmentation draws then do not depend on whether the run was
            # interrupted and resumed before this epoch.
            torch.manual_seed(cfg.seed * 100_003 + self.current_epoch)
            self.loss_sum, self.seen = torch.zeros((), device=self.device), 0

        def on_after_batch_transfer(self, batch, dataloader_idx):
            # Runs on the training device. Geometry moves image and mask together on the uint8 batch
            # (the mask gets 255 where the affine brings in pixels from outside the image).
            x, m = batch
            if self.trainer.training and augment is not None:
                none = [torch.zeros(0, 4)] * len(x), [torch.zeros(0, dtype=torch.long)] * len(x)
                x, _, _, m = augment(x, *none, m)
            x = (x.float().div_(255) - self.mean) / self.std
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return x, m.long()

        def training_step(self, batch, batch_idx):
            x, m = batch
            logits = self.model(x).float()
            # A batch whose pixels are all ignored would give 0/0 = NaN.
            loss = loss_fn(logits, m) if (m != IGNORE_INDEX).any() else logits.sum() * 0
            # Summed here and logged once per epoch (a per-step log costs time on CPU; see classify).
            self.loss_sum += loss.detach() * len(x)
            self.seen += len(x)
            if batch_idx + 1 == self.trainer.num_training_batches:
                self.log("train_loss", self.loss_sum / self.seen, on_step=False, on_epoch=True, prog_bar=True)
            return loss

        def validation_step(self, batch, batch_idx):
            x, m = batch
            logits = self.model(x).float()
            if (m != IGNORE_INDEX).any():
                self.log("val_loss", nn.functional.cross_entropy(logits, m, ignore_index=IGNORE_INDEX), prog_bar=True)
            self.val_cm.update(logits.argmax(1), m)

        def on_validation_epoch_end(self):
            # mIoU over the whole split, from the accumulated confusion matrix (a mean of per-batch
            # mIoUs would weight small batches and rare classes wrongly).
            self.log("val_miou", miou_from_confusion(self.val_cm.compute()).float(), prog_bar=True)
            self.val_cm.reset()

        def configure_optimizers(self):
            return common.configure_optimizers(cfg, self.model.parameters(), int(self.trainer.estimated_stepping_batches))

    return SegmenterModule()


# -------------------------------------------------------------------------------------------- train
def train(config: SegmentConfig | dict | str | Path | None = None, callbacks: Iterable | None = None, **options: Any) -> Path:
    """Train a segmenter and return its run folder.

    The folder gets ``config.yaml`` (resolved), ``checkpoints/{best,last}.ckpt``, ``tensorboard/``,
    ``history.json``, the portable ``model.safetensors`` + ``model.json``, and the test-split
    ``metrics.json`` with ``per_class_iou.png``, ``confusion_matrix.png`` and ``sample_predictions.png``.

    >>> run = train(data="shapes:600", out="runs/segment/shapes")
    """
    cfg, run, ckpt = common.prepare_run(SegmentConfig, TASK, common.make_config(SegmentConfig, config, options))
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    splits = create_dense_dataset(cfg.data, common.data_options(cfg))
    for name in ("train", "val"):
        if splits.split(name).masks is None:
            raise DataError(f"data {cfg.data!r} has no masks; segmentation needs masks:PATH, coco: with "
                            f"segmentations, or shapes")
    cfg, why = resolve_defaults(cfg, splits)
    cfg.out = str(run)
    h, w = splits.image_size
    print(f"data {cfg.data}: {len(splits.train)} train / {len(splits.val)} val / "
          f"{len(splits.test) if splits.test is not None else 0} test, {len(splits.seg_classes)} pixel classes, "
          f"{h}x{w}x{cfg.channels}")
    if why:
        print("auto: " + "; ".join(why))
    for note in splits.notes:
        print("note: " + note)

    classes = splits.seg_classes
    model = common.create_model(cfg.model, cfg.model_kwargs, num_classes=len(classes), in_chans=cfg.channels,
                                image_size=cfg.image_size, pretrained=cfg.pretrained and not cfg.resume,
                                weights=None if cfg.resume else cfg.weights)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean, std = splits.mean_std()
    offset = 1 if classes and classes[0] == "background" else 0
    module = make_module(model, cfg, len(classes), mean, std, label_offset=offset, hflip_ok=splits.hflip_ok)
    common.save_config(cfg, run)
    write_manifest(run, splits, cfg)  # which images each split holds (splits.json)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {cfg.model}: {n_params / 1e6:.2f}M parameters; {common.plan_text(cfg)}, batch {cfg.batch_size}, "
          f"{cfg.precision}; run folder {run}")

    # drop_last: BatchNorm (and torchvision's ASPP pooling) cannot train on a batch of one.
    train_dl = mask_batches(splits.train, cfg.batch_size, shuffle=True, drop_last=True, seed=cfg.seed)
    val_dl = mask_batches(splits.val, max(32, cfg.batch_size))
    trainer = common.make_trainer(cfg, run, monitor="val_miou", mode="max", steps_per_epoch=len(train_dl),
                                  extra_callbacks=callbacks or (), t_start=t0,
                                  reserve=common.eval_reserve(splits, 5.0))
    common.fit(trainer, module, train_dl, val_dl, ckpt)
    common.load_best(module, run)
    model = module.model.to(memory_format=torch.contiguous_format).cpu().eval()
    save_portable(run, model, {
        "task": TASK, "model": cfg.model, "model_kwargs": cfg.model_kwargs, "classes": classes,
        "image_size": cfg.image_size, "in_chans": cfg.channels, "normalize": {"mean": mean, "std": std},
        "data": cfg.data, "ignore_index": IGNORE_INDEX,
    })
    train_s = time.perf_counter() - t0
    eval_split = "test" if splits.test is not None else "val"
    metrics = _evaluate_model(model, read_card(run), splits.split(eval_split), run, eval_split, cfg.data)
    common.write_run_report(run)
    print(f"trained {trainer.current_epoch} epochs in {train_s:.1f} s; {eval_split} mIoU {metrics['miou']:.4f}, pixel accuracy "
          f"{metrics['pixel_accuracy']:.4f}; wrote {run}")
    return run


# ---------------------------------------------------------------------------------------- evaluate
def _fit_images(images: torch.Tensor, card: dict[str, Any]) -> torch.Tensor:
    """A uint8 batch converted to the model's channels and input size."""
    return resize_images(convert_channels(images, card["in_chans"]), card["image_size"])


@torch.inference_mode()
def predict_logits(model: nn.Module, card: dict[str, Any], images: torch.Tensor,
                   out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Float logits (B, K, H, W) of a uint8 batch; resized bilinearly to ``out_size`` (default: the batch's size)."""
    out_size = tuple(out_size or images.shape[-2:])
    mean = torch.tensor(card["normalize"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(card["normalize"]["std"]).view(1, -1, 1, 1)
    dev = next(model.parameters()).device
    x = (_fit_images(images, card).float().div_(255) - mean) / std
    logits = model(x.to(dev)).float()
    if tuple(logits.shape[-2:]) != out_size:
        logits = nn.functional.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
    return logits.cpu()


def predict_masks(model: nn.Module, card: dict[str, Any], images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Class-index masks uint8 (N, H, W) at the images' own size, for a uint8 batch of any size and channels."""
    out = [predict_logits(model, card, images[i : i + batch_size]).argmax(1).to(torch.uint8)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros((0, *images.shape[-2:]), dtype=torch.uint8)


def _evaluate_model(model, card, ds: DenseSet, run: Path | None, split: str, data: str,
                    has_test: bool | None = None) -> dict[str, Any]:
    from ..metrics.heldout import split_fields
    from ..metrics.segmentation import confusion_matrix, segmentation_metrics

    if ds.masks is None:
        raise DataError(f"the {split} split of {data!r} has no masks to evaluate against")
    classes = card["classes"]
    k = len(classes)
    cm = torch.zeros(k, k, dtype=torch.long)
    preds = []
    for i in range(0, len(ds), 32):
        p = predict_masks(model, card, ds.images[i : i + 32])
        cm += confusion_matrix(p, ds.masks[i : i + 32], k)
        preds.append(p)
    m = segmentation_metrics(cm, classes)
    metrics = {"task": TASK, "data": data, **split_fields(split, data, has_test=has_test), "num_images": len(ds),
               "ignore_index": IGNORE_INDEX,
               "miou": m["miou"], "miou_all_classes": m["miou_all_classes"],
               "pixel_accuracy": m["pixel_accuracy"], "mean_dice": m["mean_dice"],
               "num_classes_present": m["num_classes_present"], "per_class": m["per_class"]}
    if run is not None:
        name = "metrics.json" if split == "test" else f"metrics_{split}.json"
        write_json(run / name, metrics)
        from ..report import plot_confusion_matrix

        plot_per_class_iou(metrics["per_class"], run / "per_class_iou.png", title=f"{data} {split}: mIoU {m['miou']:.3f}")
        plot_confusion_matrix(cm.numpy(), classes, run / "confusion_matrix.png", title="Pixel confusion matrix")
        n = min(8, len(ds))
        plot_mask_mosaic(ds.images[:n], ds.masks[:n], torch.cat(preds)[:n], classes, run / "sample_predictions.png")
    return metrics


def evaluate(run: str | Path, data: str | None = None, split: str | None = None, write: bool = True,
             device: str = "cpu") -> dict[str, Any]:
    """Evaluate a trained run on a split of its data (test, else val) or of another data set.

    Writes ``metrics.json`` (``metrics_<split>.json`` for other splits), ``per_class_iou.png``,
    ``confusion_matrix.png`` and ``sample_predictions.png`` into the run folder when ``write`` is
    true, and returns the metrics (keys: miou, miou_all_classes, pixel_accuracy, mean_dice,
    per_class {name: {iou, dice, support_pixels}}, num_images, split, data, ignore_index).
    """
    run = Path(run)
    model, card = load_portable(run, device)
    if card.get("task") != TASK:
        raise RunError(f"{run} holds a {card.get('task')} model, not a segmenter")
    cfg = common.load_run_config(SegmentConfig, run) if (run / "config.yaml").is_file() else SegmentConfig(data=card["data"])
    spec = data or cfg.data
    opts = common.data_options(cfg)
    if data and data != cfg.data:
        # Another data set: at the model's size, and all of it is the split asked for unless it defines one.
        opts = dataclasses.replace(opts, image_size=card["image_size"], channels=card["in_chans"], limit=None)
    splits = create_dense_dataset(spec, opts)
    if splits.seg_classes != card["classes"]:
        raise DataError(f"data {spec!r} has pixel classes {splits.seg_classes[:5]}... but the model was trained on "
                        f"{card['classes'][:5]}...; evaluate on data with the same classes")
    split = split or ("test" if splits.test is not None else "val")
    return _evaluate_model(model, card, splits.split(split), run if write and run.is_dir() else None, split, spec,
                           has_test=splits.test is not None)


def print_metrics(m: dict[str, Any]) -> None:
    """The human summary of ``evaluate``: headline numbers, then IoU, Dice and pixels per class."""
    print(f"{m['data']} {m['split']}: {m['num_images']} images, mIoU {m['miou']:.4f} "
          f"(over all classes {m['miou_all_classes']:.4f}), pixel accuracy {m['pixel_accuracy']:.4f}, "
          f"mean Dice {m['mean_dice']:.4f}\n")
    width = max(10, *(len(n) for n in m["per_class"]))
    print(f"{'class':{width}s}  {'IoU':>7s}  {'Dice':>7s}  {'pixels':>10s}")
    fmt = lambda v: f"{v:7.4f}" if v is not None else f"{'-':>7s}"  # noqa: E731
    for name, c in m["per_class"].items():
        print(f"{name:{width}s}  {fmt(c['iou'])}  {fmt(c['dice'])}  {c['support_pixels']:10d}")


# -------------------------------------------------------------------------------------------- plots
def palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (n, 3) uint8: class 0 black, then well-separated colours; 255 is cream."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):  # spread the bits of the index over the high bits of r, g, b
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, background: int | None = 0) -> np.ndarray:
    """Blend class colours into an RGB uint8 image (H, W, 3); ``background`` and 255 pixels stay as they are."""
    img = image if image.ndim == 3 and image.shape[2] == 3 else np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
    colours = palette()[mask].astype(np.float32)
    paint = mask != IGNORE_INDEX
    if background is not None:
        paint &= mask != background
    out = img.astype(np.float32)
    out[paint] = (1 - alpha) * out[paint] + alpha * colours[paint]
    return out.round().clip(0, 255).astype(np.uint8)


def _background(classes: list[str]) -> int | None:
    return 0 if classes and classes[0] == "background" else None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # never try to open a window
    import matplotlib.pyplot as plt

    return plt


def plot_mask_mosaic(images: torch.Tensor, true: torch.Tensor, pred: torch.Tensor, classes: list[str], path) -> Path:
    """Save a mosaic of (image | true mask | predicted mask) rows in the class palette, with a legend.

    Solid masks rather than overlays: the objects of ``shapes`` and of many real scenes are coloured
    themselves, and a blended overlay hides which class was predicted. The tiles are composed into
    one array and drawn as one image (48 separate axes took seconds to lay out).
    """
    from matplotlib.patches import Patch

    plt = _pyplot()
    pal = palette()
    n, h, w = len(images), int(images.shape[-2]), int(images.shape[-1])
    per_row, gap = 2, max(2, w // 16)
    rows = max(1, -(-n // per_row))
    canvas = np.full((rows * (h + gap), per_row * 3 * (w + gap), 3), 255, dtype=np.uint8)
    for i in range(n):
        img = images[i].permute(1, 2, 0).numpy()
        tiles = (np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img, pal[true[i].numpy()], pal[pred[i].numpy()])
        r, c0 = i // per_row, 3 * (i % per_row)
        for j, tile in enumerate(tiles):
            y, x = r * (h + gap), (c0 + j) * (w + gap)
            canvas[y : y + h, x : x + w] = tile
    fig, ax = plt.subplots(figsize=(10, 10 * canvas.shape[0] / canvas.shape[1] + 0.9))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([(j + 0.5) * (w + gap) for j in range(3 * per_row)],
                  labels=["image", "true", "predicted"] * per_row, fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    shown = sorted(set(torch.cat([true[:n].flatten(), pred[:n].flatten()]).tolist()))
    handles = [Patch(facecolor=pal[c] / 255, edgecolor="black", linewidth=0.3,
                     label="ignore" if c == IGNORE_INDEX else classes[c]) for c in shown
               if c == IGNORE_INDEX or c < len(classes)]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, max(1, len(handles))), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.95, bottom=0.9 / fig.get_figheight())
    return _savefig(fig, path)


def _savefig(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    _pyplot().close(fig)
    return path


def plot_per_class_iou(per_class: dict[str, dict[str, Any]], path, title: str = "IoU per class") -> Path:
    """Save a horizontal bar chart of the IoU of each class (classes absent from the split are marked)."""
    plt = _pyplot()
    names = list(per_class)
    ious = [per_class[n]["iou"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1.2))
    bars = ax.barh(range(len(names)), [v or 0.0 for v in ious], color=[palette(len(names))[i] / 255 for i in range(len(names))],
                   edgecolor="black", linewidth=0.5)
    for bar, v in zip(bars, ious):
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, "absent" if v is None else f"{v:.3f}",
                va="center", fontsize=8)
    ax.set_yticks(range(len(names)), labels=names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("IoU")
    ax.set_title(title)
    fig.tight_layout()
    return _savefig(fig, path)


# ----------------------------------------------------------------------------------------- predict
class Segmenter:
    """A trained segmenter, ready to predict. Get one with ``recogen.load(RUN)``.

    >>> seg = recogen.load("runs/segment/shapes")
    >>> r = seg.predict("scene.png")
    >>> r["size"], r["class_pixels"]            # mask r["mask"]: uint8 (H, W) at the image's own size
    ([128, 128], {'background': 13210, 'star': 3174})
    """

    task = TASK

    def __init__(self, model: nn.Module, card: dict[str, Any], path: Path | None = None):
        self.model, self.card, self.path = model, card, path
        self.classes: list[str] = card["classes"]

    def _tensor(self, img) -> torch.Tensor:
        from torchvision.transforms.v2.functional import pil_to_tensor

        return pil_to_tensor(img.convert("L" if self.card["in_chans"] == 1 else "RGB")).unsqueeze(0)

    def predict(self, images, alpha: float = 0.5):
        """Class mask of one image (returns a dict) or a list of them (a list of dicts).

        Each image may be a path, bytes, a PIL image or a uint8 numpy array. A result holds "path"
        (for a path), "size" [H, W], "class_pixels" {class: pixel count} of the classes present,
        "mask" (uint8 numpy (H, W) of class indices at the image's original size) and "overlay"
        (uint8 RGB (H, W, 3), the image with class colours blended in at ``alpha``).
        """
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        pils = [open_image(src) for src in batch]  # decode all first: a corrupt file fails before any work
        res = []
        for src, img in zip(batch, pils):
            # One image at a time: logits at the original size (K x H x W floats) can be large.
            logits = predict_logits(self.model, self.card, self._tensor(img), out_size=(img.height, img.width))
            mask = logits[0].argmax(0).to(torch.uint8).numpy()
            counts = np.bincount(mask.ravel(), minlength=len(self.classes))
            item = {"size": [img.height, img.width],
                    "class_pixels": {self.classes[i]: int(c) for i, c in enumerate(counts) if c},
                    "mask": mask,
                    "overlay": overlay(np.asarray(img.convert("RGB")), mask, alpha, _background(self.classes))}
            if isinstance(src, (str, Path)):
                item = {"path": str(src), **item}
            res.append(item)
        return res[0] if single else res

    def evaluate(self, data: str | None = None, split: str | None = None) -> dict[str, Any]:
        """Evaluate on the run's data (or ``data``); see :func:`evaluate`."""
        if self.path is None:
            raise RunError("this segmenter was not loaded from a run folder; pass data explicitly to evaluate()")
        return evaluate(self.path, data=data, split=split, write=False)


def save_prediction(result: dict[str, Any], image, out_dir: str | Path, stem: str, alpha: float = 0.5) -> dict[str, str]:
    """Write ``STEM_mask.png`` (class index per pixel, palette PNG) and ``STEM_overlay.png`` into ``out_dir``.

    ``result`` is one result of :meth:`Segmenter.predict`; ``image`` the image it was made from (used
    for the overlay when the result has none). Returns {"mask": path, "overlay": path}.
    """
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mask = np.ascontiguousarray(result["mask"], dtype=np.uint8)
    ov = result.get("overlay")
    if ov is None:
        ov = overlay(np.asarray(open_image(image).convert("RGB")), mask, alpha)
    paths = {"mask": out / f"{stem}_mask.png", "overlay": out / f"{stem}_overlay.png"}
    # Mode P keeps the class index as the pixel value (np.array(Image.open(p)) gives the mask back)
    # and shows in colour in any viewer.
    pimg = Image.fromarray(mask, mode="L").convert("P")
    pimg.putpalette(palette().ravel().tolist())
    atomic_write(paths["mask"], lambda tmp: pimg.save(tmp, format="PNG"))
    atomic_write(paths["overlay"], lambda tmp: Image.fromarray(ov).save(tmp, format="PNG"))
    return {k: str(v) for k, v in paths.items()}


def predict_files(run: str | Path, files: Iterable[str | Path], out_dir: str | Path | None = None,
                  device: str = "cpu", backend: str = "torch") -> list[dict[str, Any]]:
    """Segment image files (the CLI's ``predict``); JSON-able results, one per image.

    Each result holds "path", "size" [H, W] and "class_pixels"; with ``out_dir`` also "mask_path"
    and "overlay_path" of the PNGs written there. Every image is decoded before anything is written,
    so a corrupt file is reported (DataError naming it) with nothing written.
    """
    paths = expand_inputs(files)
    for p in paths:
        open_image(p)  # fail on a corrupt image before any output exists
    seg = load(run, device, backend)
    stems: dict[str, int] = {}
    results = []
    for p in paths:
        r = seg.predict(str(p))
        item = {k: r[k] for k in ("path", "size", "class_pixels")}
        if out_dir is not None:
            # Same-named files from different folders get _2, _3... instead of overwriting each other.
            k = stems[p.stem] = stems.get(p.stem, 0) + 1
            written = save_prediction(r, p, out_dir, p.stem if k == 1 else f"{p.stem}_{k}")
            item.update(mask_path=written["mask"], overlay_path=written["overlay"])
        results.append(item)
    return results


def format_prediction(r: dict[str, Any]) -> str:
    """One line per image for the CLI: the classes present with their share of the pixels."""
    total = max(1, r["size"][0] * r["size"][1])
    parts = ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in sorted(r["class_pixels"].items(), key=lambda kv: -kv[1]))
    return f"{r.get('path', '<image>')}: {r['size'][1]}x{r['size'][0]}  {parts}"


def load(path: str | Path, device: str = "cpu", backend: str = "torch") -> Segmenter:
    """Load a trained segmenter from a run folder or a ``model.json``.

    ``backend="onnx"`` runs the ONNX export (``recogen export RUN --format onnx``) with onnxruntime.
    """
    from ..export import load_backend

    model, card = load_backend(path, device, backend)
    if card.get("task") != TASK:
        raise RunError(f"{path} holds a {card.get('task')} model, not a segmenter")
    p = Path(path)
    return Segmenter(model, card, p if p.is_dir() else p.parent)
