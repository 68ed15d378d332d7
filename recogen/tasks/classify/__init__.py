"""Image classification: the task spec (registered as "classify") and its public functions.

Heavy parts load on first use: ``recipe`` (defaults), ``module`` (LightningModule), ``predict``
(evaluation and the :class:`Classifier`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ...config import ClassifyConfig
from .. import register_task
from ..spec import Flag, Task, lazy_attr, positive_int


class ClassifyTask(Task):
    name = "classify"
    help = "image classification: train, eval, predict"
    noun = "classifier"
    config = ClassifyConfig
    monitor = "val_acc"
    headline = "accuracy"
    reserve_s = 2.0
    predict_flags = (Flag("--topk", {"type": positive_int, "default": 5, "help": "how many labels to show (default 5)"}),)
    predictor = "recogen.tasks.classify.predict:Classifier"
    parts = ("recipe", "module", "predict")

    def prepare_config(self, cfg):
        import dataclasses

        from ...models.sources import canonical_name, preprocessing

        # hf:./folder -> hf:/abs/folder: the run's card must find the model from any working directory.
        cfg = dataclasses.replace(cfg, model=canonical_name(cfg.model))
        # The published weights' own input size unless --image-size says otherwise (tv:/timm:/hf: models).
        if cfg.pretrained and cfg.image_size is None:
            pre = preprocessing(cfg.model)
            if pre is not None and pre.get("input_size"):
                return dataclasses.replace(cfg, image_size=pre["input_size"])
        return cfg

    def normalization(self, cfg, splits) -> tuple[list[float], list[float]]:
        """Mean and std the inputs are normalised with: the published weights' own (``--pretrained``
        tv:/timm: model, averaged over RGB for grayscale input), else the training images'."""
        from ...models.sources import preprocessing

        pre = preprocessing(cfg.model) if cfg.pretrained else None
        if pre is None:
            return splits.mean_std()
        mean, std = pre["mean"], pre["std"]
        if cfg.channels == 1:  # the first conv's filters are summed over RGB too (weights.load_backbone_strict)
            mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
        return list(mean), list(std)

    def load_data(self, cfg):
        splits = super().load_data(cfg)
        if cfg.synthetic:
            from ...data.synthetic import add_synthetic

            splits, note = add_synthetic(splits, cfg.synthetic, seed=cfg.seed)
            splits.notes.append(note)
        return splits

    def resolve_defaults(self, cfg, splits):
        # --recipe picks the module that fills the "auto" options: default (recipe.py) or speed (speed.py,
        # which builds on recipe.py's budget and checks)
        if cfg.recipe == "speed":
            from .speed import resolve_speed

            return resolve_speed(cfg, splits)
        from .recipe import resolve_defaults

        return resolve_defaults(cfg, splits)

    def build_module(self, model, cfg, splits, train_batches):
        from .module import ClassifierModule

        mean, std = self.normalization(cfg, splits)
        return ClassifierModule(model, cfg, len(splits.classes), mean, std, splits.hflip_ok)

    def card(self, cfg, model, splits):
        mean, std = self.normalization(cfg, splits)  # predict and serve normalise as training did
        from .speed import tta_mode  # test-time augmentation: eval, predict and serve apply it (predict.py)

        card = {**super().card(cfg, model, splits), "normalize": {"mean": mean, "std": std}, "hflip_ok": splits.hflip_ok,
                "tta": tta_mode(cfg, splits.hflip_ok)}
        from ...models.sources import portable_kwargs

        card["model_kwargs"] = portable_kwargs(cfg.model, model, card["model_kwargs"])
        return card

    def evaluate_model(self, model, card, ds, run, split, data, has_test=None):
        from .predict import evaluate_model

        return evaluate_model(model, card, ds, run, split, data, has_test)

    def format_metrics(self, m):
        from ...metrics.classification import confusion_text

        top5 = f", top-5 {m['top5_accuracy']:.4f}" if m["top5_accuracy"] is not None else ""
        head = (f"{m['data']} {m['split']}: {m['num_images']} images, accuracy {m['accuracy']:.4f}{top5}, "
                f"macro F1 {m['macro_f1']:.4f}\n")
        parts = [head] + ([m["report_text"]] if "report_text" in m else [])
        return "\n".join(parts + [confusion_text(m["confusion_matrix"], list(m["per_class"]))])

    def format_lines(self, r):
        alts = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in r["topk"][1:])
        return [f"{r['path']}: {r['label']} ({r['prob']:.3f})" + (f"  [{alts}]" if alts else "")]

    def params_model(self):
        from .predict import ClassifyParams

        return ClassifyParams

    def serve_prepare(self, predictor, image):
        # Convert and resize outside the model's lock; predict then skips that step.
        return predictor.prepared(preprocess=predictor.preprocess([image])), image

    def serve_response(self, predictor, image, params):
        return predictor.predict(image, topk=params.topk)


TASK = register_task(ClassifyTask)


# ---------------------------------------------------------------------------- the public functions
def train(config: ClassifyConfig | dict | str | Path | None = None, callbacks: Iterable | None = None,
          **options: Any) -> Path:
    """Train a classifier and return its run folder.

    The folder gets ``config.yaml`` (resolved), ``checkpoints/{best,last}.ckpt``, ``tensorboard/``,
    ``history.json``, ``model.safetensors`` + ``model.json``, the test-split ``metrics.json`` +
    ``confusion_matrix.png`` and ``report.html``.

    >>> run = train(data="digits", epochs=3, out="runs/classify/digits")
    """
    return TASK.train(config, callbacks, **options)


def evaluate(run: str | Path, data: str | None = None, split: str | None = None, write: bool = True,
             device: str = "cpu") -> dict[str, Any]:
    """Accuracy, top-5, macro F1, per-class report and confusion matrix of a run on a split of its data
    (test, else val) or of another data set with the same class folders. Writes ``metrics.json``
    (``metrics_<split>.json`` for other splits) and ``confusion_matrix.png`` when ``write``."""
    return TASK.evaluate(run, data=data, split=split, write=write, device=device)


def load(path: str | Path, device: str = "cpu", backend: str = "torch"):
    """Load a trained :class:`Classifier` from a run folder or a ``model.json`` (``backend="onnx"``:
    its ONNX export, run with onnxruntime)."""
    return TASK.load(path, device, backend)


def predict_files(run: str | Path, files: Iterable[str | Path], out_dir: str | Path | None = None, device: str = "cpu",
                  topk: int = 5, backend: str = "torch") -> list[dict[str, Any]]:
    """Predict image files (the CLI's ``predict``); JSON-able results. Nothing is written: ``out_dir`` is unused."""
    return TASK.predict_files(run, files, out_dir, device=device, backend=backend, topk=topk)


def __getattr__(name: str) -> Any:  # the heavy modules load on first use of one of their names
    return lazy_attr(__name__, ClassifyTask.parts, name)
