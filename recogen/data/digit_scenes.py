"""``digit-scenes``: real handwritten digits on real photographs, for detection and segmentation.

Each scene is a dimmed, low-contrast crop of a scikit-image photograph (see :mod:`.real_images` for
sources and licences) with 1-4 MNIST digits (mnist-5k, :mod:`.mnist5k`; MNIST's terms apply) pasted
at 20-50% of the side, in a colour that contrasts with the background. Per digit: class 0..9, a
box tight around its visible stroke pixels (xyxy, pixel edges) and, in the semantic mask, class
k+1 on those pixels (0 = background). Stroke pixels are where the digit's gray value is >= 128.

Honest splits: test scenes use only digits of mnist-5k's fixed 1,000-image test set and only the
test tiles of each photograph, drawn with a fixed seed (the same whatever ``--seed`` says); the
other 4,000 digits are split (seeded, stratified) into train and val digits, and train/val scenes
use their own digits and their own tiles. No test digit or test pixel is ever seen in training.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..errors import DataError
from .base import DataOptions, convert_channels, stratified_split
from .dense import DENSE_DATASETS, DenseSet, DenseSplits
from .mnist5k import fixed_test_index, load_mnist5k
from .real_images import SOURCES, TEST_SEED, load_source, random_crops, source_tiles

DIGIT_CLASSES = [str(c) for c in range(10)]
DEFAULT_COUNT = 600
STROKE = 128  # gray value from which a digit pixel counts as stroke (mask and box)


@functools.lru_cache(maxsize=1)
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """mnist-5k, read once per process (a build reads it for every split)."""
    x, y = load_mnist5k()
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def digit_pools(seed: int, val_fraction: float) -> dict[str, np.ndarray]:
    """mnist-5k indices each split's scenes draw from: test = the fixed test index; the other 4,000
    split by ``val_fraction`` (seeded, stratified) into train and val."""
    _, labels = _mnist()
    test = fixed_test_index(labels)
    rest = np.setdiff1d(np.arange(len(labels)), test)
    train, val = stratified_split(labels[rest], (val_fraction,), seed)
    return {"train": rest[train], "val": rest[val], "test": test}


def _contrasting_colour(rng: np.random.Generator, level: float) -> np.ndarray:
    """A random RGB colour in [0, 1] whose luma differs from the background level by >= 0.4."""
    cand = rng.random((32, 3))
    luma = cand @ np.array([0.299, 0.587, 0.114])
    ok = np.flatnonzero(np.abs(luma - level) >= 0.4)
    if len(ok):
        return cand[ok[0]]
    return np.ones(3) if level < 0.5 else np.zeros(3)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection of two xyxy boxes over the smaller one's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return float(w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])))


def render_digit_scenes(n: int, size: int, seed, split: str, digit_index: np.ndarray, *, max_digits: int = 4,
                        min_frac: float = 0.2, max_frac: float = 0.5) -> tuple[DenseSet, list[np.ndarray]]:
    """``n`` scenes (3 channels, ``size`` px) with digits drawn from mnist-5k's ``digit_index`` and
    backgrounds from the ``split`` tiles of each photograph; also returns, per scene, the mnist-5k
    indices of its digits (in the order of its boxes)."""
    from PIL import Image

    digits, labels = _mnist()
    rng = np.random.default_rng(seed)
    names = list(SOURCES)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    all_boxes, all_labels, sources = [], [], []
    for i in range(n):
        # 1. Background: a crop of one photograph's split tiles, dimmed to low contrast around a random level.
        src = load_source(names[int(rng.integers(len(names)))])
        bg = random_crops(src, source_tiles(src.shape, split), 1, size, rng)[0].astype(np.float32) / 255.0
        bg = bg if bg.ndim == 3 else np.repeat(bg[..., None], 3, axis=2)  # gray photographs: gray backgrounds
        level = float(rng.uniform(0.15, 0.85))
        canvas = level + float(rng.uniform(0.2, 0.45)) * (bg - bg.mean())
        # 2. Digits: pasted one after another; a placement is redrawn when it would hide too much.
        inst = np.full((size, size), -1, dtype=np.int16)  # which digit owns each stroke pixel
        strokes: list[int] = []  # stroke pixel count per placed digit
        picked: list[int] = []
        placed: list[np.ndarray] = []  # each digit's full stroke box, before anything covers it
        for _ in range(int(rng.integers(1, max_digits + 1))):
            d = int(digit_index[int(rng.integers(len(digit_index)))])
            # MNIST digits fill about 20 of their 28 px: scale the cell so the digit is min..max_frac of the side.
            cell = min(size, max(8, int(round(rng.uniform(min_frac, max_frac) * size * 28 / 20))))
            alpha = np.asarray(Image.fromarray(digits[d]).resize((cell, cell), Image.Resampling.BILINEAR))
            stroke = alpha >= STROKE
            if not stroke.any():
                continue
            rs, cs = np.nonzero(stroke)
            visible = np.bincount(inst[inst >= 0], minlength=len(strokes))
            for _try in range(10):
                y, x = (int(v) for v in rng.integers(0, size - cell + 1, size=2))
                box = np.array([x + cs.min(), y + rs.min(), x + cs.max() + 1, y + rs.max() + 1], dtype=np.float64)
                owners = inst[y:y + cell, x:x + cell][stroke]
                hidden = np.bincount(owners[owners >= 0], minlength=len(strokes))
                # Overlap allowed but limited: boxes share at most 30% of the smaller one, and every
                # digit already placed keeps at least 60% of its stroke pixels visible.
                if all(_overlap(box, b) <= 0.3 for b in placed) and \
                        all(visible[j] - hidden[j] >= 0.6 * strokes[j] for j in range(len(strokes))):
                    break
            else:
                continue  # no room for this digit: the scene keeps the ones it has
            a = (alpha.astype(np.float32) / 255.0)[..., None]
            win = canvas[y:y + cell, x:x + cell]
            canvas[y:y + cell, x:x + cell] = (1 - a) * win + a * _contrasting_colour(rng, level)
            inst[y:y + cell, x:x + cell][stroke] = len(strokes)
            strokes.append(int(stroke.sum()))
            placed.append(box)
            picked.append(d)
        # 3. Targets from what stayed visible.
        boxes, labs = [], []
        for j, d in enumerate(picked):
            rows, cols = np.nonzero(inst == j)
            boxes.append((float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)))
            labs.append(int(labels[d]))
            masks[i][inst == j] = labels[d] + 1
        images[i] = np.rint(np.clip(canvas, 0, 1) * 255).astype(np.uint8)
        all_boxes.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        all_labels.append(torch.tensor(labs, dtype=torch.long))
        sources.append(np.array(picked, dtype=np.int64))
    dense = DenseSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), all_boxes, all_labels, torch.from_numpy(masks))
    return dense, sources


def split_counts(n: int, opts: DataOptions) -> dict[str, int]:
    """Scenes per split for ``digit-scenes:n``: val and test by ``opts``' fractions, train the rest."""
    n_val, n_test = int(round(n * opts.val_fraction)), int(round(n * opts.test_fraction))
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def split_seed(split: str, seed: int) -> list[int]:
    """The random stream of each split's scenes; the test stream ignores ``seed``."""
    return [TEST_SEED, 2] if split == "test" else [seed, 0 if split == "train" else 1]


