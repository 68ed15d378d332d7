"""Image generation: the task spec (registered as "generate") and its public functions train, evaluate,
load and sample.

VAE, GAN and diffusion train under one Lightning loop. Heavy parts load on first use: ``recipe``
(family defaults, data at the generation size), ``module`` (the LightningModule), ``sampling`` (the
:class:`Generator`, PNG grids, the service's parameters) and ``evaluation`` (FID/KID against real images).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from ...config import GenerateConfig
from .. import register_task
from ..spec import Task, lazy_attr

TASK = "generate"  # the task's name, as model cards hold it


class GenerateTask(Task):
    name = TASK
    help = "image generation (vae, dcgan, ddpm): train, sample, eval"
    noun = "generator"
    config = GenerateConfig
    monitor = None  # best.ckpt is the last epoch: a generator's losses do not rank its samples
    reserve_s = 5.0  # saving, samples.png and the report
    samples = True  # served as POST /v1/generate: draws images instead of reading one
    predictor = "recogen.tasks.generate.sampling:Generator"
    parts = ("sampling", "recipe", "evaluation", "module")

    def reserve(self, splits):
        return self.reserve_s, 1.0  # one validation pass: generation evaluates no test split after training

    def params_model(self):
        from .sampling import GenerateParams

        return GenerateParams

    def load_data(self, cfg):
        from .recipe import load_data

        return load_data(cfg)

    def resolve_defaults(self, cfg, splits):
        from .recipe import resolve_defaults

        return resolve_defaults(cfg, splits)

    def describe_data(self, cfg, splits):
        return (f"data {cfg.data}: {len(splits.train)} train / {len(splits.val)} val images, {len(splits.classes)} "
                f"classes, {cfg.image_size}x{cfg.image_size}x{cfg.channels}")

    def batches(self, cfg, splits):
        from ...data.batches import EpochSeeded, TensorBatches

        train = EpochSeeded(TensorBatches(splits.train, cfg.batch_size, shuffle=True, drop_last=True, seed=cfg.seed))
        return train, TensorBatches(splits.val, 256)

    def build_module(self, model, cfg, splits, train_batches):
        from .module import GenerativeModule

        return GenerativeModule(model, cfg, splits.hflip_ok, cfg.epochs * len(train_batches))

    def finalize_model(self, model, cfg, splits):
        """A VAE's ``gmm`` prior is fitted to its training images' latents (models/generators/vae.py)."""
        fit = getattr(model, "fit_prior", None)
        if fit is not None:
            fit(splits.train.images, splits.train.labels, seed=cfg.seed)

    def card(self, cfg, model, splits):
        import torch

        return {"task": TASK, "model": cfg.model, "model_kwargs": cfg.model_kwargs, "classes": splits.classes,
                "image_size": cfg.image_size, "in_chans": cfg.channels, "conditional": cfg.conditional,
                "data": cfg.data, "pixel_range": [0, 255],
                # the class mix that samples without --class follow (sampling.default_labels)
                "class_counts": torch.bincount(splits.train.labels, minlength=len(splits.classes)).tolist()}

    def finish(self, model, card, splits, run, cfg):
        """``samples.png``: 64 samples, seed 0."""
        from .sampling import Generator, write_grid

        gen = Generator(model, card, run)
        path = write_grid(gen.sample(64, seed=0), run / "samples.png", gen.nrow(64))
        return f"samples: {path}"

    def evaluate(self, run: str | Path, features: str, features_weights: str | Path | None = None, n: int = 1000,
                 seed: int = 0, split: str | None = None, write: bool = True, device: str = "cpu",
                 **sample_opts: Any) -> dict[str, Any]:
        from .evaluation import evaluate

        return evaluate(run, features, features_weights, n=n, seed=seed, split=split, write=write, device=device,
                        **sample_opts)

    def format_metrics(self, m):
        ratio = f"{m['fid_ratio']:.2f}x the floor" if m.get("fid_ratio") is not None else "floor is 0"
        n_pr = f"; {m['n_pr']} samples vs {m['n_pr']} real" if "n_pr" in m else ""
        return "\n".join([
            f"{m['model']} on {m['data']} {m['split']}: {m['n_fake']} samples vs {m['n_real']} real images "
            f"({'held out' if m.get('held_out', True) else 'NOT held out'}), features {m['features']}",
            f"FID {m['fid']:.3f} (real-vs-real floor {m['fid_floor']:.3f}; {ratio})",
            f"KID {m['kid_mean']:.5f} +- {m['kid_std']:.5f} (floor {m['kid_floor']:.5f})",
            f"precision {m['precision']:.3f} recall {m['recall']:.3f} (floor {m['precision_floor']:.3f} / "
            f"{m['recall_floor']:.3f}{n_pr})",
            f"sampling took {m['sample_seconds']:.1f} s"])

    def add_actions(self, actions, parser_class) -> bool:
        """``generate sample``, ``generate eval`` (generation has no predict) and the pipeline capabilities
        of the "generate" group (``generate text2img``: :mod:`recogen.pipelines`)."""
        sa = actions.add_parser("sample", help="draw samples: a PNG grid, or a folder of PNGs plus grid.png")
        sa.add_argument("run", help="run folder or model.json")
        sa.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
        sa.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        sa.add_argument("--class", dest="class_", metavar="CLASS", help="class name or index (conditional models)")
        sa.add_argument("--out", metavar="PATH", help="PATH.png: the grid; otherwise a folder (default RUN/samples_seedS.png)")
        _add_sampler_flags(sa)
        sa.set_defaults(func=_cmd_sample)

        ev = actions.add_parser("eval", help="FID, KID, precision/recall against held-out real images, with the real-vs-real floor")
        ev.add_argument("run", help="run folder")
        ev.add_argument("--features", required=True, metavar="NAME[:ARG]",
                        help="feature extractor: classifier:RUN (a recogen classifier run) or inception")
        ev.add_argument("--features-weights", metavar="PATH", help="local weights file of the extractor (inception)")
        ev.add_argument("--n", type=int, default=1000,
                        help="generated images, and at most this many real ones (default 1000; fewer than 1000 real is warned about)")
        ev.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        ev.add_argument("--split", choices=["train", "val", "test"],
                        help="real images to compare with (default: test, joined by val when test has fewer than --n; never train)")
        ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
        ev.add_argument("--no-write", action="store_true", help="do not write metrics.json")
        _add_sampler_flags(ev)
        ev.set_defaults(func=_cmd_eval)

        from ...pipelines.cli import add_actions as add_pipeline_actions

        add_pipeline_actions(actions, "generate", parser_class)  # text2img: published diffusers pipelines
        return True

    def model_info(self, card):
        return {"conditional": bool(card.get("conditional"))}


SPEC = register_task(GenerateTask)


# ------------------------------------------------------------------------------------- CLI actions
def _add_sampler_flags(p) -> None:
    p.add_argument("--steps", type=int, help="sampling steps (ddpm; default: the model's)")
    p.add_argument("--sampler", choices=["ddim", "dpm++"], help="ddpm sampler (default: the model's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (conditional ddpm)")


def _sampler_options(ns) -> dict[str, Any]:
    """The sampler flags given on the command line (the model's saved defaults fill the rest)."""
    return {k: getattr(ns, k) for k in ("steps", "sampler", "guidance") if getattr(ns, k, None) is not None}


def _cmd_sample(ns) -> int:
    out = sample(ns.run, n=ns.n, seed=ns.seed, class_=ns.class_, out=ns.out, **_sampler_options(ns))
    print(f"wrote {ns.n} sample(s) to {out}")
    return 0


def _cmd_eval(ns) -> int:
    m = evaluate(ns.run, features=ns.features, features_weights=ns.features_weights, n=ns.n, seed=ns.seed,
                 split=ns.split, write=not ns.no_write, **_sampler_options(ns))
    print(json.dumps(m, indent=2) if ns.json else SPEC.format_metrics(m))
    return 0


# ---------------------------------------------------------------------------- the public functions
def train(config: GenerateConfig | dict | str | Path | None = None, callbacks: Iterable | None = None,
          **options: Any) -> Path:
    """Train a generative model and return its run folder.

    The folder gets ``config.yaml`` (resolved), ``checkpoints/{best,last}.ckpt`` (best is the last
    epoch: a generator's losses do not rank its samples), ``tensorboard/`` (scalars and a sample
    grid per epoch), ``history.json``, the portable ``model.safetensors`` + ``model.json``,
    ``samples.png`` (64 samples, seed 0) and ``report.html``.

    >>> run = train(model="dcgan", data="digits", out="runs/generate/digits")
    """
    return SPEC.train(config, callbacks, **options)


def evaluate(run: str | Path, features: str, features_weights: str | Path | None = None, n: int = 1000, seed: int = 0,
             split: str | None = None, write: bool = True, device: str = "cpu", **sample_opts: Any) -> dict[str, Any]:
    """FID/KID/precision/recall of ``n`` samples against real images the generator never trained on
    (``reference_images``: test, then test+val, up to ``n`` of them) in the feature space
    ``features`` (``classifier:RUN`` or ``inception``), with the real-vs-real floor
    (``recogen.metrics.generation``). Precision/recall compare equal numbers of generated and real
    images. The metrics name the split(s) (``split``, ``held_out``) and the counts; fewer than
    ``MIN_REAL`` (1000) real images add a ``warning`` (also logged). Writes ``metrics.json`` when ``write``.
    ``sample_opts`` go to the sampler (``steps``, ``sampler`` for ddpm) and are saved with the metrics.
    """
    return SPEC.evaluate(run, features, features_weights, n=n, seed=seed, split=split, write=write, device=device,
                         **sample_opts)


def load(path: str | Path, device: str = "cpu", backend: str = "torch"):
    """Load a trained :class:`Generator` from a run folder or a ``model.json`` (PyTorch only: no export format yet)."""
    return SPEC.load(path, device, backend)


def sample(run: str | Path, n: int = 64, seed: int = 0, class_: int | str | None = None, out: str | Path | None = None,
           **opts: Any) -> Path:
    """Sample a trained run and write PNGs: ``out`` ending in .png gets the grid; otherwise ``out``
    is a folder that gets one PNG per sample (``0000.png``...) plus ``grid.png``. Returns ``out``.

    >>> sample("runs/generate/digits", n=64, seed=0, out="grid.png")
    """
    from .sampling import sample as write_samples

    return write_samples(run, n=n, seed=seed, class_=class_, out=out, **opts)


def __getattr__(name: str) -> Any:  # the heavy modules load on first use of one of their names
    return lazy_attr(__name__, GenerateTask.parts, name)
