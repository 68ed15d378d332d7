"""Real photographs that work offline: ``textures`` (which photo is this crop from?) and ``faces``.

Both read the files scikit-image (BSD-3) bundles in its wheel, directly from its ``data`` folder: no
download is ever attempted and ``skimage`` itself is not imported. The images' own terms:

* ``textures``: brick, grass, gravel (CC0Textures, CC0); camera (Lav Varshney, CC0); coffee (Rachel
  Michetti, CC0); chelsea (Stefan van der Walt, CC0); astronaut (NASA, public domain); rocket (SpaceX,
  public domain); hubble_deep_field (NASA, public domain); cell (CC0). One class per photograph.
* ``faces``: scikit-image's ``lfw_subset``: 100 faces from Labeled Faces in the Wild (G. B. Huang,
  M. Ramesh, T. Berg, E. Learned-Miller, "Labeled Faces in the Wild: A Database for Studying Face
  Recognition in Unconstrained Environments", UMass TR 07-49, 2007; LFW's own terms apply) and 100
  non-face crops from the same photographs' backgrounds, all 25x25 gray.

Honest evaluation for ``textures``: every photograph is cut into a fixed 5x5 grid of tiles; the tiles
on the diagonal give only test crops, the next diagonal only validation crops, the other 15 only
training crops (:func:`source_tiles`). A crop never leaves its tile, so no test pixel is ever seen
in training. The test crops are drawn with a fixed seed (the same whatever ``--seed`` says).
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from . import DATASETS
from .base import DataOptions, ImageSet, ImageSplits, convert_channels, finish_splits

# class name -> (file in skimage/data, licence); all load offline (checked against skimage.data's loaders).
SOURCES: dict[str, tuple[str, str]] = {
    "brick": ("brick.png", "CC0 (CC0Textures Bricks25)"),
    "grass": ("grass.png", "CC0 (CC0Textures)"),
    "gravel": ("gravel.png", "CC0 (CC0Textures Gravel04)"),
    "camera": ("camera.png", "CC0, Lav Varshney"),
    "coffee": ("coffee.png", "CC0, Rachel Michetti"),
    "chelsea": ("chelsea.png", "CC0, Stefan van der Walt"),
    "astronaut": ("astronaut.png", "public domain, NASA"),
    "rocket": ("rocket.jpg", "public domain, SpaceX"),
    "hubble_deep_field": ("hubble_deep_field.jpg", "public domain, NASA"),
    "cell": ("cell.png", "CC0"),
}
GRID = 5  # tiles per side of each photograph
TEST_SEED = 20240  # the seed of the test crops: fixed, so the test split never moves with --seed
TEXTURE_TEST_PER_CLASS = 100
TEXTURE_DEFAULT_PER_CLASS = 360  # train + val crops per class (val = val_fraction of them)


def skimage_data_dir() -> Path:
    """scikit-image's bundled data folder, found without importing skimage; a clear error if absent."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("this data set reads scikit-image's bundled images: pip install scikit-image")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.lru_cache(maxsize=None)
def load_source(name: str) -> np.ndarray:
    """Photograph ``name`` of :data:`SOURCES` as uint8 (H, W) or (H, W, 3); read-only, cached."""
    if name not in SOURCES:
        raise DataError(f"unknown source photograph {name!r}; choose from {', '.join(SOURCES)}")
    path = skimage_data_dir() / SOURCES[name][0]
    if not path.is_file():
        raise DataError(f"scikit-image is installed but {path} is missing; reinstall it: pip install --force-reinstall scikit-image")
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im, dtype=np.uint8)
    arr.setflags(write=False)
    return arr


def to_gray(img: np.ndarray) -> np.ndarray:
    """uint8 gray with ITU-R 601 luma (as PIL and torchvision convert), no-op for gray input."""
    if img.ndim == 2:
        return img
    return np.rint(img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).clip(0, 255).astype(np.uint8)


def tile_role(row: int, col: int) -> str:
    """Which split tile (row, col) of the fixed GRID x GRID grid feeds: a Latin pattern, so every row
    and every column of a photograph gives each split some tiles."""
    return "test" if col == row else "val" if col == (row + 1) % GRID else "train"


def source_tiles(shape: tuple[int, ...], role: str | tuple[str, ...]) -> list[tuple[int, int, int, int]]:
    """The (y0, y1, x0, x1) tiles of a photograph of ``shape`` that belong to ``role`` (one or several)."""
    roles = (role,) if isinstance(role, str) else tuple(role)
    ys = np.linspace(0, shape[0], GRID + 1).round().astype(int)
    xs = np.linspace(0, shape[1], GRID + 1).round().astype(int)
    return [(int(ys[r]), int(ys[r + 1]), int(xs[c]), int(xs[c + 1]))
            for r in range(GRID) for c in range(GRID) if tile_role(r, c) in roles]


