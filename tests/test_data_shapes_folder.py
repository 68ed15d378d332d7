"""The procedural ``shapes`` data set and the ``folder`` (ImageFolder) loader."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from recogen.data import DataOptions, create_dataset
from recogen.data.shapes import SHAPE_CLASSES, make_classification, render_scene
from recogen.errors import DataError

# ---------------------------------------------------------------------------------------- shapes


def _all_images(splits) -> torch.Tensor:
    return torch.cat([splits.train.images, splits.val.images, splits.test.images])


def test_shapes_is_seeded():
    a = create_dataset("shapes:100", DataOptions(seed=1))
    b = create_dataset("shapes:100", DataOptions(seed=1))
    c = create_dataset("shapes:100", DataOptions(seed=2))
    assert torch.equal(_all_images(a), _all_images(b))
    assert torch.equal(a.train.labels, b.train.labels)
    assert not torch.equal(_all_images(a), _all_images(c))


def test_shapes_splits_sizes_and_options():
    s = create_dataset("shapes:200", DataOptions(seed=0))
    assert s.classes == SHAPE_CLASSES and s.hflip_ok
    assert len(s.train) + len(s.val) + len(s.test) == 200
    assert s.train.images.shape[1:] == (3, 32, 32) and s.train.images.dtype == torch.uint8
    g = create_dataset("shapes:40", DataOptions(seed=0, image_size=48, channels=1))
    assert g.train.images.shape[1:] == (1, 48, 48)


def test_default_count():
    s = create_dataset("shapes", DataOptions(seed=0, image_size=8))
    assert len(s.train) + len(s.val) + len(s.test) == 3000


@pytest.mark.parametrize("spec", ["shapes:abc", "shapes:5", "shapes:1.5", "shapes:-100"])
def test_shapes_bad_count(spec):
    with pytest.raises(DataError, match="shapes:COUNT"):
        create_dataset(spec, DataOptions())


def test_make_classification_balanced_and_seeded():
    x, y = make_classification(100, 24, seed=3)
    assert x.shape == (100, 3, 24, 24) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == [10] * 10
    assert len(set(y[:10].tolist())) < 10  # shuffled, not left in round-robin order
    x2, y2 = make_classification(100, 24, seed=3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


def test_shape_stands_out_in_grey():
    # Shapes must keep luma contrast, or --channels 1 would erase them.
    rng = np.random.default_rng(0)
    for _ in range(50):
        img, (obj,) = render_scene(rng, 32, 1, min_frac=0.5, max_frac=0.9)
        luma = img.astype(float) @ [0.299, 0.587, 0.114]
        ring = np.zeros_like(obj["mask"])
        x0, y0, x1, y1 = (int(v) for v in obj["box"])
        ring[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2] = True
        ring &= ~obj["mask"]
        if ring.sum() > 20:
            assert abs(luma[obj["mask"]].mean() - luma[ring].mean()) > 20


@pytest.mark.parametrize("size,n", [(32, 3), (64, 6)])
def test_scene_boxes_tight_and_masks_visible(size, n):
    rng = np.random.default_rng(size)
    for _ in range(30):
        img, objects = render_scene(rng, size, n)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        assert 1 <= len(objects) <= n
        taken = np.zeros((size, size), dtype=bool)
        for obj in objects:
            mask = obj["mask"]
            assert mask.shape == (size, size) and mask.dtype == bool and mask.any()
            assert not (taken & mask).any()  # visible masks never overlap
            taken |= mask
            assert 0 <= obj["class_id"] < len(SHAPE_CLASSES)
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
            assert mask[y0:y1, x0:x1].sum() == mask.sum()  # the box holds every pixel ...
            # ... and is tight: each edge row/column of the box touches the mask.
            assert mask[y0, x0:x1].any() and mask[y1 - 1, x0:x1].any()
            assert mask[y0:y1, x0].any() and mask[y0:y1, x1 - 1].any()


def test_scene_occlusion_and_class_pool():
    rng = np.random.default_rng(0)
    overlapped = False
    for _ in range(20):
        _, objects = render_scene(rng, 48, 5, classes=[2, 7], min_frac=0.4, max_frac=0.7)
        assert {o["class_id"] for o in objects} <= {2, 7}
        boxes = [o["box"] for o in objects]
        overlapped |= any(
            a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
            for i, a in enumerate(boxes) for b in boxes[i + 1 :]
        )
    assert overlapped  # objects may overlap; masks then keep only the visible pixels
    with pytest.raises(ValueError):
        render_scene(rng, 32, 1, classes=[10])


# ---------------------------------------------------------------------------------------- folder


def _save(path, mode: str, size=(40, 30), value=None, fmt=None):
    """Write one small image of ``mode``; ``value`` fills it (else random pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(zlib.crc32(f"{path.parent.name}/{path.name}".encode()))
    if mode == "I;16":
        arr = np.full((h, w), 65535 if value is None else value, dtype=np.uint16)
        img = Image.fromarray(arr)
    elif mode in ("L", "1"):
        img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).convert(mode)
    elif mode == "P":  # a colour palette
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert("P", palette=Image.ADAPTIVE)
    else:
        arr = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
        if value is not None:
            arr[:] = value
        img = Image.fromarray(arr, mode)
    img.save(path, fmt)
    return path


