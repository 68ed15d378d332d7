"""Image classification: the Lightning module, training, evaluation and prediction."""
from __future__ import annotations

import dataclasses
import math
import numbers
import time
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..config import ClassifyConfig
from ..data import ImageSet, ImageSplits, create_dataset
from ..data.base import convert_channels, resize_images
from ..data.images import open_image
from ..data.loaders import TensorBatches
from ..data.manifest import write_manifest
from ..data.transforms import BatchAugment, get_preset
from ..errors import ConfigError, DataError, RunError
from ..artifact import load_portable, read_card, save_portable
from ..utils import seed_everything, write_json
from . import common

TASK = "classify"


# --------------------------------------------------------------------------------------- defaults
DEFAULT_BUDGET = "10m"  # a cap: small data sets finish their data_epochs() well before it
# epochs = EPOCHS_AT_1K / sqrt(images / 1000), clamped: a small set needs more passes over it. Chosen
# on mnist-5k's validation split (3,400 training images, cnn-s, seeds 0/1: 14 epochs 0.988/0.993,
# 20 epochs 0.990/0.995, 25 epochs 0.993/0.993, 30 epochs 0.995/0.995), so 30 epochs there.
EPOCHS_AT_1K, MIN_EPOCHS, MAX_EPOCHS = 55.0, 8, 100


def data_epochs(n_train: int) -> int:
    """How many epochs the data are worth: more passes for fewer images (chosen on validation splits)."""
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(EPOCHS_AT_1K / math.sqrt(max(n_train, 1) / 1000)))))


def resolve_defaults(cfg: ClassifyConfig, splits: ImageSplits) -> tuple[ClassifyConfig, list[str]]:
    """Replace every "auto"/None in ``cfg`` with a choice that fits the data; return the reasons.

    The recipe (AdamW + one-cycle, label smoothing, light augmentation, bf16 where the hardware has
    it) was tuned on digits and shapes; see BENCHMARKS.md for what it reaches.
    """
    n, size, chans = len(splits.train), splits.image_size[0], splits.channels
    why: list[str] = []
    c = dataclasses.replace(cfg, model_kwargs=dict(cfg.model_kwargs))
    if c.model == "auto":
        small = size <= 64 and n <= 20_000
        c.model = "cnn-s" if small else "resnet18"
        why.append(f"model {c.model} ({'small images, small data' if small else 'larger images or data'})")
    if c.batch_size is None:
        c.batch_size = 64 if n < 5_000 else 128
        why.append(f"batch size {c.batch_size} ({n} training images)")
    budget = common.resolve_budget(c, DEFAULT_BUDGET, why)
    if c.epochs is None:
        c.epochs = data_epochs(n)
        steps = max(1, n // c.batch_size)
        why.append(f"{'at most ' if budget else ''}{c.epochs} epochs (~{c.epochs * steps} steps; fewer images need more passes)")
    if c.lr is None:
        is_vit = c.model.startswith("vit")
        c.lr = (5e-4 if is_vit else 1e-3 if c.model.startswith("resnet") else 3e-3) * (0.1 if c.pretrained else 1)
        why.append(f"lr {c.lr:g} ({c.optimizer}, {c.schedule})")
    if c.augment == "auto":
        c.augment = "light" if n < 50_000 else "strong"
        why.append(f"augment {c.augment}")
    if c.precision == "auto":
        c.precision = common.auto_precision()
        why.append(f"precision {c.precision}")
    if c.channels_last is None:
        c.channels_last = not (c.model.startswith("vit") or c.model == "cnn-rnn")
    c.image_size, c.channels = size, chans
    return c, why


# ---------------------------------------------------------------------------------- Lightning module
def make_module(model: nn.Module, cfg: ClassifyConfig, num_classes: int, mean: list[float], std: list[float], hflip_ok: bool):
    """Build the LightningModule that trains ``model`` as ``cfg`` says."""
    pl = common.lightning()
    from torchmetrics.classification import MulticlassAccuracy

    preset = get_preset(cfg.augment)

    class ClassifierModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
            self.augment = None if preset.is_identity else BatchAugment(preset, hflip_ok)
            self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

        def forward(self, x):
            return self.model(x)

        def on_train_epoch_start(self):
            # Re-seed per epoch: dropout and augmentation draws then do not depend on whether the
            # run was interrupted and resumed before this epoch.
            torch.manual_seed(cfg.seed * 100_003 + self.current_epoch)
            self.loss_sum, self.seen = torch.zeros((), device=self.device), 0

        def on_after_batch_transfer(self, batch, dataloader_idx):
            # Runs on the training device: augmentation on GPU when there is one.
            x, y = batch
            x = x.float().div_(255)
            if self.trainer.training and self.augment is not None:
                x = self.augment(x)
            x = (x - self.mean) / self.std
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return x, y

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.model(x), y, label_smoothing=cfg.label_smoothing)
            # Summed here and logged once per epoch: a per-step self.log costs ~1.5 ms, which is 5% of
            # a step of a small CNN on CPU (benchmarks/classify_throughput.py).
            self.loss_sum += loss.detach().float() * len(y)
            self.seen += len(y)
            if batch_idx + 1 == self.trainer.num_training_batches:
                # Logged from the step (not on_train_epoch_end) so callbacks see it at epoch end.
                self.log("train_loss", self.loss_sum / self.seen, on_step=False, on_epoch=True, prog_bar=True)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self.model(x)
            self.log("val_loss", nn.functional.cross_entropy(logits.float(), y), prog_bar=True)
            self.val_acc(logits, y)
            self.log("val_acc", self.val_acc, prog_bar=True)

        def configure_optimizers(self):
            return common.configure_optimizers(cfg, self.model.parameters(), int(self.trainer.estimated_stepping_batches))

    return ClassifierModule()


