"""Image classification: the Lightning module, training, evaluation and prediction."""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..config import ClassifyConfig, from_dict, load_yaml, save_yaml
from ..data import DataOptions, ImageSet, ImageSplits, create_dataset, parse_spec
from ..data.base import convert_channels, resize_images
from ..data.loaders import TensorBatches
from ..data.transforms import BatchAugment, get_preset
from ..errors import ConfigError, DataError, RunError
from ..export.portable import load_portable, read_card, save_portable
from ..utils import bf16_supported, seed_everything, write_json

log = logging.getLogger("recogen")
TASK = "classify"


# --------------------------------------------------------------------------------------- defaults
def _has_cuda() -> bool:
    return torch.cuda.is_available()


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
    if c.epochs is None:
        # About 300 optimiser steps: >99% on digits in tuning (BENCHMARKS.md); bounded for big sets.
        steps = max(1, n // c.batch_size)
        c.epochs = int(min(50, max(5, round(300 / steps))))
        why.append(f"{c.epochs} epochs (~{c.epochs * steps} steps)")
    if c.lr is None:
        is_vit = c.model.startswith("vit")
        c.lr = (5e-4 if is_vit else 1e-3 if c.model.startswith("resnet") else 3e-3) * (0.1 if c.pretrained else 1)
        why.append(f"lr {c.lr:g} ({c.optimizer}, {c.schedule})")
    if c.augment == "auto":
        c.augment = "light" if n < 50_000 else "strong"
        why.append(f"augment {c.augment}")
    if c.precision == "auto":
        if _has_cuda():
            c.precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        else:
            c.precision = "bf16-mixed" if bf16_supported() else "32-true"
        why.append(f"precision {c.precision}")
    if c.channels_last is None:
        c.channels_last = not (c.model.startswith("vit") or c.model == "cnn-rnn")
    c.image_size, c.channels = size, chans
    return c, why


# ---------------------------------------------------------------------------------- Lightning module
def _lightning():
    import lightning.pytorch as pl

    return pl


def make_module(model: nn.Module, cfg: ClassifyConfig, num_classes: int, mean: list[float], std: list[float], hflip_ok: bool):
    """Build the LightningModule that trains ``model`` as ``cfg`` says."""
    pl = _lightning()
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
            params = self.model.parameters()
            if cfg.optimizer == "adamw":
                opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
            elif cfg.optimizer == "sgd":
                opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
            else:
                raise ConfigError(f"unknown --optimizer {cfg.optimizer!r}; choose adamw or sgd")
            total = int(self.trainer.estimated_stepping_batches)
            if cfg.schedule == "onecycle":
                sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.25)
            elif cfg.schedule == "cosine":
                sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
            elif cfg.schedule == "none":
                return opt
            else:
                raise ConfigError(f"unknown --schedule {cfg.schedule!r}; choose onecycle, cosine or none")
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return ClassifierModule()


class _EpochBatches(TensorBatches):
    """TensorBatches that Lightning re-seeds each epoch through the ``sampler.set_epoch`` protocol."""

    @property
    def sampler(self):
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def _callbacks(run: Path, cfg: ClassifyConfig):
    pl = _lightning()
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    class History(pl.Callback):
        """Keeps ``history.json``: one row per finished epoch; a resumed run drops rows it will redo."""

        def __init__(self):
            self.path = run / "history.json"
            self.rows: list[dict[str, Any]] = []
            self.t0 = time.perf_counter()

        def on_train_start(self, trainer, module):
            if self.path.is_file():
                self.rows = [r for r in json.loads(self.path.read_text()) if r["epoch"] < trainer.current_epoch]

        def on_train_epoch_start(self, trainer, module):
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            m = {k: float(v) for k, v in trainer.callback_metrics.items()}
            row = {"epoch": trainer.current_epoch, **{k: round(v, 6) for k, v in m.items()},
                   "lr": trainer.optimizers[0].param_groups[0]["lr"], "time_s": round(time.perf_counter() - self.t0, 3)}
            self.rows.append(row)
            write_json(self.path, self.rows)

    cbs = [
        # Saved at the end of the training epoch, after History wrote that epoch's row (Lightning runs
        # checkpoint callbacks last), so a crash between the two never loses a history row.
        ModelCheckpoint(dirpath=run / "checkpoints", filename="best", monitor="val_acc", mode="max",
                        save_last=True, save_top_k=1, enable_version_counter=False, save_on_train_epoch_end=True),
        History(),
    ]
    if cfg.patience:
        cbs.append(EarlyStopping(monitor="val_acc", mode="max", patience=cfg.patience))
    return cbs