def _tree(root, classes=("ant", "bee", "cat"), per_class=6, modes=("RGB",), ext="png", size=(40, 30)):
    for c in classes:
        for i in range(per_class):
            _save(root / c / f"{i}.{ext}", modes[i % len(modes)], size=size)
    return root


def _check_labels(split, classes):
    for path, label in zip(split.paths, split.labels.tolist()):
        assert path.split("/")[-2] == classes[label]


def test_folder_single_tree_mixed_modes(tmp_path):
    root = _tree(tmp_path, modes=("L", "RGB", "RGBA", "P", "1", "I;16"))
    _save(tmp_path / "ant" / "photo.JPG", "RGB", fmt="JPEG")
    (tmp_path / "bee" / "notes.txt").write_text("not an image")
    s = create_dataset(f"folder:{root}", DataOptions(seed=0))
    assert s.classes == ["ant", "bee", "cat"] and s.hflip_ok
    assert s.channels == 3  # mixed grey and colour images
    assert s.image_size == (32, 32)  # median shorter side 30, rounded to a multiple of 8
    total = len(s.train) + len(s.val) + len(s.test)
    assert total == 19
    paths = s.train.paths + s.val.paths + s.test.paths
    ants = sorted(p.split("/")[-1] for p in paths if "/ant/" in p)
    assert ants == [f"{i}.png" for i in range(6)] + ["photo.JPG"]
    for split in (s.train, s.val, s.test):
        _check_labels(split, s.classes)


def test_folder_grayscale_only_gives_one_channel(tmp_path):
    root = _tree(tmp_path, modes=("L", "1", "I;16"), size=(100, 90))
    # A palette image whose palette is grey counts as single-channel.
    Image.fromarray(np.full((90, 100), 77, np.uint8)).convert("P").save(root / "ant" / "grey_palette.png")
    s = create_dataset(f"folder:{root}", DataOptions())
    assert s.channels == 1 and s.image_size == (88, 88)
    s3 = create_dataset(f"folder:{root}", DataOptions(channels=3, image_size=20))
    assert s3.channels == 3 and s3.image_size == (20, 20)


def test_folder_pixel_values(tmp_path):
    _save(tmp_path / "a" / "rgba.png", "RGBA", value=(200, 10, 20, 0))  # transparent: alpha is dropped
    _save(tmp_path / "a" / "rgba2.png", "RGBA", value=(200, 10, 20, 255))
    _save(tmp_path / "b" / "sixteen.png", "I;16", value=65535)  # full 16-bit white stays white
    _save(tmp_path / "b" / "sixteen2.png", "I;16", value=32896)  # mid grey, not clipped to 255
    s = create_dataset(f"folder:{tmp_path}", DataOptions(val_fraction=0.5, test_fraction=0.0, image_size=16))
    imgs = {p.split("/")[-1]: x for split in (s.train, s.val) for p, x in zip(split.paths, split.images)}
    assert imgs["rgba.png"][:, 0, 0].tolist() == [200, 10, 20]
    assert imgs["rgba2.png"][:, 0, 0].tolist() == [200, 10, 20]
    assert imgs["sixteen.png"][:, 0, 0].tolist() == [255] * 3
    assert imgs["sixteen2.png"][:, 0, 0].tolist() == [128] * 3