def train(config: ClassifyConfig | dict | str | Path | None = None, callbacks: Iterable | None = None, **options: Any) -> Path:
    """Train a classifier and return its run folder.

    The folder gets ``config.yaml`` (resolved), ``checkpoints/{best,last}.ckpt``, ``tensorboard/``,
    ``history.json``, the portable ``model.safetensors`` + ``model.json``, and the test-split
    ``metrics.json`` + ``confusion_matrix.png``.

    >>> run = train(data="digits", epochs=3, out="runs/classify/digits")
    """
    cfg, run, ckpt = common.prepare_run(ClassifyConfig, TASK, common.make_config(ClassifyConfig, config, options))
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    splits = create_dataset(cfg.data, common.data_options(cfg))
    if cfg.synthetic:
        from ..data.synthetic import add_synthetic

        splits, note = add_synthetic(splits, cfg.synthetic, seed=cfg.seed)
        splits.notes.append(note)
    cfg, why = resolve_defaults(cfg, splits)
    cfg.out = str(run)
    print(f"data {cfg.data}: {len(splits.train)} train / {len(splits.val)} val / "
          f"{len(splits.test) if splits.test is not None else 0} test, {len(splits.classes)} classes, "
          f"{cfg.image_size}x{cfg.image_size}x{cfg.channels}")
    if why:
        print("auto: " + "; ".join(why))
    for note in splits.notes:
        print("note: " + note)

    model = common.create_model(cfg.model, cfg.model_kwargs, num_classes=len(splits.classes), in_chans=cfg.channels,
                                image_size=cfg.image_size, pretrained=cfg.pretrained and not cfg.resume,
                                weights=None if cfg.resume else cfg.weights)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean, std = splits.mean_std()
    module = make_module(model, cfg, len(splits.classes), mean, std, splits.hflip_ok)
    common.save_config(cfg, run)
    write_manifest(run, splits, cfg)  # which images each split holds (splits.json)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {cfg.model}: {n_params / 1e6:.2f}M parameters; {common.plan_text(cfg)}, batch {cfg.batch_size}, "
          f"{cfg.precision}; run folder {run}")

    train_dl = common.EpochBatches(splits.train, cfg.batch_size, shuffle=True, drop_last=True, seed=cfg.seed)
    trainer = common.make_trainer(cfg, run, monitor="val_acc", steps_per_epoch=len(train_dl), extra_callbacks=callbacks or (),
                                  t_start=t0, reserve=common.eval_reserve(splits, 2.0))
    common.fit(trainer, module, train_dl, TensorBatches(splits.val, max(256, cfg.batch_size)), ckpt)
    common.load_best(module, run)
    model = module.model.to(memory_format=torch.contiguous_format).cpu().eval()
    save_portable(run, model, {
        "task": TASK, "model": cfg.model, "model_kwargs": cfg.model_kwargs, "classes": splits.classes,
        "image_size": cfg.image_size, "in_chans": cfg.channels, "normalize": {"mean": mean, "std": std},
        "data": cfg.data, "hflip_ok": splits.hflip_ok,
    })
    train_s = time.perf_counter() - t0
    eval_split = "test" if splits.test is not None else "val"
    metrics = _evaluate_model(model, read_card(run), splits.split(eval_split), run, eval_split, cfg.data)
    common.write_run_report(run)
    print(f"trained {trainer.current_epoch} epochs in {train_s:.1f} s; {eval_split} accuracy {metrics['accuracy']:.4f}; wrote {run}")
    return run


