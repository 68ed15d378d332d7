"""``--cache`` (recogen/data/cache.py), parallel decoding (data/folder.py) and pinned batches (data/batches.py)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, main_in_process
from recogen.data import DataOptions, create_dataset
from recogen.data import batches as batches_mod
from recogen.data import cache as cache_mod
from recogen.data import folder as folder_mod
from recogen.data.base import _mean_std_in_slices, finish_splits
from recogen.data.batches import TensorBatches
from recogen.errors import DataError

CLASSES = ("ant", "bee", "cat")
OPTS = dict(image_size=16, channels=3, seed=0)


def _png(path: Path, seed: int, size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def pool(tmp_path) -> Path:
    """60 PNGs, 20 per class, in one pool (split by the loader)."""
    root = tmp_path / "data" / "pool"
    for c, name in enumerate(CLASSES):
        for i in range(20):
            _png(root / name / f"{i:02d}.png", 100 * c + i, size=(40 + i % 5, 30 + i % 3))
    return root


def _load(root: Path, **kw):
    return create_dataset(f"folder:{root}", DataOptions(**{**OPTS, **kw}))


def _same(a, b) -> None:
    for s in ("train", "val", "test"):
        x, y = getattr(a, s), getattr(b, s)
        assert (x is None) == (y is None)
        if x is None:
            continue
        assert x.images.shape == y.images.shape and x.images.numpy().tobytes() == y.images.numpy().tobytes(), s
        assert torch.equal(x.labels, y.labels) and x.paths == y.paths, s
    assert a.classes == b.classes


def _record(root: Path, name: str = "16x16-c3") -> dict:
    return json.loads((cache_mod.cache_folder(root) / f"{name}.json").read_text())


@pytest.fixture()
def no_decoding(monkeypatch):
    """Make any decode fail loudly: what a cache hit must not need."""
    def boom(*a, **k):
        raise AssertionError("decoded although the cache is valid")

    def arm():
        monkeypatch.setattr(folder_mod, "_decode", boom)
        monkeypatch.setattr(folder_mod, "_probe", boom)
    return arm


def _count_decodes(monkeypatch) -> list:
    calls = []
    real = folder_mod._decode

    def counting(*a):
        calls.append(a[0])
        return real(*a)

    monkeypatch.setattr(folder_mod, "_decode", counting)
    return calls


# ------------------------------------------------------------------------------------------ splits
def test_uncached_splits_are_the_ones_finish_splits_makes(pool):
    """The loader decodes straight into the splits' rows; the splits are finish_splits' (seeded, stratified)."""
    paths = [p for c in CLASSES for p in sorted((pool / c).glob("*.png"))]
    images = torch.from_numpy(np.stack([folder_mod._decode(p, 16, 3) for p in paths]))
    labels = torch.tensor([CLASSES.index(p.parent.name) for p in paths])
    for kw in ({}, {"seed": 3, "limit": 7}, {"val_fraction": 0.3, "test_fraction": 0.0}):
        opts = DataOptions(**{**OPTS, **kw})
        want = finish_splits("folder", list(CLASSES), images, labels, opts, paths=[str(p) for p in paths])
        _same(create_dataset(f"folder:{pool}", opts), want)


def _mapped_from(t: torch.Tensor, path: Path) -> bool:
    """Whether ``t``'s memory lies in a mapping of the file ``path`` (Linux: /proc/self/maps)."""
    ptr = t.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
            if lo <= ptr < hi:
                return True
    return False


def test_cache_is_built_then_used_and_matches_the_uncached_load(pool, no_decoding):
    ref = _load(pool)
    first = _load(pool, cache=True)
    rec = _record(pool)
    npy = cache_mod.cache_folder(pool) / rec["npy"]
    assert npy.is_file() and rec["shape"] == [60, 3, 16, 16] and rec["version"] == cache_mod.VERSION
    assert any("decoded 60 images once into the cache" in n for n in first.notes)
    _same(first, ref)

    no_decoding()  # from here on any decode fails: the loads below read the cache only
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and torch's "non-writable NumPy array" warning is not shown
        second = _load(pool, cache=True)
        _same(second, ref)
        if sys.platform == "linux":  # the splits are views of the memory-mapped file, not copies
            assert all(_mapped_from(getattr(second, s).images, npy) for s in ("train", "val", "test"))
        # A batch gathered with a random index is an ordinary tensor of its own.
        idx = torch.randperm(len(second.train))[:9]
        x, y = TensorBatches(second.train, 9).batch(idx)
        assert torch.equal(x, ref.train.images[idx]) and torch.equal(y, ref.train.labels[idx])
        if sys.platform == "linux":
            assert not _mapped_from(x, npy)
        x += 1  # writable
    assert any("memory-mapped" in n for n in second.notes)
    # --limit takes the same seeded choice of training images as without the cache.
    limited = _load(pool, cache=True, limit=5)
    keep = np.sort(np.random.default_rng(0).permutation(len(ref.train))[:5])
    _same(limited, dataclasses.replace(ref, train=ref.train.subset(keep)))


