"""Object detection: the task spec (registered as "detect") and its public functions.

Models are torchvision detectors (``recogen.models.detectors``). They take float images in [0, 1] and
normalise and resize them inside (``GeneralizedRCNNTransform``), so the card's ``normalize`` is
informational: nothing is applied before the model. Labels are 0..K-1 everywhere in recogen; the
detectors reserve 0 for background, so the task adds 1 going in and subtracts 1 coming out
(``outputs``).

Heavy parts load on first use: ``recipe`` (defaults), ``outputs`` (the detectors' inputs and outputs,
post-processing), ``module`` (LightningModule), ``evaluation`` (COCO metrics and plots) and ``predict``
(the :class:`Detector`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ...config import DetectConfig
from ...errors import DataError
from .. import register_task
from ..spec import Flag, Task, lazy_attr, positive_int



def _card(cfg: DetectConfig, model, splits) -> dict[str, Any]:
    """The detector's model card (without the artifact's format/version fields)."""
    from .outputs import PREDICT_DEFAULTS

    t = model.transform
    return {
        "task": "detect", "model": cfg.model, "model_kwargs": cfg.model_kwargs, "classes": splits.classes,
        "image_size": cfg.image_size, "in_chans": cfg.channels,
        # Applied inside the model (GeneralizedRCNNTransform); inputs are floats in [0, 1].
        "normalize": {"mean": [float(v) for v in t.image_mean], "std": [float(v) for v in t.image_std],
                      "applied_by": "model", "input_range": [0, 1]},
        "data": cfg.data, "predict": dict(PREDICT_DEFAULTS),
    }


class DetectTask(Task):
    name = "detect"
    help = "object detection: train, eval, predict"
    noun = "detector"
    config = DetectConfig
    data_kind = "dense"
    monitor = "val_map"
    headline = "map"
    reserve_s = 5.0
    predict_flags = (
        Flag("--conf", {"type": float, "default": 0.25, "help": "minimum score (default 0.25)"}),
        Flag("--iou", {"type": float, "default": 0.45, "help": "IoU threshold of class-wise NMS (default 0.45)"}),
        Flag("--max-det", {"type": positive_int, "default": 100, "dest": "max_det",
                           "help": "most boxes per image (default 100)"}),
        Flag("--save", {"metavar": "DIR", "help": "write each image with its boxes drawn into DIR"}),
    )
    predictor = "recogen.tasks.detect.predict:Detector"
    parts = ("outputs", "predict", "evaluation", "recipe", "module")  # lightning (module) last

    # ---------------------------------------------------------------------------------- training
    def prepare_config(self, cfg):
        import dataclasses

        # Detectors take RGB; grey images are repeated.
        return dataclasses.replace(cfg, channels=3) if cfg.channels is None else cfg

    def load_data(self, cfg):
        splits = super().load_data(cfg)
        if not splits.classes:
            raise DataError(f"data {cfg.data!r} has no object classes; a detector needs labelled boxes")
        return splits

    def resolve_defaults(self, cfg, splits):
        from .recipe import resolve_defaults

        return resolve_defaults(cfg, splits)

    def fit_data(self, cfg, splits):
        if cfg.image_size == splits.image_size[0]:
            return splits
        import dataclasses

        from .evaluation import fit_to_size

        return dataclasses.replace(splits, train=fit_to_size(splits.train, cfg.image_size),
                                   val=fit_to_size(splits.val, cfg.image_size),
                                   test=fit_to_size(splits.test, cfg.image_size) if splits.test is not None else None)

    def describe_data(self, cfg, splits):
        n_test = len(splits.test) if splits.test is not None else 0
        n_boxes = sum(len(b) for b in splits.train.boxes)
        return (f"data {cfg.data}: {len(splits.train)} train / {len(splits.val)} val / {n_test} test images, "
                f"{n_boxes} train boxes, {len(splits.classes)} classes, {cfg.image_size}x{cfg.image_size}")

    def batches(self, cfg, splits):
        from ...data.batches import DenseBatches, EpochSeeded

        train = EpochSeeded(DenseBatches(splits.train, cfg.batch_size, shuffle=True, drop_last=True, seed=cfg.seed,
                                         masks=True))
        return train, DenseBatches(splits.val, 32)

    def build_module(self, model, cfg, splits, train_batches):
        from .module import DetectorModule

        # Box labels count from 0 after the segmentation classes' leading "background" (if any).
        return DetectorModule(model, cfg, len(splits.seg_classes) - len(splits.classes), splits.hflip_ok)

    def card(self, cfg, model, splits):
        return _card(cfg, model, splits)

    # -------------------------------------------------------------------------------- evaluation
    def eval_channels(self, card):
        return 3

    def evaluate_model(self, model, card, ds, run, split, data, has_test=None):
        from .evaluation import evaluate_model

        return evaluate_model(model, card, ds, run, split, data, has_test)

    def summary(self, m):
        return f"{m['split']} mAP50-95 {m['map']:.4f}, mAP50 {m['map_50']:.4f}"

    def format_metrics(self, m):
        """The headline COCO numbers and a per-class AP table."""
        lines = [f"{m.get('data', '')} {m.get('split', '')}: {m.get('num_images', '?')} images | mAP50-95 {m['map']:.4f} | "
                 f"mAP50 {m['map_50']:.4f} | mAP75 {m['map_75']:.4f} | AR100 {m['mar_100']:.4f}"]
        rows = m.get("per_class", {})
        if rows:
            width = max(5, *(len(c) for c in rows))
            lines.append(f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}")
            fmt = lambda v: f"{v:6.3f}" if v is not None else "     -"  # noqa: E731
            lines += [f"{name:<{width}}  {fmt(r['ap'])}  {fmt(r['ap50'])}" for name, r in rows.items()]
        return "\n".join(lines)

    # -------------------------------------------------------------------------------- prediction
    def predict_files(self, run, files, out_dir=None, device="cpu", backend="torch", **kw):
        return predict_files(run, files, out_dir, device=device, backend=backend, **kw)  # the public function below

    def format_lines(self, r):
        """``PATH: N object(s)``, then one line per box, best first: label, score and the box as
        x0 y0 x1 y1 in the image's pixels."""
        dets = r["detections"]
        width = max((len(d["label"]) for d in dets), default=0)
        return [f"{r.get('path', 'image')}: {len(dets)} object(s)"] + [
            f"  {d['label']:<{width}}  {d['score']:.2f}  " + " ".join(f"{v:.0f}" for v in d["box"]) for d in dets]

    # ----------------------------------------------------------------------------------- service
    def params_model(self):
        from .predict import DetectParams

        return DetectParams

    def serve_prepare(self, predictor, image):
        # Convert and resize outside the model's lock (preprocess also keeps the image's size for the boxes).
        return predictor.prepared(preprocess=predictor.preprocess(image)), image

    def serve_response(self, predictor, image, params):
        return predictor.predict(image, conf=params.conf, iou=params.iou, max_det=params.max_det)