# ---------------------------------------------------------------------------------------- evaluate
@torch.inference_mode()
def predict_probs(model: nn.Module, card: dict[str, Any], images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Class probabilities for a uint8 batch already at the model's size and channels."""
    mean = torch.tensor(card["normalize"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(card["normalize"]["std"]).view(1, -1, 1, 1)
    dev = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = (images[i : i + batch_size].float().div_(255) - mean) / std
        out.append(model(x.to(dev)).float().softmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, len(card["classes"]))


def _fit_to_card(ds: ImageSet, card: dict[str, Any]) -> ImageSet:
    imgs = convert_channels(resize_images(ds.images, card["image_size"]), card["in_chans"])
    return ImageSet(imgs, ds.labels, ds.paths)


def _evaluate_model(model, card, ds: ImageSet, run: Path | None, split: str, data: str,
                    has_test: bool | None = None) -> dict[str, Any]:
    from ..metrics.classification import classification_metrics
    from ..metrics.heldout import split_fields

    probs = predict_probs(model, card, _fit_to_card(ds, card).images)
    metrics = {"task": TASK, "data": data, **split_fields(split, data, has_test=has_test),
               **classification_metrics(probs, ds.labels, card["classes"])}
    if run is not None:
        name = "metrics.json" if split == "test" else f"metrics_{split}.json"
        # report_text is sklearn's text table of the same numbers: printed by the CLI, not stored.
        write_json(run / name, {k: v for k, v in metrics.items() if k != "report_text"})
        from ..report import plot_confusion_matrix

        plot_confusion_matrix(metrics["confusion_matrix"], card["classes"], run / "confusion_matrix.png")
    return metrics


def evaluate(run: str | Path, data: str | None = None, split: str | None = None, write: bool = True,
             device: str = "cpu") -> dict[str, Any]:
    """Evaluate a trained run on a split of its data (test, else val) or of another data set.

    Writes ``metrics.json`` (``metrics_<split>.json`` for other splits) and ``confusion_matrix.png``
    into the run folder when ``write`` is true, and returns the metrics.
    """
    run = Path(run)
    model, card = load_portable(run, device)
    if write and run.is_dir():
        # Before any data is loaded.
        common.check_writable_folder(run, "run folder", "pass --no-write to only print the metrics, or make it writable")
    cfg_path = run / "config.yaml"
    cfg = common.load_run_config(ClassifyConfig, run) if cfg_path.is_file() else ClassifyConfig(data=card["data"])
    spec = data or cfg.data
    opts = common.data_options(cfg)
    if data and data != cfg.data:
        # Another data set: all of it is the split asked for unless it defines one.
        opts = dataclasses.replace(opts, image_size=card["image_size"], channels=card["in_chans"], limit=None)
    splits = create_dataset(spec, opts)
    if splits.classes != card["classes"]:
        raise DataError(f"data {spec!r} has classes {splits.classes[:5]}... but the model was trained on "
                        f"{card['classes'][:5]}...; evaluate on data with the same class folders")
    split = split or ("test" if splits.test is not None else "val")
    return _evaluate_model(model, card, splits.split(split), run if write and run.is_dir() else None, split, spec,
                           has_test=splits.test is not None)


# ----------------------------------------------------------------------------------------- predict
class Classifier:
    """A trained classifier, ready to predict. Get one with ``recogen.load(RUN)``.

    >>> clf = recogen.load("runs/classify/digits")
    >>> clf.predict("three.png", topk=3)
    {'label': '3', 'index': 3, 'prob': 0.99, 'topk': [...]}
    """

    task = TASK

    def __init__(self, model: nn.Module, card: dict[str, Any], path: Path | None = None):
        self.model, self.card, self.path = model, card, path
        self.classes: list[str] = card["classes"]

    def preprocess(self, images: list) -> torch.Tensor:
        """Decode, convert to the model's channels and resize to its input size: a uint8 batch."""
        from torchvision.transforms.v2.functional import pil_to_tensor

        size, chans = self.card["image_size"], self.card["in_chans"]
        out = []
        for src in images:
            img = open_image(src)
            img = img.convert("L" if chans == 1 else "RGB")
            t = pil_to_tensor(img).unsqueeze(0)
            out.append(resize_images(t, size))
        return torch.cat(out)

    def predict(self, images, topk: int = 5):
        """Top-k labels with probabilities for one image (returns a dict) or a list (a list of dicts).

        Each image may be a path, bytes, a PIL image or a uint8 numpy array.
        """
        if isinstance(topk, bool) or not isinstance(topk, numbers.Integral) or topk < 1:
            raise ConfigError(f"bad topk {topk!r}: it must be a whole number >= 1 (how many labels to show)")
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        probs = predict_probs(self.model, self.card, self.preprocess(batch))
        k = max(1, min(topk, len(self.classes)))
        top_p, top_i = probs.topk(k, dim=1)
        res = []
        for src, ps, ix in zip(batch, top_p.tolist(), top_i.tolist()):
            item = {"label": self.classes[ix[0]], "index": ix[0], "prob": ps[0],
                    "topk": [{"label": self.classes[i], "index": i, "prob": p} for p, i in zip(ps, ix)]}
            if isinstance(src, (str, Path)):
                item = {"path": str(src), **item}
            res.append(item)
        return res[0] if single else res

    def evaluate(self, data: str | None = None, split: str | None = None) -> dict[str, Any]:
        """Evaluate on the run's data (or ``data``); see :func:`evaluate`."""
        if self.path is None:
            raise RunError("this classifier was not loaded from a run folder; pass data explicitly to evaluate()")
        return evaluate(self.path, data=data, split=split, write=False)


def print_metrics(m: dict[str, Any]) -> None:
    """The human summary of ``evaluate``: headline numbers, sklearn's report, the confusion matrix."""
    from ..metrics.classification import confusion_text

    top5 = f", top-5 {m['top5_accuracy']:.4f}" if m["top5_accuracy"] is not None else ""
    print(f"{m['data']} {m['split']}: {m['num_images']} images, accuracy {m['accuracy']:.4f}{top5}, macro F1 {m['macro_f1']:.4f}\n")
    if "report_text" in m:
        print(m["report_text"])
    print(confusion_text(m["confusion_matrix"], list(m["per_class"])))


def predict_files(run: str | Path, files: list[Path], out_dir: Path | None = None, device: str = "cpu",
                  topk: int = 5, backend: str = "torch") -> list[dict[str, Any]]:
    """Predict image files (the CLI's ``predict``); JSON-able results. Nothing is written: ``out_dir`` is unused."""
    return load(run, device, backend).predict([str(f) for f in files], topk=topk)


def format_prediction(r: dict[str, Any]) -> str:
    """One line per image for the CLI."""
    alts = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in r["topk"][1:])
    return f"{r['path']}: {r['label']} ({r['prob']:.3f})" + (f"  [{alts}]" if alts else "")


def load(path: str | Path, device: str = "cpu", backend: str = "torch") -> Classifier:
    """Load a trained classifier from a run folder or a ``model.json``.

    ``backend="onnx"`` runs the ONNX export (``recogen export RUN --format onnx``) with onnxruntime.
    """
    from ..export import load_backend

    model, card = load_backend(path, device, backend)
    if card.get("task") != TASK:
        raise RunError(f"{path} holds a {card.get('task')} model, not a classifier")
    p = Path(path)
    return Classifier(model, card, p if p.is_dir() else p.parent)