def random_crops(img: np.ndarray, tiles: list[tuple[int, int, int, int]], n: int, size: int,
                 rng: np.random.Generator, min_frac: float = 0.6) -> np.ndarray:
    """``n`` random square crops, each inside one of ``tiles`` (side ``min_frac``..1 of the tile's shorter
    side), resized to ``size`` with antialiasing: uint8 (n, size, size[, 3])."""
    from PIL import Image

    out = np.empty((n, size, size, *img.shape[2:]), dtype=np.uint8)
    for i in range(n):
        y0, y1, x0, x1 = tiles[int(rng.integers(len(tiles)))]
        short = min(y1 - y0, x1 - x0)
        side = int(rng.integers(max(1, int(round(min_frac * short))), short + 1))
        y = y0 + int(rng.integers(0, y1 - y0 - side + 1))
        x = x0 + int(rng.integers(0, x1 - x0 - side + 1))
        crop = Image.fromarray(np.ascontiguousarray(img[y:y + side, x:x + side]))
        out[i] = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
    return out


def texture_crops(role: str, per_class: int, size: int, seed: int | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` gray crops of every :data:`SOURCES` photograph from its ``role`` tiles:
    uint8 (N, 1, size, size) and labels int64 (N,), class k = the k-th source."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k, name in enumerate(SOURCES):
        gray = to_gray(load_source(name))
        xs.append(random_crops(gray, source_tiles(gray.shape, role), per_class, size, rng))
        ys.append(np.full(per_class, k, dtype=np.int64))
    return torch.from_numpy(np.concatenate(xs)).unsqueeze(1), torch.from_numpy(np.concatenate(ys))


def _count(name: str, arg: str | None, default: int, minimum: int) -> int:
    if not arg:
        return default
    try:
        n = int(arg)
    except ValueError:
        raise DataError(f"bad {name} count {arg!r}; use the form {name}:COUNT, e.g. {name}:{default}") from None
    if n < minimum:
        raise DataError(f"{name}:{n} is too few; use {name}:COUNT with COUNT >= {minimum}")
    return n


@DATASETS.register("textures", description="real photographs and textures (scikit-image, CC0/public domain): which of 10 "
                                            "photos is a crop from; 32 px gray, 360 train+val and 100 fixed test crops "
                                            "per class from disjoint tiles, offline")
def textures(arg: str | None, opts: DataOptions) -> ImageSplits:
    """``textures[:PER_CLASS]``: PER_CLASS train+val crops per class (default 360), 100 test crops per class.

    Gray by design: half the photographs are gray, so colour would give the class away; ``--channels 3``
    repeats the gray channel. ``opts.test_fraction`` is not used (the test crops are fixed).
    """
    per_class = _count("textures", arg, TEXTURE_DEFAULT_PER_CLASS, 10)
    size = opts.image_size or 32
    n_val = int(round(per_class * opts.val_fraction))
    if n_val < 1 or n_val >= per_class:
        raise DataError(f"textures:{per_class} with --val-fraction {opts.val_fraction} leaves no train or no val crops")
    # Train and val crops come from different tiles, so they are drawn separately (one seed, two streams).
    train_x, train_y = texture_crops("train", per_class - n_val, size, [opts.seed, 0])
    val_x, val_y = texture_crops("val", n_val, size, [opts.seed, 1])
    test_x, test_y = texture_crops("test", TEXTURE_TEST_PER_CLASS, size, [TEST_SEED, 2])
    if opts.limit is not None:
        keep = np.sort(np.random.default_rng(opts.seed).permutation(len(train_y))[: opts.limit])
        train_x, train_y = train_x[keep], train_y[keep]
    ch = lambda x: convert_channels(x, opts.channels)  # noqa: E731
    splits = ImageSplits("textures", list(SOURCES), ImageSet(ch(train_x), train_y), ImageSet(ch(val_x), val_y),
                         ImageSet(ch(test_x), test_y), hflip_ok=True)
    splits.notes.append("textures: train/val/test crops come from disjoint tiles of each photograph; test crops are fixed")
    return splits


@functools.lru_cache(maxsize=1)
def load_lfw_subset() -> np.ndarray:
    """scikit-image's ``lfw_subset``: uint8 (200, 25, 25); the first 100 are faces, the rest non-faces."""
    path = skimage_data_dir() / "lfw_subset.npy"
    if not path.is_file():
        raise DataError(f"scikit-image is installed but {path} is missing; reinstall it: pip install --force-reinstall scikit-image")
    x = np.load(path, allow_pickle=False)
    if x.shape != (200, 25, 25):
        raise DataError(f"{path} holds {x.shape}, not the expected (200, 25, 25) faces; reinstall scikit-image")
    out = np.rint(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)
    out.setflags(write=False)
    return out


@DATASETS.register("faces", description="face / non-face: 200 real 25x25 gray crops from Labeled Faces in the Wild "
                                         "(Huang et al. 2007, via scikit-image's lfw_subset), offline")
def faces(arg: str | None, opts: DataOptions) -> ImageSplits:
    if arg:
        raise DataError(f"faces takes no argument (got faces:{arg}); use --data faces")
    x = torch.from_numpy(load_lfw_subset().copy()).unsqueeze(1)
    y = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    return finish_splits("faces", ["face", "non-face"], x, y, opts, hflip_ok=True)