def test_folder_split_layout(tmp_path):
    _tree(tmp_path / "train", per_class=5, modes=("L",))
    _tree(tmp_path / "val", classes=("ant", "cat"), per_class=2, modes=("L",))
    _tree(tmp_path / "test", per_class=3, modes=("L",))
    s = create_dataset(f"folder:{tmp_path}", DataOptions(seed=0))
    assert s.classes == ["ant", "bee", "cat"] and s.channels == 1
    assert (len(s.train), len(s.val), len(s.test)) == (15, 4, 9)  # used as given, not re-split
    assert all("/train/" in p for p in s.train.paths) and all("/val/" in p for p in s.val.paths)
    assert s.val.labels.tolist() == [0, 0, 2, 2]  # labels follow train/'s class list
    for split in (s.train, s.val, s.test):
        _check_labels(split, s.classes)
    limited = create_dataset(f"folder:{tmp_path}", DataOptions(limit=4))
    assert len(limited.train) == 4 and len(limited.val) == 4


def test_folder_train_and_test_without_val(tmp_path):
    _tree(tmp_path / "train", per_class=8)
    _tree(tmp_path / "test", per_class=2)
    s = create_dataset(f"folder:{tmp_path}", DataOptions(seed=0))
    assert len(s.test) == 6 and all("/test/" in p for p in s.test.paths)
    assert len(s.train) + len(s.val) == 24 and len(s.val) > 0


def test_folder_unknown_val_class(tmp_path):
    _tree(tmp_path / "train", classes=("ant", "bee"))
    _tree(tmp_path / "val", classes=("ant", "wasp"))
    with pytest.raises(DataError, match="wasp"):
        create_dataset(f"folder:{tmp_path}", DataOptions())


def test_folder_val_without_train(tmp_path):
    _tree(tmp_path / "val")
    with pytest.raises(DataError, match="no train/"):
        create_dataset(f"folder:{tmp_path}", DataOptions())


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_folder_corrupt_file(tmp_path, kind):
    root = _tree(tmp_path)
    bad = root / "bee" / "broken.png"
    if kind == "text":
        bad.write_text("this is not a png")
    else:
        _save(bad, "RGB", size=(64, 64))
        bad.write_bytes(bad.read_bytes()[:-200])
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png: .*--skip-bad-images") as e:
        create_dataset(f"folder:{root}", DataOptions())
    assert "\n" not in str(e.value)
    # Same when the size and channels are given and the header probe is skipped.
    with pytest.raises(DataError, match=r"broken\.png"):
        create_dataset(f"folder:{root}", DataOptions(image_size=16, channels=3))


def test_folder_skip_bad_images(tmp_path):
    root = _tree(tmp_path)
    (root / "ant" / "bad1.png").write_text("nope")
    (root / "cat" / "bad2.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    with pytest.warns(UserWarning, match="skipped 2"):
        s = create_dataset(f"folder:{root}", DataOptions(skip_bad_images=True))
    assert len(s.train) + len(s.val) + len(s.test) == 18
    assert any("skipped 2" in n and "bad1.png" in n for n in s.notes)


def test_folder_decompression_bomb(tmp_path, monkeypatch):
    root = _tree(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # our 40x30 images exceed twice this
    with pytest.raises(DataError, match="cannot read image"):
        create_dataset(f"folder:{root}", DataOptions())


def test_folder_truncated_stays_strict(tmp_path, monkeypatch):
    from PIL import ImageFile

    root = _tree(tmp_path)
    bad = _save(root / "ant" / "cut.png", "RGB", size=(64, 64))
    bad.write_bytes(bad.read_bytes()[:-200])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some other library might
    with pytest.raises(DataError, match="cut.png"):
        create_dataset(f"folder:{root}", DataOptions())
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the global is restored


def test_folder_empty_class_and_missing_paths(tmp_path):
    with pytest.raises(DataError, match="needs a path"):
        create_dataset("folder", DataOptions())
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere.*PATH/<class>"):
        create_dataset(f"folder:{missing}", DataOptions())
    root = _tree(tmp_path / "data")
    (root / "dog").mkdir()
    (root / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"dog has no images"):
        create_dataset(f"folder:{root}", DataOptions())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="class folder"):
        create_dataset(f"folder:{tmp_path / 'empty'}", DataOptions())
