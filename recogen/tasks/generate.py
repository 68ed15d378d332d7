"""Image generation: training (VAE, GAN, diffusion under one Lightning loop), sampling, loading.

The loop never branches on the family: each model (``recogen.models.generators``) names its
optimiser groups and the phases of a step (a GAN's discriminator then generator), so Lightning's
manual optimisation runs them all, with the checkpoints, history, TensorBoard and bit-identical
resume every task shares (``tasks/common.py``).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from ..config import GenerateConfig
from ..data import ImageSplits, create_dataset
from ..data.loaders import TensorBatches
from ..data.manifest import write_manifest
from ..data.transforms import BatchAugment, get_preset
from ..errors import ConfigError, ModelError, RunError
from ..artifact import load_portable, save_portable
from ..utils import atomic_write, seed_everything
from . import common

TASK = "generate"

# Per family: the recipe `recogen generate train --model M` uses when nothing else is given.
# ``train_steps`` sets the epochs (optimiser steps / steps per epoch), so small and large data sets
# get about the same CPU time. Tuned on digits 28 px; see the README's generation section.
# Per family: the recipe, the default wall-clock budget (the epochs are planned from measured epoch
# times to end in it: tasks/budget.py) and ``max_steps``, an upper bound on optimiser steps for when
# the hardware is fast enough that the clock never decides.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "vae": dict(width=32, latent_dim=16, beta=1.0, lr=2e-3, batch_size=64, budget="3m", max_steps=20_000,
                optimizer="adam", schedule="onecycle"),
    "gan": dict(width=32, latent_dim=64, loss="nonsaturating", ema=0.999, lr=2e-4, batch_size=64, budget="7m",
                max_steps=40_000, optimizer="adam", schedule="none"),
    "diffusion": dict(width=16, ema=0.999, steps=15, sampler="ddim", guidance=2.0, lr=2e-3, batch_size=64,
                      budget="9m", max_steps=40_000, optimizer="adamw", schedule="onecycle"),
}
# The config fields each family's constructor takes (anything else set for it is a mistake).
FAMILY_FIELDS: dict[str, tuple[str, ...]] = {
    "vae": ("width", "latent_dim", "beta", "conditional"),
    "gan": ("width", "latent_dim", "loss", "spectral_norm", "ema", "conditional"),
    "diffusion": ("width", "ema", "steps", "sampler", "guidance", "conditional"),
}
MAX_PREVIEWS = 100  # TensorBoard sample grids per run

_UNSET = {"latent_dim": None, "beta": None, "loss": "auto", "spectral_norm": False, "ema": None, "steps": None,
          "sampler": None, "guidance": None, "width": None, "conditional": False}


# --------------------------------------------------------------------------------------- defaults
def default_image_size(natural: int, channels: int) -> int:
    """28 px for grayscale data (MNIST scale), 32 px otherwise: sizes a CPU trains in minutes."""
    return 28 if channels == 1 and natural <= 32 else 32


def resolve_defaults(cfg: GenerateConfig, splits: ImageSplits) -> tuple[GenerateConfig, list[str]]:
    """Replace every "auto"/None in ``cfg`` with the family's recipe; return the reasons."""
    from ..models import model_meta

    c = dataclasses.replace(cfg, model_kwargs=dict(cfg.model_kwargs))
    why: list[str] = []
    if c.model == "auto":
        c.model = "dcgan"
        why.append("model dcgan (best samples per CPU minute on digits)")
    meta = model_meta(c.model)
    if meta.get("task") != TASK:
        raise ModelError(f"{c.model} is a {meta.get('task')} model; choose a generator: vae, dcgan or ddpm")
    family = meta["family"]
    d = FAMILY_DEFAULTS[family]
    for name, unset in _UNSET.items():
        if name not in FAMILY_FIELDS[family] and getattr(c, name) != unset:
            raise ConfigError(f"--{name.replace('_', '-')} does not apply to {c.model}; it applies to "
                              + ", ".join(m for m, fs in _family_models().items() if name in fs))
    if c.guidance is not None and not c.conditional:
        raise ConfigError("--guidance needs a conditional model: add --conditional")
    if not c.conditional and "guidance" in FAMILY_FIELDS[family]:
        c.guidance = 1.0  # classifier-free guidance has no classes to guide towards
    for name in FAMILY_FIELDS[family]:
        if getattr(c, name) in (None, "auto") and name in d:
            setattr(c, name, d[name])
            why.append(f"{name.replace('_', ' ')} {d[name]}")
    n = len(splits.train)
    if c.batch_size is None:
        c.batch_size = min(d["batch_size"], max(8, n))
        why.append(f"batch size {c.batch_size}")
    budget = common.resolve_budget(c, d["budget"], why)
    if c.epochs is None:
        steps = max(1, n // c.batch_size)
        c.epochs = int(min(1000, max(1, math.ceil(d["max_steps"] / steps))))
        why.append(f"{'at most ' if budget else ''}{c.epochs} epochs (~{c.epochs * steps} steps of {n} images)")
    if c.lr is None:
        c.lr = d["lr"]
        why.append(f"lr {c.lr:g}")
    if c.optimizer == "auto":
        c.optimizer = d["optimizer"]
    if c.schedule == "auto":
        c.schedule = d["schedule"]
    why.append(f"{c.optimizer}, schedule {c.schedule}")
    if c.augment == "auto":
        c.augment = "none"  # augmentations would show up in the samples
    if c.precision == "auto":
        c.precision = common.auto_precision()
    if c.channels_last is None:
        c.channels_last = False
    if c.conditional and len(splits.classes) < 2:
        raise ConfigError(f"--conditional needs labelled data with 2+ classes; {c.data} has {len(splits.classes)}")
    c.image_size, c.channels = splits.image_size[0], splits.channels
    c.model_kwargs = {**{k: getattr(c, k) for k in FAMILY_FIELDS[family]}, **c.model_kwargs}
    return c, why


def _family_models() -> dict[str, tuple[str, ...]]:
    return {"vae": FAMILY_FIELDS["vae"], "dcgan": FAMILY_FIELDS["gan"], "ddpm": FAMILY_FIELDS["diffusion"]}


def _load_data(cfg: GenerateConfig) -> ImageSplits:
    """The data at the generation size: the data set's own size is replaced by 28 or 32 px unless given."""
    opts = common.data_options(cfg)
    splits = create_dataset(cfg.data, opts)
    if cfg.image_size is None:
        size = default_image_size(max(splits.image_size), splits.channels)
        if size != splits.image_size[0] or splits.image_size[0] != splits.image_size[1]:
            # Rebuilt rather than resized, so eval (which rebuilds from config.yaml) sees the same pixels.
            splits = create_dataset(cfg.data, dataclasses.replace(opts, image_size=size))
    return splits


# ---------------------------------------------------------------------------------- Lightning module
def _optimizer(cfg: GenerateConfig, params, betas: tuple[float, float]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
    raise ConfigError(f"unknown --optimizer {cfg.optimizer!r} for generation; choose adam or adamw")


def make_module(model: nn.Module, cfg: GenerateConfig, hflip_ok: bool, total_steps: int):
    """The LightningModule that trains any generative model by its phases (manual optimisation)."""
    pl = common.lightning()
    preset = get_preset(cfg.augment)

    class GenerativeModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            # GANs alternate two optimisers; one manual loop serves every family the same way.
            self.automatic_optimization = False
            self.groups = list(model.param_groups())
            self.augment = None if preset.is_identity else BatchAugment(preset, hflip_ok)

        def on_train_epoch_start(self):
            # Re-seed per epoch (as classify): noise, timesteps and latents of an epoch do not
            # depend on whether the run was interrupted and resumed before it.
            torch.manual_seed(cfg.seed * 100_003 + self.current_epoch)
            self.sums: dict[str, list] = {}

        def on_after_batch_transfer(self, batch, dataloader_idx):
            x, y = batch
            x = x.float().div_(255)
            if self.trainer.training and self.augment is not None:
                x = self.augment(x)
            return x, y

        def training_step(self, batch, batch_idx):
            x, y = batch
            opts = self.optimizers()
            opts = opts if isinstance(opts, list) else [opts]
            for phase in self.model.phases(batch_idx):
                opt = opts[self.groups.index(phase)]
                if len(opts) > 1:
                    self.toggle_optimizer(opt)  # no gradients into the other network's weights
                loss, logs = self.model.phase_loss(phase, x, y)
                opt.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                opt.step()
                if len(opts) > 1:
                    self.untoggle_optimizer(opt)
                self.model.after_step(phase)
                for k, v in logs.items():
                    s = self.sums.setdefault(k, [torch.zeros(()), 0])
                    s[0] += v.float().cpu()
                    s[1] += 1
            scheds = self.lr_schedulers()
            for s in scheds if isinstance(scheds, list) else [scheds] if scheds is not None else []:
                s.step()
            if batch_idx + 1 == self.trainer.num_training_batches:
                # Logged once per epoch from the last step (per-step logging costs ~5% on a CPU).
                for k, (total, count) in self.sums.items():
                    self.log(k, total / count, on_step=False, on_epoch=True, prog_bar=k in ("loss", "d_loss", "g_loss", "recon"))

        def validation_step(self, batch, batch_idx):
            x, y = batch
            for k, v in self.model.val_metrics(x, y).items():
                self.log(k, v, prog_bar=True)

        def on_train_epoch_end(self):
            # The image grid of this epoch in TensorBoard; a private generator keeps the global RNG
            # (and so a resumed run) untouched.
            # At most MAX_PREVIEWS grids per run (every k-th epoch and the last): a small data set has
            # epochs of one or two steps, where a grid per epoch would cost more than the training.
            every = max(1, math.ceil(cfg.epochs / MAX_PREVIEWS))
            last = self.current_epoch + 1 == cfg.epochs
            if self.logger is not None and hasattr(self.logger, "experiment") and (self.current_epoch % every == 0 or last):
                imgs = _sample_uint8(self.model, self.model.preview_n, 0, _default_labels(self.model, self.model.preview_n),
                                     **self.model.preview_opts)
                self.logger.experiment.add_image("samples", make_grid(imgs, _nrow(self.model, len(imgs))), self.current_epoch)

        def configure_optimizers(self):
            opts, scheds = [], []
            for params in model.param_groups().values():
                opt = _optimizer(cfg, params, model.adam_betas)
                opts.append(opt)
                s = common.make_scheduler(opt, cfg.schedule, cfg.lr, total_steps, warmup=0.1)
                if s is not None:
                    scheds.append({"scheduler": s, "interval": "step"})
            return opts, scheds

    return GenerativeModule()


# -------------------------------------------------------------------------------------------- train
def train(config: GenerateConfig | dict | str | Path | None = None, callbacks: Iterable | None = None, **options: Any) -> Path:
    """Train a generative model and return its run folder.

    The folder gets ``config.yaml`` (resolved), ``checkpoints/{best,last}.ckpt`` (best is the last
    epoch: a generator's losses do not rank its samples), ``tensorboard/`` (scalars and a sample
    grid per epoch), ``history.json``, the portable ``model.safetensors`` + ``model.json`` and
    ``samples.png`` (64 samples, seed 0).

    >>> run = train(model="dcgan", data="digits", out="runs/generate/digits")
    """
    cfg, run, ckpt = common.prepare_run(GenerateConfig, TASK, common.make_config(GenerateConfig, config, options))
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    splits = _load_data(cfg)
    cfg, why = resolve_defaults(cfg, splits)
    cfg.out = str(run)
    print(f"data {cfg.data}: {len(splits.train)} train / {len(splits.val)} val images, {len(splits.classes)} classes, "
          f"{cfg.image_size}x{cfg.image_size}x{cfg.channels}")
    if why:
        print("auto: " + "; ".join(why))

    model = common.create_model(cfg.model, cfg.model_kwargs, num_classes=len(splits.classes), in_chans=cfg.channels,
                                image_size=cfg.image_size, pretrained=cfg.pretrained,
                                weights=None if cfg.resume else cfg.weights)
    train_dl = common.EpochBatches(splits.train, cfg.batch_size, shuffle=True, drop_last=True, seed=cfg.seed)
    module = make_module(model, cfg, splits.hflip_ok, cfg.epochs * len(train_dl))
    common.save_config(cfg, run)
    write_manifest(run, splits, cfg)  # which images each split holds (splits.json)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model {cfg.model}: {n_params / 1e6:.2f}M trainable parameters; {common.plan_text(cfg)}, batch {cfg.batch_size}, "
          f"{cfg.precision}; run folder {run}")
    trainer = common.make_trainer(cfg, run, monitor=None, steps_per_epoch=len(train_dl), extra_callbacks=callbacks or (),
                                  t_start=t0, reserve=(5.0, 1.0))
    common.fit(trainer, module, train_dl, TensorBatches(splits.val, 256), ckpt)
    common.load_best(module, run)
    model = module.model.cpu().eval()
    card = {"task": TASK, "model": cfg.model, "model_kwargs": cfg.model_kwargs, "classes": splits.classes,
            "image_size": cfg.image_size, "in_chans": cfg.channels, "conditional": cfg.conditional,
            "data": cfg.data, "pixel_range": [0, 255]}
    save_portable(run, model, card)
    train_s = time.perf_counter() - t0
    gen = Generator(model, card, run)
    write_grid(gen.sample(64, seed=0), run / "samples.png", _nrow(model, 64))
    common.write_run_report(run)
    print(f"trained {trainer.current_epoch} epochs in {train_s:.1f} s; wrote {run} (samples: {run / 'samples.png'})")
    return run


# ------------------------------------------------------------------------------------------ sampling
def _default_labels(model, n: int) -> torch.Tensor | None:
    """A conditional model with no class asked draws every class in turn (one grid column each)."""
    return torch.arange(n) % model.num_classes if model.conditional else None


def _nrow(model, n: int) -> int:
    return model.num_classes if model.conditional and model.num_classes <= 16 else max(1, min(16, round(math.sqrt(n))))


@torch.no_grad()
def _sample_uint8(model, n: int, seed: int, labels: torch.Tensor | None, batch: int = 500, **opts: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch):
        k = min(batch, n - i)
        x = model.sample(k, generator=g, labels=None if labels is None else labels[i : i + k], **opts)
        out.append(x.mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu())
    return torch.cat(out)


def make_grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """A uint8 (C, H, W) grid of a uint8 batch (torchvision's make_grid, 2 px black gaps)."""
    from torchvision.utils import make_grid as tv_grid

    return tv_grid(images, nrow=nrow, padding=2, pad_value=0)


def _png(img: torch.Tensor, path: Path) -> None:
    from PIL import Image

    arr = img.permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    atomic_write(path, lambda t: pil.save(t, format="PNG"))


def write_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    """Write a uint8 batch as one PNG grid."""
    _png(make_grid(images, nrow), Path(path))
    return Path(path)


class Generator:
    """A trained generative model, ready to sample. Get one with ``recogen.load(RUN)``.

    >>> gen = recogen.load("runs/generate/digits")
    >>> imgs = gen.sample(16, seed=0, class_=3)   # uint8 (16, C, H, W)
    """

    task = TASK

    def __init__(self, model: nn.Module, card: dict[str, Any], path: Path | None = None):
        self.model, self.card, self.path = model, card, path
        self.classes: list[str] = card["classes"]
        self.conditional: bool = bool(card.get("conditional"))

    def class_index(self, class_: int | str) -> int:
        """The index of a class given by index or name; errors name the valid ones."""
        if not self.conditional:
            raise ConfigError("this model is unconditional: drop --class, or train one with --conditional")
        if isinstance(class_, str) and class_ in self.classes:
            return self.classes.index(class_)
        try:
            k = int(class_)
        except (TypeError, ValueError):
            raise ConfigError(f"unknown class {class_!r}; the model's classes are {', '.join(self.classes)}") from None
        if not 0 <= k < len(self.classes):
            raise ConfigError(f"class {class_!r} out of range; the model's classes are {', '.join(self.classes)} "
                              f"(indices 0..{len(self.classes) - 1})")
        return k

    def sample(self, n: int = 64, seed: int = 0, class_: int | str | None = None, **opts: Any) -> torch.Tensor:
        """``n`` samples as uint8 (N, C, H, W); the same seed gives the same images.

        ``class_`` (index or name) asks a conditional model for one class; without it a conditional
        model draws the classes in turn. ``opts`` go to the sampler (``steps``, ``guidance`` for ddpm).
        """
        if not isinstance(n, int) or n < 1 or n > 100_000:
            raise ConfigError(f"--n must be an integer from 1 to 100000, got {n!r}")
        import inspect

        takes = set(inspect.signature(self.model.sample).parameters) - {"n", "generator", "labels", "opts"}
        for k in set(opts) - takes:
            raise ConfigError(f"--{k} does not apply to {self.card['model']} (only to ddpm)")
        if class_ is not None:
            labels = torch.full((n,), self.class_index(class_), dtype=torch.long)
        else:
            labels = _default_labels(self.model, n)
        return _sample_uint8(self.model, n, seed, labels, **opts)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """VAE only: decode the posterior mean of uint8 images (N, C, H, W) at the model's size."""
        if not hasattr(self.model, "reconstruct"):
            raise ModelError(f"{self.card['model']} cannot reconstruct images; only vae encodes them")
        return self.model.reconstruct(images.float() / 255).mul(255).round().clamp(0, 255).to(torch.uint8)

    def nrow(self, n: int) -> int:
        return _nrow(self.model, n)


def sample(run: str | Path, n: int = 64, seed: int = 0, class_: int | str | None = None, out: str | Path | None = None,
           **opts: Any) -> Path:
    """Sample a trained run and write PNGs: ``out`` ending in .png gets the grid; otherwise ``out``
    is a folder that gets one PNG per sample (``0000.png``...) plus ``grid.png``. Returns ``out``.

    >>> sample("runs/generate/digits", n=64, seed=0, out="grid.png")
    """
    gen = load(run)
    out = Path(out) if out is not None else Path(run) / f"samples_seed{seed}.png"
    imgs = gen.sample(n, seed=seed, class_=class_, **opts)
    if out.suffix.lower() == ".png":
        return write_grid(imgs, out, gen.nrow(n))
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder or a path ending in .png")
    out.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(n - 1)))
    for i, img in enumerate(imgs):
        _png(img, out / f"{i:0{width}d}.png")
    write_grid(imgs, out / "grid.png", gen.nrow(n))
    return out