def _atomic_checkpoint_io():
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    from ..utils import atomic_write

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Write each checkpoint to a temporary file and rename it: an interrupted save keeps the old one."""

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            atomic_write(Path(path), lambda tmp: torch.save(checkpoint, tmp))

    return AtomicCheckpointIO()


# -------------------------------------------------------------------------------------------- train
def data_options(cfg: ClassifyConfig) -> DataOptions:
    """The data-set options a config implies (the same ones rebuild the same splits at eval time)."""
    return DataOptions(image_size=cfg.image_size, channels=cfg.channels, data_dir=Path(cfg.data_dir).expanduser(),
                       seed=cfg.seed, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction,
                       skip_bad_images=cfg.skip_bad_images, limit=cfg.limit)


def _default_out(cfg: ClassifyConfig) -> Path:
    base = Path("runs") / TASK / parse_spec(cfg.data)[0]
    out, k = base, 2
    while out.exists():
        out, k = base.with_name(f"{base.name}{k}"), k + 1
    return out


def _make_config(config: ClassifyConfig | dict | str | Path | None, options: dict[str, Any]) -> ClassifyConfig:
    if isinstance(config, ClassifyConfig):
        base = dataclasses.asdict(config)
    elif isinstance(config, (str, Path)):
        base = load_yaml(config)
    else:
        base = dict(config or {})
    return from_dict(ClassifyConfig, {**base, **options})


def _prepare_run(cfg: ClassifyConfig) -> tuple[ClassifyConfig, Path, Path | None]:
    """Decide the run folder; for --resume, reload its resolved config (epochs may be raised)."""
    if not cfg.resume:
        out = Path(cfg.out) if cfg.out else _default_out(cfg)
        if (out / "checkpoints").exists() or (out / "model.json").exists():
            raise RunError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
        return cfg, out, None
    if not cfg.out:
        raise ConfigError("--resume needs --out RUN_DIR naming the run to continue")
    out = Path(cfg.out)
    last = out / "checkpoints" / "last.ckpt"
    if not last.is_file() or not (out / "config.yaml").is_file():
        raise RunError(f"nothing to resume in {out}: {last} or config.yaml is missing")
    saved = from_dict(ClassifyConfig, load_yaml(out / "config.yaml"), str(out / "config.yaml"))
    epochs = cfg.epochs if cfg.epochs is not None else saved.epochs
    return dataclasses.replace(saved, resume=True, out=str(out), epochs=epochs, progress=cfg.progress), out, last


def train(config: ClassifyConfig | dict | str | Path | None = None, callbacks: Iterable | None = None, **options: Any) -> Path:
    """Train a classifier and return its run folder.

    The folder gets ``config.yaml`` (resolved), ``checkpoints/{best,last}.ckpt``, ``tensorboard/``,
    ``history.json``, the portable ``model.safetensors`` + ``model.json``, and the test-split
    ``metrics.json`` + ``confusion_matrix.png``.

    >>> run = train(data="digits", epochs=3, out="runs/classify/digits")
    """
    cfg, run, ckpt = _prepare_run(_make_config(config, options))
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    splits = create_dataset(cfg.data, data_options(cfg))
    cfg, why = resolve_defaults(cfg, splits)
    cfg.out = str(run)
    print(f"data {cfg.data}: {len(splits.train)} train / {len(splits.val)} val / "
          f"{len(splits.test) if splits.test is not None else 0} test, {len(splits.classes)} classes, "
          f"{cfg.image_size}x{cfg.image_size}x{cfg.channels}")
    if why:
        print("auto: " + "; ".join(why))
    for note in splits.notes:
        print("note: " + note)

    from ..models import create_model

    model = create_model(cfg.model, num_classes=len(splits.classes), in_chans=cfg.channels, image_size=cfg.image_size,
                         pretrained=cfg.pretrained and not cfg.resume, weights=None if cfg.resume else cfg.weights,
                         **cfg.model_kwargs)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean, std = splits.mean_std()
    module = make_module(model, cfg, len(splits.classes), mean, std, splits.hflip_ok)
    run.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, run / "config.yaml")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {cfg.model}: {n_params / 1e6:.2f}M parameters; {cfg.epochs} epochs, batch {cfg.batch_size}, "
          f"{cfg.precision}; run folder {run}")

    train_dl = _EpochBatches(splits.train, cfg.batch_size, shuffle=True, drop_last=True, seed=cfg.seed)
    trainer = _make_trainer(cfg, run, list(callbacks or []), len(train_dl))
    val_dl = TensorBatches(splits.val, max(256, cfg.batch_size))
    try:
        trainer.fit(module, train_dl, val_dl, ckpt_path=str(ckpt) if ckpt else None)
    except SystemExit:
        # Lightning turns Ctrl+C into a graceful shutdown and sys.exit(1); the last finished epoch is
        # saved, so report it as an interruption the caller can resume from.
        if trainer.interrupted:
            import signal

            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning set SIG_IGN
            raise KeyboardInterrupt from None
        raise
    best = run / "checkpoints" / "best.ckpt"
    if best.is_file():
        state = torch.load(str(best), map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    model = module.model.to(memory_format=torch.contiguous_format).cpu().eval()
    save_portable(run, model, {
        "task": TASK, "model": cfg.model, "model_kwargs": cfg.model_kwargs, "classes": splits.classes,
        "image_size": cfg.image_size, "in_chans": cfg.channels, "normalize": {"mean": mean, "std": std},
        "data": cfg.data, "hflip_ok": splits.hflip_ok,
    })
    train_s = time.perf_counter() - t0
    eval_split = "test" if splits.test is not None else "val"
    metrics = _evaluate_model(model, read_card(run), splits.split(eval_split), run, eval_split, cfg.data)
    print(f"trained in {train_s:.1f} s; {eval_split} accuracy {metrics['accuracy']:.4f}; wrote {run}")
    return run


def _make_trainer(cfg: ClassifyConfig, run: Path, extra_callbacks: list, steps_per_epoch: int):
    pl = _lightning()
    from lightning.pytorch.loggers import TensorBoardLogger

    import warnings

    # Lightning-internal deprecation noise under this torch version; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
    # Resuming reuses the run's checkpoint folder on purpose.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    for name in ("lightning.pytorch", "lightning.fabric"):
        # Lightning's banner lines (GPU available..., tips) are noise in a CLI that prints its own summary.
        logging.getLogger(name).setLevel(logging.WARNING)
    devices: Any = cfg.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    return pl.Trainer(
        max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=devices, precision=cfg.precision,
        logger=TensorBoardLogger(save_dir=str(run), name="tensorboard", version="", default_hp_metric=False),
        callbacks=_callbacks(run, cfg) + extra_callbacks, plugins=[_atomic_checkpoint_io()],
        enable_progress_bar=cfg.progress, enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, steps_per_epoch)), default_root_dir=str(run),
    )


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


def _evaluate_model(model, card, ds: ImageSet, run: Path | None, split: str, data: str) -> dict[str, Any]:
    from ..metrics.classification import classification_metrics

    probs = predict_probs(model, card, _fit_to_card(ds, card).images)
    metrics = {"task": TASK, "data": data, "split": split, **classification_metrics(probs, ds.labels, card["classes"])}
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
    cfg_path = run / "config.yaml"
    cfg = from_dict(ClassifyConfig, load_yaml(cfg_path), str(cfg_path)) if cfg_path.is_file() else ClassifyConfig(data=card["data"])
    spec = data or cfg.data
    opts = data_options(cfg)
    if data and data != cfg.data:
        # Another data set: all of it is the split asked for unless it defines one.
        opts = dataclasses.replace(opts, image_size=card["image_size"], channels=card["in_chans"], limit=None)
    splits = create_dataset(spec, opts)
    if splits.classes != card["classes"]:
        raise DataError(f"data {spec!r} has classes {splits.classes[:5]}... but the model was trained on "
                        f"{card['classes'][:5]}...; evaluate on data with the same class folders")
    split = split or ("test" if splits.test is not None else "val")
    return _evaluate_model(model, card, splits.split(split), run if write and run.is_dir() else None, split, spec)


# ----------------------------------------------------------------------------------------- predict
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def expand_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted); a missing path is a DataError."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file())
            if not found:
                raise DataError(f"no image files ({', '.join(IMAGE_EXTS)}) in folder {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"no such file or folder: {p}")
    return out


def open_image(src) -> "Image.Image":  # noqa: F821
    """Open a path, bytes, numpy array or PIL image as a fully decoded PIL image (clear error if corrupt)."""
    import io

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    if isinstance(src, Image.Image):
        return src
    if isinstance(src, np.ndarray):
        return Image.fromarray(src)
    name = str(src) if isinstance(src, (str, Path)) else "<bytes>"
    try:
        img = Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src)
        img.load()
        return img
    except FileNotFoundError:
        raise DataError(f"no such file: {name}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {name}: {e}") from None


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


def load(path: str | Path, device: str = "cpu") -> Classifier:
    """Load a trained classifier from a run folder or a ``model.json``."""
    model, card = load_portable(path, device)
    if card.get("task") != TASK:
        raise RunError(f"{path} holds a {card.get('task')} model, not a classifier")
    p = Path(path)
    return Classifier(model, card, p if p.is_dir() else p.parent)
