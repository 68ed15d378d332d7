"""Sampling a trained generator: the :class:`Generator` predictor, PNG grids, ``sample`` and the service's
parameters."""
from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from pydantic import ConfigDict, Field

from ...data.images import write_png
from ...errors import ConfigError, ModelError, RunError
from ...models.generators.base import sample_uint8
from ..params import Params
from ..predictor import Predictor


def default_labels(model, n: int, class_counts: list[int] | None = None) -> torch.Tensor | None:
    """The classes a conditional model draws when none is asked: the training images' class mix
    (``class_counts``, from the model card), every class in turn when the classes are equally common or
    the mix is unknown (one grid column each). None for an unconditional model."""
    if not model.conditional:
        return None
    if not class_counts or len(set(class_counts)) == 1 or len(class_counts) != model.num_classes:
        return torch.arange(n) % model.num_classes
    # n draws in proportion to the counts, deterministically (the i-th of n evenly spaced quantiles)...
    cum = torch.tensor(class_counts, dtype=torch.float64).cumsum(0)
    labels = torch.searchsorted(cum / cum[-1], (torch.arange(n, dtype=torch.float64) + 0.5) / n).clamp_(max=len(cum) - 1)
    # ...interleaved: the j-th of a class's k draws goes to position (j + 0.5) / k, so near-equal classes
    # still come in turn (and a grid keeps about one column per class).
    per = torch.bincount(labels, minlength=len(class_counts)).double()
    rank = torch.cat([torch.arange(int(c), dtype=torch.float64) for c in per])  # labels are sorted by class
    key = (rank + 0.5) / per[labels] + labels.double() * 1e-9
    return labels[key.argsort()]


def grid_nrow(model, n: int) -> int:
    """Images per grid row: one column per class of a conditional model, else a square-ish grid."""
    return model.num_classes if model.conditional and model.num_classes <= 16 else max(1, min(16, round(math.sqrt(n))))


def make_grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """A uint8 (C, H, W) grid of a uint8 batch (torchvision's make_grid, 2 px black gaps)."""
    from torchvision.utils import make_grid as tv_grid

    return tv_grid(images, nrow=nrow, padding=2, pad_value=0)


def write_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> Path:
    """Write a uint8 batch as one PNG grid."""
    return write_png(make_grid(images, nrow), path)


class Generator(Predictor):
    """A trained generative model, ready to sample. Get one with ``recogen.load(RUN)``.

    >>> gen = recogen.load("runs/generate/digits")
    >>> imgs = gen.sample(16, seed=0, class_=3)   # uint8 (16, C, H, W)
    """

    task = "generate"

    def __init__(self, model, card: dict[str, Any], path: Path | None = None):
        super().__init__(model, card, path)
        self.conditional: bool = bool(card.get("conditional"))

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", backend: str = "torch",
             card: dict[str, Any] | None = None) -> "Generator":
        """Load from a run folder or a ``model.json`` (PyTorch only: generators have no export yet)."""
        if backend != "torch":
            raise ConfigError(f"generators run only with the torch backend, not {backend!r} (they have no export yet)")
        return super().load(path, device, backend, card)

    def evaluate(self, features: str, **kw: Any) -> dict[str, Any]:
        """FID/KID/precision/recall of the run it came from, without writing files; see ``recogen generate eval``."""
        from .. import get_task

        if self.path is None:
            raise RunError("this generator was not loaded from a run folder; evaluate a run folder instead")
        return get_task(self.task).evaluate(self.path, features, write=False, **kw)

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
        model draws the classes in the training images' proportions (in turn when they are equal). ``opts`` go to the sampler (``steps``, ``guidance`` for ddpm).
        """
        if not isinstance(n, int) or n < 1 or n > 100_000:
            raise ConfigError(f"--n must be an integer from 1 to 100000, got {n!r}")
        takes = set(inspect.signature(self.model.sample).parameters) - {"n", "generator", "labels", "opts"}
        for k in set(opts) - takes:
            raise ConfigError(f"--{k} does not apply to {self.card['model']} (only to ddpm)")
        if class_ is not None:
            labels = torch.full((n,), self.class_index(class_), dtype=torch.long)
        else:
            labels = default_labels(self.model, n, self.card.get("class_counts"))
        return sample_uint8(self.model, n, seed, labels, **opts)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """VAE only: decode the posterior mean of uint8 images (N, C, H, W) at the model's size."""
        if not hasattr(self.model, "reconstruct"):
            raise ModelError(f"{self.card['model']} cannot reconstruct images; only vae encodes them")
        return self.model.reconstruct(images.float() / 255).mul(255).round().clamp(0, 255).to(torch.uint8)

    def nrow(self, n: int) -> int:
        """Images per grid row: one column per class of a conditional model, else about square."""
        return grid_nrow(self.model, n)

    def grid(self, images: torch.Tensor) -> torch.Tensor:
        """One uint8 (C, H, W) grid of ``images`` (as ``sample`` returns them)."""
        return make_grid(images, self.nrow(len(images)))


def sample(run: str | Path, n: int = 64, seed: int = 0, class_: int | str | None = None, out: str | Path | None = None,
           **opts: Any) -> Path:
    """Sample a trained run and write PNGs: ``out`` ending in .png gets the grid; otherwise ``out``
    is a folder that gets one PNG per sample (``0000.png``...) plus ``grid.png``. Returns ``out``.

    >>> sample("runs/generate/digits", n=64, seed=0, out="grid.png")
    """
    gen = Generator.load(run)
    out = Path(out) if out is not None else Path(run) / f"samples_seed{seed}.png"
    imgs = gen.sample(n, seed=seed, class_=class_, **opts)
    if out.suffix.lower() == ".png":
        return write_grid(imgs, out, gen.nrow(n))
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder or a path ending in .png")
    out.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(n - 1)))
    for i, img in enumerate(imgs):
        write_png(img, out / f"{i:0{width}d}.png")
    write_grid(imgs, out / "grid.png", gen.nrow(n))
    return out


class GenerateParams(Params):
    """``POST /v1/generate`` parameters."""

    model_config = ConfigDict(populate_by_name=True)
    n: int = Field(16, ge=1, le=10_000, description="number of images (at most the server's --max-generate)")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="random seed: the same seed gives the same images")
    class_: Optional[str] = Field(None, alias="class", max_length=200,
                                  description="class name or index (conditional models); default: every class in turn")
    format: Literal["png", "json"] = Field("png", description="png: one PNG grid; json: base64 PNGs of the grid and each image")
