"""Object detection: defaults, the Lightning module, training, COCO evaluation and prediction.

Models are torchvision detectors (``recogen.models.detectors``). They take float images in [0, 1]
and normalise and resize them inside (``GeneralizedRCNNTransform``), so the card's ``normalize`` is
informational: nothing is applied before the model. Labels are 0..K-1 everywhere in recogen; the
detectors reserve 0 for background, so this module adds 1 going in and subtracts 1 coming out.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from ..config import DetectConfig
from ..data.dense import DenseSet, DenseSplits, create_dense_dataset
from ..data.images import expand_inputs, open_image
from ..data.manifest import write_manifest
from ..errors import ConfigError, DataError, RunError
from ..artifact import load_portable, read_card, save_portable
from ..utils import seed_everything, write_json
from . import common

TASK = "detect"
# Prediction defaults (Ultralytics' conf/iou, COCO's 100 detections), stored in the model card.
PREDICT_DEFAULTS = {"conf": 0.25, "iou": 0.45, "max_det": 100}
# Evaluation keeps nearly every box: mAP integrates over all score thresholds (COCO practice).
EVAL_SCORE_THRESH = 0.001
MOSAIC_IMAGES = 16
# Without --image-size, larger data is trained at this size: fcos-s costs grow with the pixel count.
MAX_AUTO_SIZE = 320

# The default policy: the budget (wall clock, re-planned from measured epoch times, tasks/budget.py)
# decides how long to train; the data set an upper bound of this many training images seen at
# 128 px (scaled by pixel count for other sizes) -- about 4x what fits 8 minutes of 2 CPU cores, so
# on a CPU the clock decides and on a GPU the data do.
DEFAULT_BUDGET = "8m"
_MAX_IMAGE_PASSES_128 = 55_000


# --------------------------------------------------------------------------------------- defaults
def resolve_defaults(cfg: DetectConfig, splits: DenseSplits) -> tuple[DetectConfig, list[str]]:
    """Replace every "auto"/None in ``cfg`` with a choice that fits the data and this machine.

    From scratch the ResNet-50 and Faster R-CNN detectors are far too slow for a CPU (a step of 16
    images at 128 px takes 5-26 s on one core) and SSDlite learns slowly, so the default is ``fcos-s``,
    a small FCOS, trained for the time budget (8 minutes by default, re-planned from measured epoch
    times; see BENCHMARKS.md for the mAP it reaches on digit-scenes); ``--pretrained`` picks
    ``fasterrcnn-mobilenet`` (COCO weights) instead. Larger images are trained at 320 px.
    """
    n = len(splits.train)
    why: list[str] = []
    c = dataclasses.replace(cfg, model_kwargs=dict(cfg.model_kwargs))
    h = w = splits.image_size[0]
    if c.image_size is None and h > MAX_AUTO_SIZE:
        h = w = MAX_AUTO_SIZE
        why.append(f"image size {h} (data at {splits.image_size[0]} px; --image-size to keep more detail)")
    if c.model == "auto":
        c.model = "fasterrcnn-mobilenet" if c.pretrained else "fcos-s"
        why.append(f"model {c.model} ({'COCO-pretrained' if c.pretrained else 'small, from scratch, fits a CPU'})")
    if c.batch_size is None:
        c.batch_size = max(1, min(16, n))
        why.append(f"batch size {c.batch_size}")
    budget = common.resolve_budget(c, DEFAULT_BUDGET, why)
    if c.epochs is None:
        # Cost per image grows with its pixel count.
        passes = _MAX_IMAGE_PASSES_128 * (128 * 128) / (h * w)
        c.epochs = int(min(300, max(10, round(passes / max(n, 1)))))
        steps = c.epochs * max(1, n // c.batch_size)
        why.append(f"{'at most ' if budget else ''}{c.epochs} epochs (~{steps} steps of {c.batch_size})")
    if c.lr is None:
        # fcos-s: 4e-3 beat 2e-3 (test mAP .73 vs .71 on shapes:600 at 128 px, 45 epochs, one run each).
        c.lr = 4e-3 if c.model == "fcos-s" else 1e-4 if c.pretrained else 1e-3
        why.append(f"lr {c.lr:g} ({c.optimizer}, {c.schedule})")
    if c.augment == "auto":
        c.augment = "light"
        why.append(f"augment {c.augment}")
    if c.precision == "auto":
        # bf16 autocast made an FCOS training step 13x slower on this CPU (measured); fp32 unless a GPU.
        c.precision = common.auto_precision() if torch.cuda.is_available() else "32-true"
        why.append(f"precision {c.precision}")
    if c.channels_last is None:
        c.channels_last = False  # the detectors' transform builds its own batch tensor
    c.image_size, c.channels = h, splits.channels
    return c, why


# ------------------------------------------------------------------------------------------ batches
class DenseBatches:
    """Iterate ``(uint8 images (B,C,H,W), [{"boxes", "labels"}], masks (B,H,W) | None)`` of a DenseSet.

    Labels are 0..K-1. Shuffling is seeded by ``(seed, epoch)``, so an epoch sees the same order
    whether or not the run was interrupted and resumed before it. Masks (for box-tight augmentation)
    come along when asked for and the set has them.
    """

    def __init__(self, ds: DenseSet, batch_size: int, *, shuffle: bool = False, drop_last: bool = False,
                 seed: int = 0, masks: bool = False):
        self.ds, self.batch_size, self.shuffle, self.drop_last, self.seed = ds, batch_size, shuffle, drop_last, seed
        self.masks = masks and ds.masks is not None
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.ds)
        return n // self.batch_size if self.drop_last and n >= self.batch_size else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple]:
        n = len(self.ds)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            targets = [{"boxes": self.ds.boxes[j], "labels": self.ds.labels[j]} for j in idx.tolist()]
            yield self.ds.images[idx], targets, self.ds.masks[idx] if self.masks else None


class EpochDenseBatches(DenseBatches):
    """DenseBatches that Lightning re-seeds each epoch through the ``sampler.set_epoch`` protocol
    (as :class:`common.EpochBatches`; only for training: Lightning inspects a validation loader's
    ``sampler`` as a DataLoader's)."""

    @property
    def sampler(self):
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def _augmenter(name: str, label_offset: int, hflip_ok: bool = True):
    """``DenseAugment`` for preset ``name`` (None for "none"); no flips where ``hflip_ok`` is False."""
    from ..data.dense_transforms import DenseAugment
    from ..data.transforms import get_preset

    preset = get_preset(name)
    return None if preset.is_identity else DenseAugment(preset, hflip_ok=hflip_ok, label_offset=label_offset)


# ---------------------------------------------------------------------------------- Lightning module
def _to_model_targets(targets: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    return [{"boxes": t["boxes"].float(), "labels": t["labels"] + 1} for t in targets]


def _from_model_outputs(outputs: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    # Sigmoid heads (FCOS, RetinaNet) score the background column like any class; it is trained to
    # stay low but can still come out, so drop it (Faster R-CNN and SSD already do).
    out = []
    for o in outputs:
        fg = o["labels"] > 0
        out.append({"boxes": o["boxes"][fg], "scores": o["scores"][fg], "labels": o["labels"][fg] - 1})
    return out


def _postprocess_owner(model: nn.Module):
    """Where a torchvision detector keeps score_thresh / nms_thresh / detections_per_img."""
    return model.roi_heads if hasattr(model, "roi_heads") else model


@contextlib.contextmanager
def postprocess(model: nn.Module, score_thresh: float, nms_thresh: float | None = None, max_det: int | None = None):
    """Temporarily set a detector's own score threshold, NMS IoU and detections per image."""
    owner = _postprocess_owner(model)
    keys = {"score_thresh": score_thresh, "nms_thresh": nms_thresh, "detections_per_img": max_det}
    saved = {k: getattr(owner, k) for k, v in keys.items() if v is not None}
    for k, v in keys.items():
        if v is not None:
            setattr(owner, k, v)
    try:
        yield model
    finally:
        for k, v in saved.items():
            setattr(owner, k, v)


def make_module(model: nn.Module, cfg: DetectConfig, classes: list[str], label_offset: int = 1, hflip_ok: bool = True):
    """Build the LightningModule that trains ``model`` as ``cfg`` says (val mAP logged as ``val_map``)."""
    pl = common.lightning()
    from ..metrics.detection import MAX_DETECTIONS, mean_average_precision

    augment = _augmenter(cfg.augment, label_offset, hflip_ok)

    class DetectorModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            # Epoch-end val metric only (cheap): the full per-class report comes from evaluate().
            self.map_metric = mean_average_precision(class_metrics=False)

        def forward(self, images):
            return self.model(list(images))

        def on_train_epoch_start(self):
            # Re-seed per epoch: augmentation draws then do not depend on whether the run was
            # interrupted and resumed before this epoch.
            torch.manual_seed(cfg.seed * 100_003 + self.current_epoch)
            self.loss_sums: dict[str, torch.Tensor] = {}
            self.seen = 0

        def on_after_batch_transfer(self, batch, dataloader_idx):
            images, targets, masks = batch
            if self.trainer.training and augment is not None:
                boxes, labels = [t["boxes"] for t in targets], [t["labels"] for t in targets]
                images, boxes, labels, masks = augment(images, boxes, labels, masks)
                targets = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]
            return images.float().div_(255), targets, masks

        def training_step(self, batch, batch_idx):
            images, targets, _ = batch
            losses = self.model(list(images), _to_model_targets(targets))
            loss = sum(losses.values())
            n = len(images)
            for k, v in {"loss": loss, **losses}.items():
                self.loss_sums[k] = self.loss_sums.get(k, 0.0) + v.detach().float() * n
            self.seen += n
            if batch_idx + 1 == self.trainer.num_training_batches:
                # Logged once per epoch (from the step, so callbacks see it at epoch end).
                for k, v in self.loss_sums.items():
                    self.log("train_loss" if k == "loss" else f"train_{k}", v / self.seen, on_step=False,
                             on_epoch=True, batch_size=n, prog_bar=k == "loss")
            return loss

        def validation_step(self, batch, batch_idx):
            images, targets, _ = batch
            # The same caps as evaluate(), so the val mAP that picks best.ckpt is the number evaluate() reports.
            with postprocess(self.model, EVAL_SCORE_THRESH, max_det=MAX_DETECTIONS):
                preds = _from_model_outputs(self.model(list(images)))
            self.map_metric.update([{k: v.float() if k != "labels" else v for k, v in p.items()} for p in preds],
                                [{"boxes": t["boxes"].float(), "labels": t["labels"]} for t in targets])

        def on_validation_epoch_end(self):
            r = self.map_metric.compute()
            self.map_metric.reset()
            self.log("val_map", float(r["map"]), prog_bar=True)
            self.log("val_map_50", float(r["map_50"]), prog_bar=True)

        def configure_optimizers(self):
            params = [p for p in self.model.parameters() if p.requires_grad]
            return common.configure_optimizers(cfg, params, int(self.trainer.estimated_stepping_batches))

    return DetectorModule()


# ------------------------------------------------------------------------------------------- train
def _card(cfg: DetectConfig, model: nn.Module, splits: DenseSplits) -> dict[str, Any]:
    t = model.transform
    return {
        "task": TASK, "model": cfg.model, "model_kwargs": cfg.model_kwargs, "classes": splits.classes,
        "image_size": cfg.image_size, "in_chans": cfg.channels,
        # Applied inside the model (GeneralizedRCNNTransform); inputs are floats in [0, 1].
        "normalize": {"mean": [float(v) for v in t.image_mean], "std": [float(v) for v in t.image_std],
                      "applied_by": "model", "input_range": [0, 1]},
        "data": cfg.data, "predict": dict(PREDICT_DEFAULTS),
    }


def train(config: DetectConfig | dict | str | Path | None = None, callbacks: Iterable | None = None, **options: Any) -> Path:
    """Train a detector and return its run folder.

    The folder gets ``config.yaml`` (resolved), ``checkpoints/{best,last}.ckpt`` (best by val mAP),
    ``tensorboard/``, ``history.json``, the portable ``model.safetensors`` + ``model.json``, and the
    test-split (else val) ``metrics.json``, ``pr_curve.png`` and ``predictions.png``.

    >>> run = train(data="shapes:600", image_size=128, out="runs/detect/shapes")
    """
    cfg, run, ckpt = common.prepare_run(DetectConfig, TASK, common.make_config(DetectConfig, config, options))
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    if cfg.channels is None:
        cfg = dataclasses.replace(cfg, channels=3)  # detectors take RGB; grey images are repeated
    splits = create_dense_dataset(cfg.data, common.data_options(cfg))
    if not splits.classes:
        raise DataError(f"data {cfg.data!r} has no object classes; a detector needs labelled boxes")
    cfg, why = resolve_defaults(cfg, splits)
    cfg.out = str(run)
    if cfg.image_size != splits.image_size[0]:
        splits = dataclasses.replace(splits, train=_fit_to_size(splits.train, cfg.image_size),
                                     val=_fit_to_size(splits.val, cfg.image_size),
                                     test=_fit_to_size(splits.test, cfg.image_size) if splits.test is not None else None)
    n_boxes = sum(len(b) for b in splits.train.boxes)
    print(f"data {cfg.data}: {len(splits.train)} train / {len(splits.val)} val / "
          f"{len(splits.test) if splits.test is not None else 0} test images, {n_boxes} train boxes, "
          f"{len(splits.classes)} classes, {cfg.image_size}x{cfg.image_size}")
    if why:
        print("auto: " + "; ".join(why))
    for note in splits.notes:
        print("note: " + note)

    model = common.create_model(cfg.model, cfg.model_kwargs, num_classes=len(splits.classes), in_chans=cfg.channels,
                                image_size=cfg.image_size, pretrained=cfg.pretrained and not cfg.resume,
                                weights=None if cfg.resume else cfg.weights)
    label_offset = len(splits.seg_classes) - len(splits.classes)
    module = make_module(model, cfg, splits.classes, label_offset, splits.hflip_ok)
    common.save_config(cfg, run)
    write_manifest(run, splits, cfg)  # which images each split holds (splits.json)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {cfg.model}: {n_params / 1e6:.2f}M parameters; {common.plan_text(cfg)}, batch {cfg.batch_size}, "
          f"{cfg.precision}; run folder {run}")

    train_dl = EpochDenseBatches(splits.train, cfg.batch_size, shuffle=True, drop_last=True, seed=cfg.seed, masks=True)
    val_dl = DenseBatches(splits.val, 32)
    trainer = common.make_trainer(cfg, run, monitor="val_map", mode="max", steps_per_epoch=len(train_dl),
                                  extra_callbacks=callbacks or (), t_start=t0,
                                  reserve=common.eval_reserve(splits, 5.0))
    common.fit(trainer, module, train_dl, val_dl, ckpt)
    common.load_best(module, run)
    model = module.model.cpu().eval()
    save_portable(run, model, _card(cfg, model, splits))
    train_s = time.perf_counter() - t0
    split = "test" if splits.test is not None else "val"
    metrics = _evaluate_model(model, read_card(run), splits.split(split), run, split, cfg.data)
    common.write_run_report(run)
    print(f"trained {trainer.current_epoch} epochs in {train_s:.1f} s; {split} mAP50-95 {metrics['map']:.4f}, mAP50 {metrics['map_50']:.4f}; wrote {run}")
    return run


# ---------------------------------------------------------------------------------------- evaluate
def _fit_to_size(ds: DenseSet, size: int) -> DenseSet:
    """The split at the model's input size (boxes scaled with the images)."""
    from ..data.base import convert_channels, resize_images

    h, w = ds.images.shape[-2:]
    images = convert_channels(resize_images(ds.images, size), 3)
    if (h, w) == (size, size):
        return dataclasses.replace(ds, images=images)
    scale = torch.tensor([size / w, size / h, size / w, size / h])
    masks = None
    if ds.masks is not None:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2.functional import resize

        masks = resize(ds.masks, [size, size], interpolation=InterpolationMode.NEAREST)
    return dataclasses.replace(ds, images=images, boxes=[b * scale for b in ds.boxes], masks=masks)


@torch.inference_mode()
def detect_batch(model: nn.Module, images: torch.Tensor, batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
    """Raw detections (labels 0..K-1) for a uint8 batch at the model's size, with the model's own
    post-processing as currently set (see :func:`postprocess`)."""
    dev = next(model.parameters()).device
    out: list[dict[str, torch.Tensor]] = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(dev).float().div_(255)
        out += [{k: v.cpu() for k, v in o.items()} for o in _from_model_outputs(model(list(x)))]
    return out


def _evaluate_model(model: nn.Module, card: dict[str, Any], ds: DenseSet, run: Path | None, split: str,
                    data: str, has_test: bool | None = None) -> dict[str, Any]:
    from ..metrics.detection import MAX_DETECTIONS, detection_metrics, plot_pr_curves
    from ..metrics.heldout import split_fields

    ds = _fit_to_size(ds, card["image_size"])
    with postprocess(model.eval(), EVAL_SCORE_THRESH, max_det=MAX_DETECTIONS):
        preds = detect_batch(model, ds.images)
    targets = [{"boxes": b, "labels": lab} for b, lab in zip(ds.boxes, ds.labels)]
    m = detection_metrics(preds, targets, card["classes"])
    owner = _postprocess_owner(model)
    metrics = {"task": TASK, "data": data, **split_fields(split, data, has_test=has_test), "num_images": len(ds),
               "num_boxes": sum(len(b) for b in ds.boxes), **m,
               "postprocess": {"score_thresh": EVAL_SCORE_THRESH, "nms_iou": float(owner.nms_thresh),
                               "max_det": MAX_DETECTIONS}}
    pr_curves = metrics.pop("pr_curves")  # drawn, not stored: 101 points per class
    if run is not None:
        name = "metrics.json" if split == "test" else f"metrics_{split}.json"
        write_json(run / name, metrics)
        plot_pr_curves(pr_curves, run / "pr_curve.png", m["per_class"])
        conf = card.get("predict", PREDICT_DEFAULTS)["conf"]
        k = min(MOSAIC_IMAGES, len(ds))
        iou = card.get("predict", PREDICT_DEFAULTS)["iou"]
        shown = [_keep(p, conf, iou, MAX_DETECTIONS, card["classes"]) for p in preds[:k]]
        plot_detections(ds.images[:k], shown, targets[:k], run / "predictions.png")
    return metrics


def evaluate(run: str | Path, data: str | None = None, split: str | None = None, write: bool = True,
             device: str = "cpu") -> dict[str, Any]:
    """COCO metrics of a trained run on a split of its data (test, else val) or of another data set.

    Returns (and writes into the run folder when ``write``, as ``metrics.json`` or
    ``metrics_<split>.json``) ``map`` (AP@[.5:.95]), ``map_50``, ``map_75``, ``mar_100``, ``per_class``
    ``{name: {ap, ap50}}``, ``num_images``, ``split``, ``data``, ``iou_thresholds``, ``backend``; also
    draws ``pr_curve.png`` and ``predictions.png`` (predicted and true boxes).
    """
    run = Path(run)
    model, card = load_portable(run, device)
    if card.get("task") != TASK:
        raise RunError(f"{run} holds a {card.get('task')} model, not a detector")
    cfg_path = run / "config.yaml"
    cfg = common.load_run_config(DetectConfig, run) if cfg_path.is_file() else DetectConfig(data=card["data"])
    spec = data or cfg.data
    opts = common.data_options(cfg)
    if data and data != cfg.data:
        opts = dataclasses.replace(opts, image_size=card["image_size"], channels=3, limit=None)
    splits = create_dense_dataset(spec, opts)
    if splits.classes != card["classes"]:
        raise DataError(f"data {spec!r} has classes {splits.classes[:5]}... but the model was trained on "
                        f"{card['classes'][:5]}...; evaluate on data with the same classes in the same order")
    split = split or ("test" if splits.test is not None else "val")
    return _evaluate_model(model, card, splits.split(split), run if write and run.is_dir() else None, split, spec,
                           has_test=splits.test is not None)


def print_metrics(m: dict[str, Any]) -> None:
    """Print the headline COCO numbers and a per-class AP table."""
    print(f"{m.get('data', '')} {m.get('split', '')}: {m.get('num_images', '?')} images | mAP50-95 {m['map']:.4f} | "
          f"mAP50 {m['map_50']:.4f} | mAP75 {m['map_75']:.4f} | AR100 {m['mar_100']:.4f}")
    rows = m.get("per_class", {})
    if rows:
        width = max(5, *(len(c) for c in rows))
        print(f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}")
        fmt = lambda v: f"{v:6.3f}" if v is not None else "     -"  # noqa: E731
        for name, r in rows.items():
            print(f"{name:<{width}}  {fmt(r['ap'])}  {fmt(r['ap50'])}")


# ------------------------------------------------------------------------------------------- plots
def _colour(i: int) -> tuple[int, int, int]:
    import matplotlib

    r, g, b, _ = matplotlib.colormaps["tab10"](i % 10)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: torch.Tensor, detections: list[dict[str, Any]], truth: dict[str, torch.Tensor] | None = None,
                    min_side: int = 256) -> torch.Tensor:
    """uint8 (3, H', W') image with predicted boxes ("label 0.87", coloured per class) and, if given,
    true boxes (thin white). Small images are upscaled to ``min_side`` so the labels stay legible."""
    from torchvision.transforms.v2.functional import resize
    from torchvision.utils import draw_bounding_boxes

    h, w = image.shape[-2:]
    s = max(1.0, min_side / min(h, w))
    img = resize(image, [round(h * s), round(w * s)], antialias=True) if s > 1 else image
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    if truth is not None and len(truth["boxes"]):
        img = draw_bounding_boxes(img, truth["boxes"].float() * s, colors="white", width=1)
    if detections:
        boxes = torch.tensor([d["box"] for d in detections], dtype=torch.float32) * s
        text = [f"{d['label']} {d['score']:.2f}" for d in detections]
        img = draw_bounding_boxes(img, boxes, labels=text, colors=[_colour(d["index"]) for d in detections], width=2,
                                  font=_font(), font_size=max(11, min(img.shape[-2:]) // 18))
    return img


def _font() -> str | None:
    """A TrueType font for box labels (PIL's built-in bitmap font is unreadably small): matplotlib's DejaVu."""
    from matplotlib import font_manager

    try:
        return font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    except Exception:
        return None


def plot_detections(images: torch.Tensor, preds: list[list[dict[str, Any]]], targets: list[dict[str, torch.Tensor]],
                    path: Path) -> Path:
    """A mosaic PNG of images with predicted (coloured, "label score") and true (white) boxes, at full
    resolution so that the labels stay readable."""
    from PIL import Image
    from torchvision.utils import make_grid

    drawn = [draw_detections(img, p, t) for img, p, t in zip(images, preds, targets)]
    grid = make_grid(torch.stack(drawn), nrow=4, padding=4, pad_value=255)
    from ..utils import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG"))
    return path


# ----------------------------------------------------------------------------------------- predict
def _keep(raw: dict[str, torch.Tensor], conf: float, iou: float, max_det: int,
          classes: list[str] | None = None) -> list[dict[str, Any]]:
    """Score threshold, class-wise NMS at ``iou``, best ``max_det``; as JSON-able dicts."""
    from torchvision.ops import batched_nms, remove_small_boxes

    keep = raw["scores"] >= conf
    boxes, scores, labels = raw["boxes"][keep], raw["scores"][keep], raw["labels"][keep]
    # Boxes squashed flat by clipping to the image edge carry no location (as Faster R-CNN's 1e-2 px rule).
    keep = remove_small_boxes(boxes, 1e-2)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    order = batched_nms(boxes.float(), scores.float(), labels, iou)[:max_det]  # sorted by score
    return [{"label": classes[int(labels[i])] if classes else str(int(labels[i])), "index": int(labels[i]),
             "score": round(float(scores[i]), 5), "box": [round(float(v), 2) for v in boxes[i]]} for i in order]


class Detector:
    """A trained detector, ready to predict. Get one with ``recogen.load(RUN)`` or :func:`load`.

    >>> det = load("runs/detect/shapes")
    >>> det.predict("scene.png", conf=0.3)
    {'path': 'scene.png', 'size': [480, 640], 'detections': [{'label': 'star', 'index': 3, 'score': 0.93,
      'box': [12.0, 40.5, 98.2, 130.0]}, ...]}
    """

    task = TASK

    def __init__(self, model: nn.Module, card: dict[str, Any], path: Path | None = None):
        self.model, self.card, self.path = model, card, path
        self.classes: list[str] = card["classes"]

    def preprocess(self, src) -> tuple[torch.Tensor, tuple[int, int]]:
        """Decode one image to RGB and resize it to the model's input: ``(uint8 (3, S, S), (H, W) original)``."""
        from torchvision.transforms.v2.functional import pil_to_tensor

        from ..data.base import resize_images

        img = open_image(src).convert("RGB")
        t = pil_to_tensor(img).unsqueeze(0)
        return resize_images(t, self.card["image_size"])[0], (img.height, img.width)

    def predict(self, images, conf: float | None = None, iou: float | None = None, max_det: int | None = None,
                batch_size: int = 16):
        """Detections for one image (returns a dict) or a list of images (a list of dicts).

        Each image may be a path, bytes, a PIL image or a uint8 numpy array. It is resized to the
        training size; boxes come back in the ORIGINAL image's pixels (xyxy). ``conf`` is the score
        threshold, ``iou`` the class-wise NMS threshold, ``max_det`` the most boxes per image
        (defaults: the model card's, 0.25 / 0.45 / 100).
        """
        d = {**PREDICT_DEFAULTS, **self.card.get("predict", {})}
        conf = d["conf"] if conf is None else conf
        iou = d["iou"] if iou is None else iou
        max_det = d["max_det"] if max_det is None else max_det
        if not (0 <= conf <= 1 and 0 < iou <= 1 and max_det >= 1):
            raise ConfigError(f"need 0 <= conf <= 1, 0 < iou <= 1 and max_det >= 1; got {conf}, {iou}, {max_det}")
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        res = []
        for i in range(0, len(batch), batch_size):
            chunk = batch[i : i + batch_size]
            pre = [self.preprocess(src) for src in chunk]
            # The model's own threshold and NMS run with the same values; _keep repeats them so the
            # rule is explicit and the same for every architecture. Its own cap is loose so that
            # nothing is cut before NMS has run.
            with postprocess(self.model, conf, iou, max(max_det, 300)):
                raw = detect_batch(self.model, torch.stack([x for x, _ in pre]))
            size = self.card["image_size"]
            for src, (_, (h, w)), r in zip(chunk, pre, raw):
                # Back to the original image: the model saw it squashed to size x size.
                r = {**r, "boxes": (r["boxes"] * torch.tensor([w / size, h / size, w / size, h / size])).clamp_min(0)}
                r["boxes"][:, 0::2] = r["boxes"][:, 0::2].clamp_max(w)
                r["boxes"][:, 1::2] = r["boxes"][:, 1::2].clamp_max(h)
                item = {"size": [h, w], "detections": _keep(r, conf, iou, max_det, self.classes)}
                if isinstance(src, (str, Path)):
                    item = {"path": str(src), **item}
                res.append(item)
        return res[0] if single else res

    def evaluate(self, data: str | None = None, split: str | None = None) -> dict[str, Any]:
        """Evaluate on the run's data (or ``data``); see :func:`evaluate`."""
        if self.path is None:
            raise RunError("this detector was not loaded from a run folder; pass data explicitly to evaluate()")
        return evaluate(self.path, data=data, split=split, write=False)


def format_prediction(r: dict[str, Any]) -> str:
    """One line per image: its objects, best first."""
    found = ", ".join(f"{d['label']} {d['score']:.2f} [{', '.join(f'{v:.0f}' for v in d['box'])}]" for d in r["detections"])
    where = r.get("path", "image")
    return f"{where}: {len(r['detections'])} object(s)" + (f": {found}" if found else "")


def format_lines(r: dict[str, Any]) -> list[str]:
    """What the CLI prints per image: ``PATH: N object(s)``, then one line per box, best first:
    label, score and the box as x0 y0 x1 y1 in the image's pixels."""
    dets = r["detections"]
    width = max((len(d["label"]) for d in dets), default=0)
    return [f"{r.get('path', 'image')}: {len(dets)} object(s)"] + [
        f"  {d['label']:<{width}}  {d['score']:.2f}  " + " ".join(f"{v:.0f}" for v in d["box"]) for d in dets]


def load(path: str | Path, device: str = "cpu", backend: str = "torch") -> Detector:
    """Load a trained detector from a run folder or a ``model.json``.

    ``backend="onnx"`` runs the ONNX export (``recogen export RUN --format onnx``) with onnxruntime.
    """
    from ..export import load_backend

    model, card = load_backend(path, device, backend)
    if card.get("task") != TASK:
        raise RunError(f"{path} holds a {card.get('task')} model, not a detector")
    p = Path(path)
    return Detector(model, card, p if p.is_dir() else p.parent)


def predict_files(run: str | Path, files: Iterable[str | Path], out_dir: str | Path | None = None,
                  conf: float | None = None, iou: float | None = None, max_det: int | None = None,
                  device: str = "cpu", backend: str = "torch") -> list[dict[str, Any]]:
    """Predict image files (folders are expanded); with ``out_dir`` also save each image with its boxes
    drawn (``saved`` in its result). Returns JSON-able dicts, one per image (see :meth:`Detector.predict`).
    """
    det = load(run, device, backend)
    paths = expand_inputs(files)
    results = det.predict(paths, conf=conf, iou=iou, max_det=max_det)
    if out_dir is not None:
        from PIL import Image
        from torchvision.transforms.v2.functional import pil_to_tensor

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for r in results:
            img = pil_to_tensor(open_image(r["path"]).convert("RGB"))
            drawn = draw_detections(img, r["detections"], min_side=0)
            stem, k = Path(r["path"]).stem, 2
            name = f"{stem}.png"
            while name in used:  # same file name from two folders
                name, k = f"{stem}_{k}.png", k + 1
            used.add(name)
            Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(out / name)
            r["saved"] = str(out / name)
    return results