TASK = register_task(DetectTask)


# ---------------------------------------------------------------------------- the public functions
def train(config: DetectConfig | dict | str | Path | None = None, callbacks: Iterable | None = None, **options: Any) -> Path:
    """Train a detector and return its run folder.

    The folder gets ``config.yaml`` (resolved), ``checkpoints/{best,last}.ckpt`` (best by val mAP),
    ``tensorboard/``, ``history.json``, the portable ``model.safetensors`` + ``model.json``, the
    test-split (else val) ``metrics.json``, ``pr_curve.png`` and ``predictions.png``, and ``report.html``.

    >>> run = train(data="shapes:600", image_size=128, out="runs/detect/shapes")
    """
    from ..skeleton import train as run_skeleton

    return run_skeleton(TASK, config, callbacks, **options)


def evaluate(run: str | Path, data: str | None = None, split: str | None = None, write: bool = True,
             device: str = "cpu") -> dict[str, Any]:
    """COCO metrics of a trained run on a split of its data (test, else val) or of another data set.

    Returns (and writes into the run folder when ``write``, as ``metrics.json`` or
    ``metrics_<split>.json``) ``map`` (AP@[.5:.95]), ``map_50``, ``map_75``, ``mar_100``, ``per_class``
    ``{name: {ap, ap50}}``, ``num_images``, ``split``, ``data``, ``iou_thresholds``, ``backend``; also
    draws ``pr_curve.png`` and ``predictions.png`` (predicted and true boxes).
    """
    return TASK.evaluate(run, data=data, split=split, write=write, device=device)


def load(path: str | Path, device: str = "cpu", backend: str = "torch"):
    """Load a trained :class:`Detector` from a run folder or a ``model.json``.

    ``backend="onnx"`` runs the ONNX export (``recogen export RUN --format onnx``) with onnxruntime.
    """
    return TASK.load(path, device, backend)


def predict_files(run: str | Path, files: Iterable[str | Path], out_dir: str | Path | None = None,
                  conf: float | None = None, iou: float | None = None, max_det: int | None = None,
                  device: str = "cpu", backend: str = "torch") -> list[dict[str, Any]]:
    """Predict image files (folders are expanded); with ``out_dir`` also save each image with its boxes
    drawn (``saved`` in its result). Returns JSON-able dicts, one per image (see :meth:`Detector.predict`).
    """
    from .predict import predict_files as run_predict

    return run_predict(load(run, device, backend), files, out_dir, conf=conf, iou=iou, max_det=max_det)


def format_lines(r: dict[str, Any]) -> list[str]:
    """What ``recogen detect predict`` prints for one result (see :meth:`DetectTask.format_lines`)."""
    return TASK.format_lines(r)


def __getattr__(name: str) -> Any:  # the heavy modules load on first use of one of their names
    return lazy_attr(__name__, DetectTask.parts, name)