def load(path: str | Path, device: str = "cpu", backend: str = "torch") -> Generator:
    """Load a trained generator from a run folder or a ``model.json`` (PyTorch only: no export format yet)."""
    if backend != "torch":
        raise ConfigError(f"generators run only with the torch backend, not {backend!r} (they have no export yet)")
    model, card = load_portable(path, device)
    if card.get("task") != TASK:
        raise RunError(f"{path} holds a {card.get('task')} model, not a generator")
    p = Path(path)
    return Generator(model, card, p if p.is_dir() else p.parent)


# ---------------------------------------------------------------------------------------- evaluate
# Below this many real images FID, KID and precision/recall are noisy and biased (FID by ~1/N), so
# `generate eval` says so in its output and metrics.json.
MIN_REAL = 1000


def reference_images(splits: ImageSplits, split: str | None, n: int) -> tuple[torch.Tensor, str, list[str]]:
    """The real images ``generate eval`` compares with: ``(images, split name, notes)``.

    ``split`` given: that split. Otherwise only images the generator never trained on, as many as
    ``n`` asks for where the data has them: the test split, joined by the val split when the test
    split has fewer than ``n`` images (``"test+val"``), or the val split alone when there is no test
    split. A generator's val split is held out too: it is neither trained on nor used to pick a
    checkpoint (the last epoch is kept). The training split is never chosen by default: FID against a
    generator's own training images rewards memorising them.
    """
    notes: list[str] = []
    if split is not None:
        if split == "train":
            notes.append(f"{splits.name} train: the generator trained on these images, so these figures reward "
                         "memorising them; leave out --split to compare with held-out images")
        return splits.split(split).images, split, notes
    if splits.test is None:
        names = ["val"]
        notes.append(f"{splits.name} has no test split; the real images are its VALIDATION split (held out: not "
                     "trained on, no checkpoint chosen by it)")
    else:
        names = ["test"] if len(splits.test) >= n else ["test", "val"]
    return torch.cat([splits.split(s).images for s in names]), "+".join(names), notes