def test_seed_change_reorders_to_the_uncached_split(pool, monkeypatch):
    _load(pool, cache=True)
    calls = _count_decodes(monkeypatch)
    again = _load(pool, cache=True, seed=4, val_fraction=0.2)
    assert calls == []
    monkeypatch.undo()
    _same(again, _load(pool, seed=4, val_fraction=0.2))


def test_changed_folder_rebuilds_with_a_reason(pool, monkeypatch, caplog):
    _load(pool, cache=True)
    caplog.set_level(logging.INFO, logger="recogen")
    calls = _count_decodes(monkeypatch)

    f = pool / "bee" / "03.png"
    _png(f, 999, size=(40, 30))
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new modification time, whatever the clock
    got = _load(pool, cache=True)
    assert "1 file modified" in caplog.text and "rebuilding" in caplog.text
    assert len(calls) == 60
    _same(got, _load(pool))

    caplog.clear()
    _png(pool / "cat" / "new.png", 5)
    (pool / "ant" / "00.png").unlink()
    got = _load(pool, cache=True)
    assert "1 file added, 1 file removed" in caplog.text
    _same(got, _load(pool))
    assert len(list((cache_mod.cache_folder(pool)).glob("*.npy"))) == 1  # stale image files are deleted


def test_damaged_cache_files_are_never_trusted(pool, monkeypatch, caplog):
    _load(pool, cache=True)
    folder = cache_mod.cache_folder(pool)
    rec = _record(pool)
    # A killed build's leftover: a temporary file nothing reads; the next build deletes it.
    leftover = folder / ".16x16-c3-0123456789ab.npy.k1ll3d.tmp"
    leftover.write_bytes(b"\x93NUMPY half a file")
    # A cache file cut short (a full disk, a copy gone wrong): the record no longer matches it.
    npy = folder / rec["npy"]
    npy.write_bytes(npy.read_bytes()[:-100])
    caplog.set_level(logging.INFO, logger="recogen")
    got = _load(pool, cache=True)
    assert "does not hold the recorded" in caplog.text
    _same(got, _load(pool))
    assert not leftover.exists()
    # A record whose image file is gone (killed between the rename and the record): rebuilt.
    (folder / _record(pool)["npy"]).unlink()
    caplog.clear()
    _same(_load(pool, cache=True), _load(pool))
    assert "missing" in caplog.text


