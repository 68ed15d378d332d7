"""The four edits (the CLI's ``recogen edit ...`` calls these). Each reads its inputs at the model's
size and channels, runs the family's :class:`~recogen.edit.base.Editor`, and writes the result PNG
and a before/after strip. The same ``seed`` gives the same bytes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError, RunError
from ..data.images import write_png
from .base import to_float, to_uint8
from .families import get_editor
from .io import load_generator, out_paths, read_image, read_mask, row

GREY = 128  # how the hole to fill is shown in the inpainting strip


@dataclass
class EditResult:
    """What an edit made: ``images`` uint8 (N, C, H, W), the result PNG ``path``, the ``strip`` PNG."""

    images: torch.Tensor
    path: Path
    strip: Path
    info: dict[str, Any] = field(default_factory=dict)


def _setup(run: Any, opts: dict[str, Any]):
    gen = load_generator(run)
    return gen, get_editor(gen, **opts)


def _write(result: torch.Tensor, strip: torch.Tensor, out: Any, gen, op: str, **info: Any) -> EditResult:
    """Write ``result`` (one image as is, several as a row) and ``strip`` (a row); return both paths."""
    path, strip_path = out_paths(out, gen.path, op)
    write_png(result[0] if len(result) == 1 else row(result), path)
    write_png(row(strip), strip_path)
    return EditResult(result, path, strip_path, {"op": op, "model": gen.card["model"], **info})


def _check_range(name: str, v: float, lo: float, hi: float) -> None:
    if not lo <= v <= hi:
        raise ConfigError(f"--{name} must be from {lo:g} to {hi:g}, got {v:g}")


# ------------------------------------------------------------------------------------------- edits
def interpolate(run: Any, a: Any, b: Any, steps: int = 8, out: Any = None, seed: int = 0, **opts: Any) -> EditResult:
    """Frames along the latent path from image ``a`` to image ``b`` (``steps`` frames, ends included).

    VAE: slerp between the encoder means; GAN: slerp between latents found by search; diffusion:
    slerp between DDIM-inverted noises, each frame DDIM-decoded. A conditional VAE/GAN also moves
    its class embedding from a's class to b's. The result is the row of frames; the strip is
    ``a | frames | b``. ``opts`` are the family's editing options (e.g. ``search_steps`` for a GAN).

    >>> res = interpolate("runs/generate/vae", "a.png", "b.png", steps=8, out="ab.png")
    >>> res.images.shape        # (8, C, H, W) uint8
    """
    if not isinstance(steps, int) or not 2 <= steps <= 64:
        raise ConfigError(f"--steps must be an integer from 2 to 64, got {steps!r}")
    gen, ed = _setup(run, opts)
    imgs = torch.cat([read_image(a, gen.card), read_image(b, gen.card)])
    g = torch.Generator().manual_seed(seed)
    z, y = ed.invert(to_float(imgs), g)
    t = torch.linspace(0, 1, steps)
    zs = ed.path(z[:1], z[1:], t).flatten(0, 1)
    if y is None or int(y[0]) == int(y[1]):
        frames = ed.decode(zs, None if y is None else y[:1].expand(steps))
    else:
        frames = torch.cat([ed.decode_between(zs[k : k + 1], int(y[0]), int(y[1]), float(t[k])) for k in range(steps)])
    frames = to_uint8(frames)
    return _write(frames, torch.cat([imgs[:1], frames, imgs[1:]]), out, gen, "interpolate", steps=steps, seed=seed)


def inpaint(run: Any, image: Any, mask: Any, out: Any = None, seed: int = 0, **opts: Any) -> EditResult:
    """Fill the white region of ``mask`` (same size as ``image``; white = fill, black = keep).

    Diffusion: RePaint on DDIM steps; VAE: encode-decode-paste iterations; GAN: latent search on
    the known pixels. The known pixels are kept exactly. The strip is ``input | hole | result``.

    >>> inpaint("runs/generate/ddpm", "digit.png", mask="hole.png", out="filled.png").images
    """
    gen, ed = _setup(run, opts)
    img = read_image(image, gen.card)
    fill = read_mask(mask, image, gen.card)
    res = to_uint8(ed.inpaint(to_float(img), fill, torch.Generator().manual_seed(seed)))
    res = torch.where(fill, res, img)  # exactly the input's pixels outside the hole, after rounding too
    holed = torch.where(fill, torch.full_like(img, GREY), img)
    return _write(res, torch.cat([img, holed, res]), out, gen, "inpaint", seed=seed,
                  filled_fraction=float(fill.float().mean()))


def vary(run: Any, image: Any, strength: float = 0.5, n: int = 4, seed: int = 0, out: Any = None, **opts: Any) -> EditResult:
    """``n`` variations of ``image``; ``strength`` 0 keeps the image, 1 is an unrelated sample.

    Diffusion: SDEdit (noise to t = strength * T, DDIM back; strength 0 returns the input itself);
    VAE and GAN: the image's latent (encoder mean, searched z) mixed with fresh prior noise,
    ``cos(s pi/2) z + sin(s pi/2) eps`` (strength 0 is the reconstruction).
    The result is the row of variations; the strip is ``input | variations``.

    >>> vary("runs/generate/ddpm", "digit.png", strength=0.5, n=4, seed=0, out="vars.png").images
    """
    _check_range("strength", float(strength), 0.0, 1.0)
    if not isinstance(n, int) or not 1 <= n <= 64:
        raise ConfigError(f"--n must be an integer from 1 to 64, got {n!r}")
    gen, ed = _setup(run, opts)
    img = read_image(image, gen.card)
    res = to_uint8(ed.vary(to_float(img), float(strength), n, torch.Generator().manual_seed(seed)))
    return _write(res, torch.cat([img, res]), out, gen, "vary", strength=float(strength), seed=seed)


def attribute(run: Any, image: Any, from_: Any, to: Any, amount: float = 1.0, data: str | None = None,
              per_class: int = 32, out: Any = None, seed: int = 0, **opts: Any) -> EditResult:
    """Move ``image`` from class ``from_`` towards class ``to`` by ``amount`` (0 = reconstruction).

    Unconditional models: latent arithmetic, ``z + amount * (mean z of class to - mean z of class
    from)``, the means over ``per_class`` training images of each class (the run's own data set,
    rebuilt from its ``config.yaml``, or ``data``); latents are VAE encoder means, GAN search results
    or DDIM-inverted noises. Conditional models swap the class instead: the image is inverted as
    ``from_`` and decoded with the class moved ``amount`` of the way to ``to``. The strip is
    ``input | reconstruction | result``.

    >>> attribute("runs/generate/vae", "three.png", "3", "8", amount=1.0, out="eight.png").images
    """
    _check_range("amount", float(amount), -3.0, 3.0)
    gen, ed = _setup(run, opts)
    img = read_image(image, gen.card)
    x, g = to_float(img), torch.Generator().manual_seed(seed)
    if gen.conditional:
        if data is not None:
            raise ConfigError("--data does not apply to a conditional model: it swaps the class it decodes under")
        a, b = _class_pair(gen.classes, from_, to, "the model")
        z, _ = ed.invert(x, g, torch.full((len(x),), a, dtype=torch.long))  # the image taken as class a
        recon, res = ed.decode_between(z, a, b, 0.0), ed.decode_between(z, a, b, float(amount))
        info = {"mode": "class swap"}
    else:
        images, labels, classes, source = _labelled(gen, data)
        a, b = _class_pair(classes, from_, to, f"data set {source}")
        if not isinstance(per_class, int) or per_class < 1:
            raise ConfigError(f"--per-class must be a positive integer, got {per_class!r}")
        means = []
        for k in (a, b):
            group = images[labels == k][:per_class]
            if not len(group):
                raise DataError(f"no images of class {classes[k]!r} in {source}; choose classes that have images")
            means.append(ed.invert(to_float(group), g)[0].mean(0, keepdim=True))
        z, y = ed.invert(x, g)
        direction = means[1] - means[0]
        recon, res = ed.decode(z, y), ed.decode(z + float(amount) * direction, y)
        info = {"mode": "latent arithmetic", "direction_norm": float(direction.norm()), "per_class": per_class}
    recon, res = to_uint8(recon), to_uint8(res)
    return _write(res, torch.cat([img, recon, res]), out, gen, "attribute", amount=float(amount), seed=seed,
                  **{"from": str(from_), "to": str(to)}, **info)


# --------------------------------------------------------------------------------------- helpers
def _class_pair(classes: list[str], a: Any, b: Any, whose: str) -> tuple[int, int]:
    ia, ib = _class_index(classes, a, whose), _class_index(classes, b, whose)
    if ia == ib:
        raise ConfigError(f"--from and --to are the same class ({classes[ia]!r}); give two different classes")
    return ia, ib


def _class_index(classes: list[str], c: Any, whose: str) -> int:
    """A class by name, else by index; errors list the valid names."""
    if str(c) in classes:
        return classes.index(str(c))
    try:
        k = int(c)
    except (TypeError, ValueError):
        k = -1
    if 0 <= k < len(classes):
        return k
    raise ConfigError(f"unknown class {c!r}; the classes of {whose} are {', '.join(classes)}")


def _labelled(gen, data: str | None) -> tuple[torch.Tensor, torch.Tensor, list[str], str]:
    """Training images (uint8, at the model's size) with labels: ``data``, or the run's own data set."""
    from ..config import GenerateConfig
    from ..data import DataOptions, create_dataset
    from ..tasks.runs import data_options, load_run_config

    if data is None:
        if gen.path is None or not (Path(gen.path) / "config.yaml").is_file():
            raise RunError(f"{gen.path} has no config.yaml to rebuild its data set from; pass --data DATA")
        cfg = load_run_config(GenerateConfig, Path(gen.path))
        # The same options as training (config.yaml holds the resolved image size), so the same pixels.
        splits, source = create_dataset(cfg.data, data_options(cfg)), cfg.data
    else:
        opts = DataOptions(image_size=gen.card["image_size"], channels=gen.card["in_chans"])
        splits, source = create_dataset(data, opts), data
    ds = splits.train
    if len(splits.classes) < 2:
        raise DataError(f"{source} has {len(splits.classes)} class(es); attribute needs labelled data with 2+ classes")
    images = read_image(ds.images, gen.card) if tuple(ds.images.shape[1:]) != (
        gen.card["in_chans"], gen.card["image_size"], gen.card["image_size"]) else ds.images
    return images, ds.labels, list(splits.classes), source
