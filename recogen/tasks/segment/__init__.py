"""Semantic segmentation: the task spec (registered as "segment") and its public functions.

Masks hold a class index per pixel (``seg_classes``; 255 = ignore). Training, validation and evaluation
all read the same pixel confusion matrix (recogen.metrics.segmentation); evaluation and prediction score
masks at the resolution of the data, never at the network's input size.

Heavy parts load on first use: ``recipe`` (defaults), ``module`` (LightningModule), ``evaluation``
(masks, metrics and plots), ``predict`` (the :class:`Segmenter` and the PNGs it writes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ...config import SegmentConfig
from ...errors import DataError
from .. import register_task
from ..spec import Flag, Task, lazy_attr


class SegmentTask(Task):
    name = "segment"
    help = "semantic segmentation: train, eval, predict"
    noun = "segmenter"
    config = SegmentConfig
    data_kind = "dense"
    monitor = "val_miou"
    headline = "miou"
    reserve_s = 5.0
    predict_flags = (Flag("--save", {"metavar": "DIR", "help": "write the class mask PNG and a colour overlay into DIR"}),)
    predictor = "recogen.tasks.segment.predict:Segmenter"
    parts = ("recipe", "module", "evaluation", "predict")

    def load_data(self, cfg):
        splits = super().load_data(cfg)
        for name in ("train", "val"):
            if splits.split(name).masks is None:
                raise DataError(f"data {cfg.data!r} has no masks; segmentation needs masks:PATH, coco: with "
                                f"segmentations, or shapes")
        return splits

    def resolve_defaults(self, cfg, splits):
        from .recipe import resolve_defaults

        return resolve_defaults(cfg, splits)

    def classes(self, splits):
        return list(splits.seg_classes)

    def describe_data(self, cfg, splits):
        h, w = splits.image_size
        n_test = len(splits.test) if splits.test is not None else 0
        return (f"data {cfg.data}: {len(splits.train)} train / {len(splits.val)} val / {n_test} test, "
                f"{len(splits.seg_classes)} pixel classes, {h}x{w}x{cfg.channels}")

    def batches(self, cfg, splits):
        from ...data.batches import EpochSeeded, MaskBatches

        # drop_last: BatchNorm (and torchvision's ASPP pooling) cannot train on a batch of one.
        train = EpochSeeded(MaskBatches(splits.train, cfg.batch_size, shuffle=True, drop_last=True, seed=cfg.seed))
        return train, MaskBatches(splits.val, max(32, cfg.batch_size))

    def build_module(self, model, cfg, splits, train_batches):
        from .module import SegmenterModule

        classes = self.classes(splits)
        mean, std = self.normalization(cfg, splits)
        offset = 1 if classes and classes[0] == "background" else 0
        return SegmenterModule(model, cfg, len(classes), mean, std, label_offset=offset, hflip_ok=splits.hflip_ok)

    def normalization(self, cfg, splits) -> tuple[list[float], list[float]]:
        """Mean and std the inputs are normalised with: the published weights' own for a ``--pretrained``
        ``tv:NAME`` (averaged over RGB for grayscale input, as its first conv is folded), else the
        training images'."""
        from ...models.sources import preprocessing

        pre = preprocessing(cfg.model) if cfg.pretrained else None
        if pre is None:
            return splits.mean_std()
        mean, std = pre["mean"], pre["std"]
        if cfg.channels == 1:
            mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
        return list(mean), list(std)

    def card(self, cfg, model, splits):
        from ...data.dense import IGNORE_INDEX

        mean, std = self.normalization(cfg, splits)  # predict and serve normalise as training did
        return {**super().card(cfg, model, splits), "normalize": {"mean": mean, "std": std}, "ignore_index": IGNORE_INDEX}

    def evaluate_model(self, model, card, ds, run, split, data, has_test=None):
        from .evaluation import evaluate_model

        return evaluate_model(model, card, ds, run, split, data, has_test)

    def summary(self, m):
        return f"{m['split']} mIoU {m['miou']:.4f}, pixel accuracy {m['pixel_accuracy']:.4f}"

    def format_metrics(self, m):
        head = (f"{m['data']} {m['split']}: {m['num_images']} images, mIoU {m['miou']:.4f} "
                f"(over all classes {m['miou_all_classes']:.4f}), pixel accuracy {m['pixel_accuracy']:.4f}, "
                f"mean Dice {m['mean_dice']:.4f}\n")
        width = max(10, *(len(n) for n in m["per_class"]))
        fmt = lambda v: f"{v:7.4f}" if v is not None else f"{'-':>7s}"  # noqa: E731
        rows = [f"{name:{width}s}  {fmt(c['iou'])}  {fmt(c['dice'])}  {c['support_pixels']:10d}"
                for name, c in m["per_class"].items()]
        return "\n".join([head, f"{'class':{width}s}  {'IoU':>7s}  {'Dice':>7s}  {'pixels':>10s}", *rows])

    def predict_files(self, run, files, out_dir=None, device="cpu", backend="torch", **kw):
        from .predict import predict_files

        return predict_files(run, files, out_dir, device=device, backend=backend, **kw)

    def format_lines(self, r):
        return [format_prediction(r)]

    def params_model(self):
        from .predict import SegmentParams

        return SegmentParams

    def serve_prepare(self, predictor, image):
        # Convert and resize to the model's input outside the lock; the mask still comes back at the
        # image's own size (predict takes that from the image).
        return predictor.prepared(preprocess=predictor.preprocess(image)), image

    def serve_response(self, predictor, image, params):
        from .predict import serve_response

        return serve_response(predictor, image, params)