def test_a_build_killed_midway_leaves_nothing_that_is_used(pool):
    """A real SIGKILL while the cache file is being written: only a temporary file is left, and ignored."""
    code = (
        "import time, sys\n"
        "import recogen.data.folder as f\n"
        "from recogen.data import create_dataset, DataOptions\n"
        "real = f._decode\n"
        "def slow(*a):\n"
        "    time.sleep(0.1)\n"
        "    return real(*a)\n"
        "f._decode = slow\n"
        f"create_dataset('folder:{pool}', DataOptions(image_size=16, channels=3, cache=True, workers=0))\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = cache_mod.cache_folder(pool)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(folder.glob(".*.npy.*.tmp")):
        assert p.poll() is None, p.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    time.sleep(0.3)  # a few images into the file
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert list(folder.glob(".*.npy.*.tmp")) and not list(folder.glob("*.json")) and not list(folder.glob("*.npy"))
    # A fresh process builds the cache again, then maps it, without a warning (torch warns once per
    # process about a read-only NumPy array: here it is the first time, so it would show).
    check = ("import torch\nfrom recogen.data import create_dataset, DataOptions\n"
             "o = DataOptions(image_size=16, channels=3, cache=True)\n"
             f"assert 'decoded' in create_dataset('folder:{pool}', o).notes[0]\n"
             f"s = create_dataset('folder:{pool}', o)\n"
             "assert 'memory-mapped' in s.notes[0]\n"
             "s.train.images[torch.tensor([2, 0])].sum()\n")
    r = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", check], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list(folder.glob(".*.tmp"))
    _same(_load(pool, cache=True), _load(pool))


def test_read_only_data_folder(pool, monkeypatch, tmp_path, no_decoding):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    own = cache_mod.cache_folder(pool)
    real = cache_mod._writable
    monkeypatch.setattr(cache_mod, "_writable", lambda f: f != own and real(f))
    got = _load(pool, cache=True)
    where = cache_mod.user_cache_dir(pool)
    assert str(where).startswith(str(tmp_path / "xdg")) and list(where.glob("*.npy"))
    assert not own.exists()
    assert any("cannot write beside the data" in n and str(where) in n for n in got.notes)
    no_decoding()
    _same(_load(pool, cache=True), got)  # found there by the next run


def test_existing_cache_in_a_read_only_folder_is_used(pool, monkeypatch, no_decoding):
    ref = _load(pool, cache=True)
    monkeypatch.setattr(cache_mod, "_writable", lambda f: False)
    no_decoding()
    _same(_load(pool, cache=True), ref)
    # Another split of it cannot be written there: re-ordered in memory instead.
    monkeypatch.undo()
    want = _load(pool, seed=2)
    monkeypatch.setattr(cache_mod, "_writable", lambda f: False)
    no_decoding()
    _same(_load(pool, cache=True, seed=2), want)


def test_unreadable_files_are_recorded(pool):
    (pool / "bee" / "bad.png").write_text("not an image")
    cut = _png(pool / "cat" / "cut.png", 7, size=(64, 64))  # the header reads, the pixels do not
    cut.write_bytes(cut.read_bytes()[:-200])
    with pytest.warns(UserWarning, match="skipped 2"):
        want = create_dataset(f"folder:{pool}", DataOptions(skip_bad_images=True))  # auto size: probed
    with pytest.warns(UserWarning, match="skipped 2"):
        got = create_dataset(f"folder:{pool}", DataOptions(skip_bad_images=True, cache=True))
    _same(got, want)
    assert len(list((cache_mod.cache_folder(pool)).glob("*.npy"))) == 1
    with pytest.warns(UserWarning, match="skipped 2"):
        _same(create_dataset(f"folder:{pool}", DataOptions(skip_bad_images=True, cache=True)), want)
    with pytest.raises(DataError, match=r"cannot read image .*bad\.png.*--skip-bad-images"):
        create_dataset(f"folder:{pool}", DataOptions(cache=True))


def test_split_folder_layout_and_auto_size(tmp_path, no_decoding):
    root = tmp_path / "data" / "splits"
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for c, name in enumerate(CLASSES):
            for i in range(n):
                _png(root / split / name / f"{i}.png", 1000 * c + 10 * i + len(split), size=(36, 36))
    want = create_dataset(f"folder:{root}", DataOptions())
    got = create_dataset(f"folder:{root}", DataOptions(cache=True))
    folder = cache_mod.cache_folder(root)
    assert got.image_size == (32, 32) and (folder / "32x32-c3.json").is_file() and (folder / "auto.json").is_file()
    _same(got, want)
    no_decoding()
    _same(create_dataset(f"folder:{root}", DataOptions(cache=True)), want)
    _same(create_dataset(f"folder:{root}", DataOptions(cache=True, image_size=32, channels=3)), want)


def test_the_data_folder_is_left_as_it_was(pool):
    before = sorted(p.relative_to(pool) for p in pool.rglob("*"))
    _load(pool, cache=True)
    assert sorted(p.relative_to(pool) for p in pool.rglob("*")) == before
    assert cache_mod.cache_folder(pool).parent == pool.parent / ".recogen-cache"
    from torchvision.datasets import ImageFolder  # which takes every sub-folder, hidden ones too, for a class

    assert ImageFolder(str(pool)).classes == list(CLASSES)


def test_worker_processes_decode_the_same_images(pool, monkeypatch):
    one = _load(pool, workers=0)
    _same(_load(pool, workers=2), one)  # forked workers write into shared memory
    _same(_load(pool, workers=2, cache=True), one)  # workers write into the cache file they map
    monkeypatch.setattr(folder_mod, "_fork", lambda: False)  # as under spawn: chunks come back through the DataLoader
    _same(_load(pool, workers=2, seed=1), _load(pool, workers=0, seed=1))
    monkeypatch.undo()
    assert folder_mod.decode_workers(10) == 0 and folder_mod.decode_workers(10_000) >= 1
    os.environ[folder_mod.WORKERS_ENV] = "3"
    try:
        assert folder_mod.decode_workers(10) == 3
        os.environ[folder_mod.WORKERS_ENV] = "x"
        with pytest.raises(DataError, match="RECOGEN_DATA_WORKERS"):
            folder_mod.decode_workers(10)
    finally:
        del os.environ[folder_mod.WORKERS_ENV]


def test_a_bad_file_stops_the_worker_processes(pool):
    (pool / "bee" / "bad.png").write_text("not an image")
    with pytest.raises(DataError, match=r"bad\.png"):
        _load(pool, workers=2)
    with pytest.raises(DataError, match=r"bad\.png"):
        _load(pool, workers=2, cache=True)
    assert not list((cache_mod.cache_folder(pool)).glob("*.npy"))


# ---------------------------------------------------------------------------------------- batches
def test_batches_are_pinned_when_cuda_is_in_use(pool, monkeypatch):
    splits = _load(pool, cache=True)
    made = []

    def fake_pinned(shape, dtype):  # no GPU here: record the request, hand back ordinary memory
        made.append((tuple(shape), dtype))
        return torch.empty(shape, dtype=dtype)

    monkeypatch.setattr(batches_mod, "_pinned_empty", fake_pinned)
    plain = list(TensorBatches(splits.train, 8, shuffle=True, seed=3))
    assert made == []  # CUDA not in use: nothing pinned
    monkeypatch.setattr(batches_mod, "cuda_in_use", lambda: True)
    pinned = list(TensorBatches(splits.train, 8, shuffle=True, seed=3))
    assert len(made) == 2 * len(pinned) and made[0] == ((8, 3, 16, 16), torch.uint8) and made[1] == ((8,), torch.int64)
    for (a, y), (b, z) in zip(plain, pinned):
        assert torch.equal(a, b) and torch.equal(y, z)
    made.clear()
    list(TensorBatches(splits.train, 8, pin_memory=False))
    assert made == []


def test_mean_std_in_slices_matches_one_piece(pool, monkeypatch):
    x = torch.randint(0, 256, (50, 3, 9, 7), dtype=torch.uint8)
    f = x.float().div(255)
    mean, std = _mean_std_in_slices(x, values_per_slice=500)
    assert np.allclose(mean, f.mean(dim=(0, 2, 3)).tolist(), atol=2e-5)
    assert np.allclose(std, f.std(dim=(0, 2, 3)).tolist(), atol=2e-5)
    splits = _load(pool, cache=True)
    whole = splits.mean_std()
    monkeypatch.setattr("recogen.data.base.MEAN_STD_IN_ONE", 0)
    assert np.allclose(splits.mean_std(), whole, atol=2e-5)


# -------------------------------------------------------------------------------------------- CLI
def test_train_with_cache_from_the_cli(pool, tmp_path, capsys, no_decoding):
    run = tmp_path / "run"
    rc, out, err = main_in_process(capsys, "classify", "train", "--data", f"folder:{pool}", "--cache", "--image-size",
                                   "16", "--model", "cnn-s", "--epochs", "1", "--batch-size", "16", "--no-progress",
                                   "--out", run)
    assert rc == 0, err[-3000:]
    assert "decoded 60 images once into the cache" in out + err
    assert (cache_mod.cache_folder(pool) / "16x16-c3.json").is_file()
    assert "cache: true" in (run / "config.yaml").read_text()
    no_decoding()  # evaluation rebuilds the run's splits from its config: from the cache
    rc, out, err = main_in_process(capsys, "classify", "eval", run, "--no-write")
    assert rc == 0, err[-3000:]
    assert "accuracy" in out


def test_cache_on_other_data_sets_is_a_note():
    s = create_dataset("digits", DataOptions(cache=True, limit=50))
    assert any("--cache is ignored" in n for n in s.notes)


# -------------------------------------------------------------------------------------- benchmark
def test_benchmark_quick(monkeypatch, tmp_path, capsys):
    import runpy

    out = tmp_path / "r.json"
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setattr(sys, "argv", ["data_loading.py", "--quick", "--json", str(out)])
    runpy.run_path(str(ROOT / "benchmarks" / "data_loading.py"), run_name="__main__")
    r = json.loads(out.read_text())
    assert r["n"] == 200 and r["quick"] is True and r["rounds"] == 1
    assert all(a["images_per_s"] > 0 for a in r["arms"].values())
    assert r["arms"]["torchvision ImageFolder + DataLoader"]["images"] == 200
    assert "| recogen --cache, epoch 1 (file in the page cache) |" in capsys.readouterr().out


def test_the_workers_option_reaches_the_decoder_and_is_checked(monkeypatch):
    """``--workers N`` (TrainConfig.workers) is the folder decoder's worker count; a negative one is refused."""
    from recogen.config import TrainConfig
    from recogen.errors import ConfigError
    from recogen.tasks.runs import data_options

    assert data_options(TrainConfig(data="folder:x", workers=3)).workers == 3
    assert data_options(TrainConfig(data="folder:x")).workers is None
    monkeypatch.delenv(folder_mod.WORKERS_ENV, raising=False)
    assert folder_mod.decode_workers(10, data_options(TrainConfig(workers=2)).workers) == 2  # even for few images
    with pytest.raises(ConfigError, match="workers"):
        TrainConfig(workers=-1)
