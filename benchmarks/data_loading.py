"""How fast do folder images load? recogen's folder loader against torchvision's ``ImageFolder`` + ``DataLoader``.

    python benchmarks/data_loading.py [--n 100000] [--workers 2] [--root runs/bench/folder224] [--json FILE]

Data: ``--n`` JPEGs of 224x224 px (quality 90) in 10 class folders under ``--root``, written once (in
parallel) from crops of the photographs scikit-image bundles (offline), and reused by later runs.

Each arm reads every image once (one epoch) at the same worker count ``--workers``:

* ``torchvision``: ``ImageFolder(root, Resize((224, 224)) + PILToTensor())`` in a
  ``DataLoader(batch_size=256, shuffle=True, num_workers=W)``: decoded uint8 batches;
* ``recogen build``: ``folder:ROOT --cache`` on the first run: the files are decoded in W DataLoader
  worker processes straight into the cache file (beside ROOT, in ``.recogen-cache/``), then memory-mapped;
* ``recogen in-memory``: the same decode without ``--cache`` (into one uint8 tensor in RAM);
* ``recogen cached epoch``: a later run's training epoch: the memory-mapped cache read in shuffled batches
  of 256 (``TensorBatches``, no worker processes: a batch is one gather): the first epoch with the file in
  the page cache, a second one, one with the page cache cold (the file unmapped and its pages evicted with
  ``posix_fadvise(DONTNEED)``: read from disk), and ``--aug-batches`` batches through the ``light`` and
  ``strong`` batch augmentation (``BatchAugment``, which runs where the model runs: the CPU here, the GPU
  on one).

Images/s are per arm; the ratios are against torchvision in the same round, and with ``--rounds R`` the
medians over R interleaved rounds are reported (on a shared machine the load moves every arm). Images per
CPU second (this process and its workers) are reported too. ``--quick`` (200 images) only checks that the
script runs. The uint8 cache of 224 px RGB takes 150,528 bytes per image (15 GB for 100,000): check the
free disk before a large ``--n``; the script refuses when the JPEGs and the cache would not fit.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

SIZE = 224
CLASSES = 10
JPEG_BYTES = 16_000  # about, per 224 px JPEG of these photographs at quality 90 (measured: 12-20 kB)


# ------------------------------------------------------------------------------------------- data
def _photos() -> list[np.ndarray]:
    """The RGB-able photographs scikit-image ships (offline), as uint8 (H, W, 3)."""
    import skimage.data as d

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "grass", "gravel", "moon",
                 "hubble_deep_field", "immunohistochemistry", "retina", "coins", "clock", "cell", "colorwheel"):
        x = np.asarray(getattr(d, name)())
        if x.ndim == 2:
            x = np.repeat(x[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(x[..., :3].astype(np.uint8)))
    return out


_PHOTOS: list[np.ndarray] = []


def _write_one(job: tuple[int, str]) -> int:
    """Write image ``i``: a random crop of a photograph, resized to 224 px, flipped and tinted per class."""
    from PIL import Image

    i, path = job
    if not _PHOTOS:
        _PHOTOS.extend(_photos())
    rng = np.random.default_rng(i)
    c = i % CLASSES
    src = _PHOTOS[(3 * c + int(rng.integers(3))) % len(_PHOTOS)]
    h, w = src.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    img = Image.fromarray(src[y : y + side, x : x + side]).resize((SIZE, SIZE), Image.BILINEAR)
    arr = np.asarray(img).astype(np.float32) * (0.7 + 0.06 * np.array([c % 3, (c // 3) % 3, c % 5]))
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return i


def make_folder(root: Path, n: int, workers: int) -> float:
    """``n`` JPEGs in ``root/class_K/`` (written once: a marker file records a complete set); seconds spent."""
    marker = root / ".complete.json"
    want = {"n": n, "size": SIZE, "classes": CLASSES}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return 0.0
    if root.exists():
        shutil.rmtree(root)
    for c in range(CLASSES):
        (root / f"class_{c}").mkdir(parents=True)
    jobs = [(i, str(root / f"class_{i % CLASSES}" / f"{i:06d}.jpg")) for i in range(n)]
    t0 = time.perf_counter()
    with get_context("fork" if sys.platform == "linux" else "spawn").Pool(max(1, workers)) as pool:
        for k, _ in enumerate(pool.imap_unordered(_write_one, jobs, chunksize=64), 1):
            if k % 10_000 == 0:
                print(f"  wrote {k}/{n} images ({time.perf_counter() - t0:.0f} s)", flush=True)
    marker.write_text(json.dumps(want))
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------- arms
def _cpu() -> float:
    """CPU seconds of this process and of its waited-for children (DataLoader workers once they have ended)."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _mem_available() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def torchvision_epoch(root: Path, workers: int, batch_size: int) -> dict:
    """One shuffled epoch of ImageFolder + DataLoader: decode, Resize((224, 224)), PILToTensor (uint8)."""
    import torch
    from torchvision import datasets, transforms

    ds = datasets.ImageFolder(str(root), transform=transforms.Compose([transforms.Resize((SIZE, SIZE)),
                                                                       transforms.PILToTensor()]))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers)
    c0, t0, n = _cpu(), time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
    return {"images": n, "seconds": time.perf_counter() - t0, "cpu_seconds": _cpu() - c0}