TASK = register_task(SegmentTask)


# ---------------------------------------------------------------------------- the public functions
def train(config: SegmentConfig | dict | str | Path | None = None, callbacks: Iterable | None = None,
          **options: Any) -> Path:
    """Train a segmenter and return its run folder.

    The folder gets ``config.yaml`` (resolved), ``checkpoints/{best,last}.ckpt``, ``tensorboard/``,
    ``history.json``, the portable ``model.safetensors`` + ``model.json``, and the test-split
    ``metrics.json`` with ``per_class_iou.png``, ``confusion_matrix.png`` and ``sample_predictions.png``.

    >>> run = train(data="shapes:600", out="runs/segment/shapes")
    """
    from ..skeleton import train as run_skeleton

    return run_skeleton(TASK, config, callbacks, **options)


def evaluate(run: str | Path, data: str | None = None, split: str | None = None, write: bool = True,
             device: str = "cpu") -> dict[str, Any]:
    """Evaluate a trained run on a split of its data (test, else val) or of another data set.

    Writes ``metrics.json`` (``metrics_<split>.json`` for other splits), ``per_class_iou.png``,
    ``confusion_matrix.png`` and ``sample_predictions.png`` into the run folder when ``write`` is
    true, and returns the metrics (keys: miou, miou_all_classes, pixel_accuracy, mean_dice,
    per_class {name: {iou, dice, support_pixels}}, num_images, split, data, ignore_index).
    """
    return TASK.evaluate(run, data=data, split=split, write=write, device=device)


def load(path: str | Path, device: str = "cpu", backend: str = "torch"):
    """Load a trained :class:`Segmenter` from a run folder or a ``model.json``.

    ``backend="onnx"`` runs the ONNX export (``recogen export RUN --format onnx``) with onnxruntime.
    """
    return TASK.load(path, device, backend)


def predict_files(run: str | Path, files: Iterable[str | Path], out_dir: str | Path | None = None,
                  device: str = "cpu", backend: str = "torch") -> list[dict[str, Any]]:
    """Segment image files (the CLI's ``predict``); JSON-able results, one per image, with "mask_path"
    and "overlay_path" of the PNGs written into ``out_dir`` when given."""
    return TASK.predict_files(run, files, out_dir, device=device, backend=backend)


def format_prediction(r: dict[str, Any]) -> str:
    """One line per image for the CLI: the classes present with their share of the pixels."""
    total = max(1, r["size"][0] * r["size"][1])
    parts = ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in sorted(r["class_pixels"].items(), key=lambda kv: -kv[1]))
    return f"{r.get('path', '<image>')}: {r['size'][1]}x{r['size'][0]}  {parts}"


def __getattr__(name: str) -> Any:  # the heavy modules load on first use of one of their names
    return lazy_attr(__name__, SegmentTask.parts, name)