def evaluate(run: str | Path, features: str, features_weights: str | Path | None = None, n: int = 1000, seed: int = 0,
             split: str | None = None, write: bool = True, device: str = "cpu", **sample_opts: Any) -> dict[str, Any]:
    """FID/KID/precision/recall of ``n`` samples against real images the generator never trained on
    (:func:`reference_images`: test, then test+val, up to ``n`` of them) in the feature space
    ``features`` (``classifier:RUN`` or ``inception``), with the real-vs-real floor
    (``recogen.metrics.generation``). Precision/recall compare equal numbers of generated and real
    images. The metrics name the split(s) (``split``, ``held_out``) and the counts; fewer than
    :data:`MIN_REAL` real images add a ``warning`` (also logged). Writes ``metrics.json`` when ``write``.
    ``sample_opts`` go to the sampler (``steps``, ``sampler`` for ddpm) and are saved with the metrics.
    """
    from ..metrics.generation import evaluate_generator
    from ..metrics.heldout import add_warnings
    from ..utils import write_json

    run = Path(run)
    gen = load(run, device)
    if not (run / "config.yaml").is_file():
        raise RunError(f"{run} has no config.yaml; evaluate a run folder made by `recogen generate train`")
    if write:
        # Before any data is loaded.
        common.check_writable_folder(run, "run folder", "pass --no-write to only print the metrics, or make it writable")
    cfg = common.load_run_config(GenerateConfig, run)
    splits = _load_data(cfg)
    asked = split
    real, split, notes = reference_images(splits, asked, n)
    m = evaluate_generator(lambda k, s: gen.sample(k, seed=s, **sample_opts), real, features, n=n, seed=seed,
                           weights_path=features_weights, device=device)
    if m["n_real"] < MIN_REAL:
        why = f"--n {n}" if len(real) >= n else f"{cfg.data} {split} holds {len(real)}" + (
            "; its training images are left out, the generator saw them" if asked is None else "")
        notes.append(f"only {m['n_real']} real images ({why}); FID, KID and precision/recall from fewer than "
                     f"{MIN_REAL:,} are noisy and biased: compare runs only at the same n, and against the floor")
    metrics = add_warnings({"task": TASK, "model": gen.card["model"], "data": cfg.data, "split": split,
                            "held_out": split != "train", **m, "sample_options": sample_opts}, notes)
    if write:
        write_json(run / "metrics.json", metrics)
    return metrics


def print_metrics(m: dict[str, Any]) -> None:
    """The human summary of :func:`evaluate`."""
    ratio = f"{m['fid_ratio']:.2f}x the floor" if m.get("fid_ratio") is not None else "floor is 0"
    print(f"{m['model']} on {m['data']} {m['split']}: {m['n_fake']} samples vs {m['n_real']} real images "
          f"({'held out' if m.get('held_out', True) else 'NOT held out'}), features {m['features']}")
    print(f"FID {m['fid']:.3f} (real-vs-real floor {m['fid_floor']:.3f}; {ratio})")
    print(f"KID {m['kid_mean']:.5f} +- {m['kid_std']:.5f} (floor {m['kid_floor']:.5f})")
    n_pr = f"; {m['n_pr']} samples vs {m['n_pr']} real" if "n_pr" in m else ""
    print(f"precision {m['precision']:.3f} recall {m['recall']:.3f} (floor {m['precision_floor']:.3f} / "
          f"{m['recall_floor']:.3f}{n_pr})")
    print(f"sampling took {m['sample_seconds']:.1f} s")