def _opts(workers: int, cache: bool):
    from recogen.data import DataOptions

    return DataOptions(image_size=SIZE, channels=3, cache=cache, workers=workers)


def recogen_load(root: Path, workers: int, cache: bool) -> tuple[dict, object]:
    """``create_dataset("folder:ROOT")`` timed: every image decoded (or, cached, the memory map opened)."""
    from recogen.data import create_dataset

    c0, t0 = _cpu(), time.perf_counter()
    splits = create_dataset(f"folder:{root}", _opts(workers, cache))
    n = len(splits.train) + len(splits.val) + (len(splits.test) if splits.test is not None else 0)
    return {"images": n, "seconds": time.perf_counter() - t0, "cpu_seconds": _cpu() - c0}, splits


def _evict(npy: Path) -> None:
    """Drop the file's pages from the page cache (clean pages only: it was flushed when written)."""
    fd = os.open(npy, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_epoch(train, batch_size: int, augment: str | None = None, max_batches: int | None = None) -> dict:
    """Shuffled batches of the memory-mapped training split, as training draws them (``TensorBatches``),
    optionally through the batch augmentation as the classify module applies it (float in [0, 1])."""
    from recogen.data.batches import TensorBatches
    from recogen.data.transforms import BatchAugment, get_preset

    aug = BatchAugment(get_preset(augment), hflip_ok=True) if augment else None
    batches = TensorBatches(train, batch_size, shuffle=True, seed=1)
    c0, t0, n = _cpu(), time.perf_counter(), 0
    for k, (x, _) in enumerate(batches):
        if aug is not None:
            aug(x.float().div_(255))
        n += len(x)
        if max_batches and k + 1 >= max_batches:
            break
    return {"images": n, "seconds": time.perf_counter() - t0, "cpu_seconds": _cpu() - c0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="images (default 100000)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes of every arm (default 2)")
    ap.add_argument("--root", type=Path, default=Path("runs/bench/folder224"), help="the image folder (made once)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--aug-batches", type=int, default=20, help="batches timed with each augmentation (default 20)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds of every arm; medians are reported")
    ap.add_argument("--keep-cache", action="store_true", help="keep the cache (n x 150 kB, beside ROOT) afterwards")
    ap.add_argument("--quick", action="store_true", help="200 images in a temporary folder: checks the script runs")
    ap.add_argument("--json", type=Path, help="write the results here (default benchmarks/results/data_loading.json)")
    args = ap.parse_args()
    import tempfile

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_common import code_state, write_result

    tmp = None
    if args.quick:
        tmp = tempfile.mkdtemp(prefix="recogen-bench-")
        args.n, args.root, args.aug_batches, args.batch_size = 200, Path(tmp) / "folder224", 1, 64
    from recogen.data.cache import cache_folder

    cache_dir = cache_folder(args.root)
    need_disk = args.n * SIZE * SIZE * 3 + (0 if (args.root / ".complete.json").is_file() else args.n * JPEG_BYTES)
    args.root.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.root.parent).free
    if need_disk > free:
        sys.exit(f"{args.n} images need about {need_disk / 1e9:.1f} GB of disk (the JPEGs and the uint8 cache), but "
                 f"{args.root.parent} has {free / 1e9:.1f} GB free; use a smaller --n")
    print(f"{args.n} images of {SIZE} px in {args.root}, {args.workers} workers, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}", flush=True)
    gen_s = make_folder(args.root, args.n, max(1, args.workers))
    if gen_s:
        print(f"wrote {args.n} JPEGs in {gen_s:.0f} s", flush=True)

    rounds: list[dict[str, dict]] = []

    def report(name: str, r: dict) -> None:
        r["images_per_s"] = round(r["images"] / r["seconds"], 1)
        r["images_per_cpu_s"] = round(r["images"] / max(r["cpu_seconds"], 1e-3), 1)
        r["seconds"], r["cpu_seconds"] = round(r["seconds"], 2), round(r["cpu_seconds"], 2)
        r["load_average"] = round(os.getloadavg()[0], 1)
        rounds[-1][name] = r
        print(f"  {name}: {r['images']} images in {r['seconds']:.1f} s = {r['images_per_s']:.0f} images/s "
              f"({r['cpu_seconds']:.1f} CPU s; load {r['load_average']})", flush=True)

    tv = "torchvision ImageFolder + DataLoader"
    for k in range(args.rounds):  # interleaved rounds: a busy machine slows the arms of one round alike
        print(f"round {k + 1}/{args.rounds}", flush=True)
        rounds.append({})
        shutil.rmtree(cache_dir, ignore_errors=True)
        report(tv, torchvision_epoch(args.root, args.workers, args.batch_size))
        r, _ = recogen_load(args.root, args.workers, cache=True)
        report("recogen --cache, first run (decode into the cache)", r)
        if k == 0 and _mem_available() > 2 * args.n * SIZE * SIZE * 3:  # (first round only: they are slow)
            for w, label in ((args.workers, f"{args.workers} workers"), (0, "no worker processes (workers=0)")):
                r, splits = recogen_load(args.root, w, cache=False)
                report(f"recogen in memory, {label}", r)
                del splits
        elif k == 0:
            print("  (recogen in memory skipped: not enough free memory for the images twice)")
        r, splits = recogen_load(args.root, args.workers, cache=True)
        report("recogen --cache, later run: open (check files, map the cache)", r)
        report("recogen --cache, epoch 1 (file in the page cache)", cached_epoch(splits.train, args.batch_size))
        report("recogen --cache, epoch 2 (pages already mapped)", cached_epoch(splits.train, args.batch_size))
        del splits  # unmapped, so that its pages can be evicted
        gc.collect()
        _evict(next(cache_dir.glob("*.npy")))
        _, splits = recogen_load(args.root, args.workers, cache=True)
        report("recogen --cache, epoch, page cache cold (read from disk)", cached_epoch(splits.train, args.batch_size))
        if k == args.rounds - 1:
            for aug in ("light", "strong"):
                report(f"recogen --cache, epoch + {aug} batch augmentation on the CPU ({args.aug_batches} batches)",
                       cached_epoch(splits.train, args.batch_size, aug, args.aug_batches))
        del splits
        for r in rounds[-1].values():
            r["vs_torchvision"] = round(r["images_per_s"] / rounds[-1][tv]["images_per_s"], 2)

    # Per arm: the median over rounds of images/s, of its ratio to torchvision in the same round, of CPU use.
    arms = {}
    for name in dict.fromkeys(n for r in rounds for n in r):
        got = [r[name] for r in rounds if name in r]
        med = lambda key: float(np.median([g[key] for g in got]))  # noqa: E731
        arms[name] = {"images": got[0]["images"], "rounds": len(got), "images_per_s": round(med("images_per_s"), 1),
                      "vs_torchvision": round(med("vs_torchvision"), 2),
                      "images_per_cpu_s": round(med("images_per_cpu_s"), 1),
                      "vs_torchvision_per_cpu_s": round(float(np.median(
                          [r[name]["images_per_cpu_s"] / r[tv]["images_per_cpu_s"] for r in rounds if name in r])), 2),
                      "load_average": [g["load_average"] for g in got]}
    print(f"\nmedians of {args.rounds} round(s)\n| arm | images | images/s | vs torchvision | images per CPU s | "
          "vs torchvision per CPU s |\n|---|---|---|---|---|---|")
    for name, r in arms.items():
        print(f"| {name} | {r['images']} | {r['images_per_s']:.0f} | {r['vs_torchvision']:.2f} | "
              f"{r['images_per_cpu_s']:.0f} | {r['vs_torchvision_per_cpu_s']:.2f} |")
    out = args.json or (None if args.quick else Path(__file__).resolve().parent / "results" / "data_loading.json")
    if out is not None:
        write_result(out, "data_loading", n=args.n, workers=args.workers, batch_size=args.batch_size, quick=args.quick,
                     code=code_state(), rounds=args.rounds, arms=arms, per_round=rounds)
    if not args.keep_cache:
        shutil.rmtree(cache_dir, ignore_errors=True)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