@DENSE_DATASETS.register("digit-scenes", description="real MNIST digits (mnist-5k) on dimmed real photographs "
                                                     "(scikit-image), 1-4 per scene, boxes and masks; 600 scenes "
                                                     "of 128 px; test digits and tiles never seen in training, offline")
def digit_scenes(arg: str | None, opts: DataOptions) -> DenseSplits:
    try:
        n = int(arg) if arg else DEFAULT_COUNT
    except ValueError:
        raise DataError(f"bad digit-scenes count {arg!r}; use the form digit-scenes:COUNT, e.g. digit-scenes:600") from None
    if n < 20:
        raise DataError(f"digit-scenes:{n} is too few scenes to split; use digit-scenes:COUNT with COUNT >= 20")
    counts = split_counts(n, opts)
    if counts["train"] < 1 or counts["val"] < 1:
        raise DataError(f"digit-scenes:{n} with --val-fraction {opts.val_fraction} leaves no train or no val scenes")
    size = opts.image_size or 128
    if size < 16:
        raise DataError(f"digit-scenes needs --image-size 16 or more, got {size}")
    pools = digit_pools(opts.seed, opts.val_fraction)
    parts = {}
    for split, count in counts.items():
        if count:
            dense, _ = render_digit_scenes(count, size, split_seed(split, opts.seed), split, pools[split])
            dense.images = convert_channels(dense.images, opts.channels)
            parts[split] = dense
    if opts.limit is not None:
        keep = np.sort(np.random.default_rng(opts.seed).permutation(counts["train"])[: opts.limit])
        parts["train"] = parts["train"].subset(keep)
    splits = DenseSplits("digit-scenes", list(DIGIT_CLASSES), ["background", *DIGIT_CLASSES],
                         parts["train"], parts["val"], parts.get("test"), hflip_ok=False)
    splits.notes.append("digit-scenes: test scenes use only mnist-5k's fixed test digits and the photographs' test tiles")
    return splits
