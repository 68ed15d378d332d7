"""COCO / YOLO / mask-folder readers, conversions and the box/mask-aware augmentation.

Data sets are written to tmp_path from seeded ``shapes`` scenes (or built by hand where the
exact pixels matter) and read back through ``create_dense_dataset``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as cmask

from recogen.data.base import DataOptions
from recogen.data.dense import create_dense_dataset
from recogen.data.dense_transforms import DenseAugment, _tight_boxes
from recogen.data.formats import auto_image_size, convert, write_coco, write_masks, write_yolo
from recogen.data.shapes import SHAPE_CLASSES
from recogen.data.shapes_scenes import make_scenes
from recogen.data.transforms import PRESETS, AugmentPreset
from recogen.errors import DataError

CLASSES = list(SHAPE_CLASSES)


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(24, 64, seed=1)


def _index(path: str) -> int:
    return int(Path(path).stem.split("_")[1])  # img_00012.png -> 12


def _all_sets(splits):
    return [s for s in (splits.train, splits.val, splits.test) if s is not None]


def _save(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    (img.convert(mode) if mode else img).save(path)


def _one_line_error(spec: str, opts: DataOptions | None = None) -> str:
    with pytest.raises(DataError) as e:
        create_dense_dataset(spec, opts or DataOptions())
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------------ COCO


def test_coco_reads_back_boxes_labels_masks(tmp_path, scenes):
    write_coco(scenes, CLASSES, tmp_path / "annotations.json")
    splits = create_dense_dataset(f"coco:{tmp_path / 'annotations.json'}", DataOptions())
    assert splits.classes == CLASSES and splits.seg_classes == ["background", *CLASSES]
    assert splits.image_size == (64, 64) and splits.channels == 3
    seen = []
    for ds in _all_sets(splits):
        for j, p in enumerate(ds.paths):
            i = _index(p)
            seen.append(i)
            assert ds.orig_sizes[j] == (64, 64)
            assert torch.equal(ds.images[j], scenes.images[i])
            assert torch.equal(ds.boxes[j], scenes.boxes[i]) and torch.equal(ds.labels[j], scenes.labels[i])
            assert torch.equal(ds.masks[j], scenes.masks[i])  # RLE written per object, painted back exactly
    assert sorted(seen) == list(range(len(scenes)))


def test_coco_resized_read_scales_boxes_and_masks(tmp_path, scenes):
    write_coco(scenes, CLASSES, tmp_path / "annotations.json")
    splits = create_dense_dataset(f"coco:{tmp_path / 'annotations.json'}", DataOptions(image_size=32))
    assert splits.image_size == (32, 32)
    for ds in _all_sets(splits):
        for j, p in enumerate(ds.paths):
            i = _index(p)
            assert torch.allclose(ds.boxes[j], scenes.boxes[i] / 2)
            # NEAREST keeps class values; at half size most pixels agree with a 2x subsample.
            agree = (ds.masks[j] == scenes.masks[i][::2, ::2]).float().mean()
            assert agree > 0.85 and set(ds.masks[j].unique().tolist()) <= set(scenes.masks[i].unique().tolist())
            assert ds.orig_sizes[j] == (64, 64)


def _rle_uncompressed(m: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with zeros."""
    flat = np.asfortranarray(m).ravel(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], edges])).tolist()
    if counts and counts[0] == 0 and flat[0] == 0:
        counts = counts[1:]
    return {"size": list(m.shape), "counts": [int(c) for c in counts]}


def _rle_compressed(m: np.ndarray) -> dict:
    rle = cmask.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": list(m.shape), "counts": rle["counts"].decode()}


def _bbox(m: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(m)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def _coco_folder(root: Path, train: dict, val: dict | None = None) -> Path:
    """A coco:FOLDER layout with train.json / val.json and 64 px PNGs under images/."""
    rng = np.random.default_rng(0)
    for data in (train, val or train):
        for im in data["images"]:
            _save(root / "images" / im["file_name"], rng.integers(0, 255, (im["height"], im["width"], 3), dtype=np.uint8))
    (root / "train.json").write_text(json.dumps(train))
    (root / "val.json").write_text(json.dumps(val or train))
    return root


def test_coco_polygon_rle_crowd_and_category_ids(tmp_path):
    h = w = 64
    blob = np.zeros((h, w), np.uint8)
    blob[35:50, 10:30] = 1
    blob[40:44, 15:20] = 0  # a hole: RLE keeps it, a polygon could not
    yy, xx = np.mgrid[:h, :w]
    disc = ((yy - 20) ** 2 + (xx - 45) ** 2 <= 64).astype(np.uint8)
    crowd = np.zeros((h, w), np.uint8)
    crowd[40:60, 40:60] = 1
    tri = [5, 5, 30, 5, 5, 30]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 5, 25, 25], "area": 312.5, "iscrowd": 0, "segmentation": [tri]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": _bbox(blob), "area": int(blob.sum()), "iscrowd": 0,
         "segmentation": _rle_uncompressed(blob)},
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": _bbox(disc), "area": int(disc.sum()), "iscrowd": 0,
         "segmentation": _rle_compressed(disc)},
        {"id": 4, "image_id": 1, "category_id": 3, "bbox": [40, 40, 20, 20], "area": 400, "iscrowd": 1,
         "segmentation": _rle_compressed(crowd)},
        {"id": 5, "image_id": 1, "category_id": 3, "bbox": [20, 52, 10, 8], "area": 80, "iscrowd": 0},  # box only
    ]
    cats = [{"id": 7, "name": "bird"}, {"id": 3, "name": "ant"}]  # ids neither sorted nor contiguous
    train = {"images": [{"id": 1, "file_name": "a.png", "width": w, "height": h}], "annotations": anns, "categories": cats}
    val = {"images": [{"id": 9, "file_name": "b.png", "width": w, "height": h}], "categories": cats,
           "annotations": [{"id": 1, "image_id": 9, "category_id": 3, "bbox": [1, 1, 10, 10], "iscrowd": 0}]}
    root = _coco_folder(tmp_path / "c", train, val)
    splits = create_dense_dataset(f"coco:{root}", DataOptions())

    assert splits.classes == ["ant", "bird"]  # categories sorted by id, mapped to 0..K-1
    assert splits.seg_classes == ["background", "ant", "bird"]
    assert len(splits.train) == 1 and len(splits.val) == 1 and splits.test is None  # the files' own split
    ds = splits.train
    assert ds.labels[0].tolist() == [1, 0, 1, 0]  # the crowd annotation is no training target
    assert torch.allclose(ds.boxes[0][0], torch.tensor([5.0, 5, 30, 30]))

    # The expected map, straight from pycocotools: larger objects first, box-only object unknown
    # (255) where nothing else is known, the crowd region ignored.
    expect = np.zeros((h, w), np.uint8)
    poly = cmask.decode(cmask.merge(cmask.frPyObjects([tri], h, w)))
    decoded = {
        1: (poly, 2),
        2: (cmask.decode(cmask.frPyObjects(_rle_uncompressed(blob), h, w)), 1),
        3: (cmask.decode({"size": [h, w], "counts": _rle_compressed(disc)["counts"].encode()}), 2),
    }
    assert np.array_equal(decoded[2][0], blob) and np.array_equal(decoded[3][0], disc)
    for k in sorted(decoded, key=lambda k: -anns[k - 1]["area"]):
        expect[decoded[k][0].astype(bool)] = decoded[k][1]
    box_only = np.zeros((h, w), bool)
    box_only[52:60, 20:30] = True
    expect[box_only & (expect == 0)] = 255
    expect[crowd.astype(bool)] = 255
    assert np.array_equal(ds.masks[0].numpy(), expect)
    assert (ds.masks[0] == 255).sum() > 0 and poly.sum() > 250


def _valid_coco(root: Path) -> dict:
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
            "annotations": [{"id": 11, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "iscrowd": 0,
                             "segmentation": [[2, 2, 12, 2, 12, 12]]}],
            "categories": [{"id": 1, "name": "thing"}]}
    _coco_folder(root, data)
    return data


def _mutate(root: Path, fn) -> None:
    data = _valid_coco(root)
    fn(data)
    (root / "train.json").write_text(json.dumps(data))


@pytest.mark.parametrize("fn, expect", [
    (lambda d: d["annotations"][0].update(bbox=[25, 2, 10, 10]), r"train\.json: annotation id 11 .*outside the 32x32 image"),
    (lambda d: d["annotations"][0].update(bbox=[2, 2, 0, 10]), r"train\.json: annotation id 11 .*both must be positive"),
    (lambda d: d["annotations"][0].update(category_id=5), r"train\.json: annotation id 11 has unknown category_id 5 \(known: 1\)"),
    (lambda d: d.update(images=[]), r"train\.json lists no images"),
    (lambda d: d.update(annotations=[]), r"train\.json has no annotations"),
    (lambda d: d["images"][0].update(file_name="missing.png"), r"image id 1: file missing\.png is in neither"),
    (lambda d: d["annotations"][0].update(segmentation={"size": [16, 16], "counts": "PP0"}),
     r"annotation id 11 .*RLE mask size \[16, 16\] .* differs from the image's \[32, 32\]"),
    (lambda d: d["annotations"][0].update(image_id=4), r"annotation id 11 refers to image_id 4"),
    (lambda d: d["categories"].append({"id": 1, "name": "other"}), r"category id 1 appears twice"),
])
def test_coco_bad_inputs_are_one_line_errors(tmp_path, fn, expect):
    _mutate(tmp_path, fn)
    assert __import__("re").search(expect, _one_line_error(f"coco:{tmp_path}")), _one_line_error(f"coco:{tmp_path}")


def test_coco_file_level_errors(tmp_path):
    (tmp_path / "train.json").write_text("")
    assert "train.json is empty" in _one_line_error(f"coco:{tmp_path}")
    (tmp_path / "train.json").write_text('{"images": [\n oops')
    assert "is not valid JSON (line 2" in _one_line_error(f"coco:{tmp_path}")
    assert "does not exist" in _one_line_error(f"coco:{tmp_path / 'nope.json'}")


def test_coco_size_on_disk_must_match_json_and_overshoot_is_clipped(tmp_path):
    _mutate(tmp_path, lambda d: d["annotations"][0].update(bbox=[22.5, 2, 10, 10]))  # 0.5 px past the edge
    splits = create_dense_dataset(f"coco:{tmp_path}", DataOptions(image_size=32))
    assert torch.allclose(splits.train.boxes[0], torch.tensor([[22.5, 2, 32, 12]]))
    _mutate(tmp_path / "b", lambda d: d["images"][0].update(width=40))
    msg = _one_line_error(f"coco:{tmp_path / 'b'}")
    assert "a.png is 32x32 but" in msg and "train.json says 40x32" in msg


def test_coco_colour_modes_and_channels(tmp_path):
    rng = np.random.default_rng(0)
    data = _valid_coco(tmp_path)
    _save(tmp_path / "images" / "a.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))  # grayscale
    data["images"].append({"id": 2, "file_name": "b.png", "width": 32, "height": 32})
    _save(tmp_path / "images" / "b.png", rng.integers(0, 255, (32, 32, 4), dtype=np.uint8))  # RGBA
    data["images"].append({"id": 3, "file_name": "c.png", "width": 32, "height": 32})
    _save(tmp_path / "images" / "c.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), "P")  # palette
    (tmp_path / "train.json").write_text(json.dumps(data))
    rgb = create_dense_dataset(f"coco:{tmp_path}", DataOptions()).train
    assert rgb.images.shape == (3, 3, 64, 64)  # 32 px images: the auto size is the 64 px floor
    gray = rgb.images[[p.endswith("a.png") for p in rgb.paths].index(True)]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert create_dense_dataset(f"coco:{tmp_path}", DataOptions(channels=1)).train.images.shape[1] == 1


def test_corrupt_image_named_or_skipped(tmp_path):
    data = _valid_coco(tmp_path)
    data["images"].append({"id": 2, "file_name": "bad.png", "width": 32, "height": 32})
    (tmp_path / "images" / "bad.png").write_bytes((tmp_path / "images" / "a.png").read_bytes()[:60])
    (tmp_path / "train.json").write_text(json.dumps(data))
    assert "cannot read image" in _one_line_error(f"coco:{tmp_path}") and "bad.png" in _one_line_error(f"coco:{tmp_path}")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        splits = create_dense_dataset(f"coco:{tmp_path}", DataOptions(skip_bad_images=True))
    assert len(splits.train) == 1


def test_auto_image_size():
    assert auto_image_size([(30, 40)] * 3) == 64
    assert auto_image_size([(100, 150), (90, 120), (110, 100)]) == 96
    assert auto_image_size([(480, 640)]) == 480
    assert auto_image_size([(3000, 4000)]) == 640


# ------------------------------------------------------------------------------------------ YOLO


def _read_yolo_labels(root: Path, split: str) -> dict[str, np.ndarray]:
    return {p.stem: np.loadtxt(p, ndmin=2).reshape(-1, 5) for p in sorted((root / "labels" / split).glob("*.txt"))}


def test_yolo_reads_back_given_splits(tmp_path, scenes):
    write_yolo({"train": scenes.subset(range(16)), "val": scenes.subset(range(16, 24))}, CLASSES, tmp_path)
    splits = create_dense_dataset(f"yolo:{tmp_path}", DataOptions())
    assert splits.classes == CLASSES and splits.train.masks is None
    assert len(splits.train) == 16 and len(splits.val) == 8 and splits.test is None
    for ds, offset in ((splits.train, 0), (splits.val, 16)):
        for j, p in enumerate(ds.paths):
            i = _index(p) + offset
            assert torch.equal(ds.images[j], scenes.images[i])
            assert torch.allclose(ds.boxes[j], scenes.boxes[i], atol=1e-3) and torch.equal(ds.labels[j], scenes.labels[i])


def _yolo_tree(root: Path, yaml_text: str, labels: dict[str, str], size=(40, 60)) -> Path:
    rng = np.random.default_rng(0)
    for name, text in labels.items():
        split, stem = name.split("/")
        _save(root / "images" / split / f"{stem}.png", rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        if text is not None:
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text(yaml_text)
    return root


def test_yolo_layout_variants(tmp_path):
    # names as a dict, a path: key, an image without a label file, a non-square image.
    root = _yolo_tree(tmp_path / "ds", "path: ds2\ntrain: images/train\nval: images/val\nnames: {0: cat, 1: dog}\n",
                      {"train/a": "1 0.5 0.5 0.5 0.25\n\n", "train/b": None, "val/c": "0 0.25 0.5 0.2 0.2\n"})
    shutil.move(root / "images", root / "ds2" / "images")
    shutil.move(root / "labels", root / "ds2" / "labels")
    splits = create_dense_dataset(f"yolo:{root}", DataOptions(image_size=64))
    assert splits.classes == ["cat", "dog"]
    ds = splits.train
    a, b = ds.paths.index(str(root / "ds2/images/train/a.png")), ds.paths.index(str(root / "ds2/images/train/b.png"))
    assert ds.orig_sizes[a] == (40, 60)
    # (cx, cy, w, h) = (0.5, 0.5, 0.5, 0.25) of a 60x40 image is (15, 15, 45, 25); scaled to 64x64:
    assert torch.allclose(ds.boxes[a], torch.tensor([[16.0, 24, 48, 40]])) and ds.labels[a].tolist() == [1]
    assert ds.boxes[b].shape == (0, 4) and ds.labels[b].shape == (0,)  # no label file: no objects

    # val pointing at train (Ultralytics needs a val entry) means "no held-out images": split train.
    many = {f"train/i{k}": f"{k % 2} 0.5 0.5 0.5 0.5\n" for k in range(20)}
    root = _yolo_tree(tmp_path / "same", "train: images/train\nval: images/train\nnames: [cat, dog]\n", many, size=(32, 32))
    splits = create_dense_dataset(f"yolo:{root}", DataOptions())
    assert len(splits.train) + len(splits.val) + len(splits.test) == 20 and len(splits.val) > 0


def test_yolo_seg_polygons_become_masks(tmp_path):
    root = _yolo_tree(tmp_path, "train: images/train\nval: images/val\nnames: [a, b]\n",
                      {"train/x": "1 0.1 0.1 0.5 0.1 0.1 0.5\n", "val/y": "0 0.5 0.5 0.2 0.2\n"}, size=(64, 64))
    ds = create_dense_dataset(f"yolo:{root}", DataOptions()).train
    tri = [6.4, 6.4, 32.0, 6.4, 6.4, 32.0]
    expect = cmask.decode(cmask.merge(cmask.frPyObjects([tri], 64, 64))) * 2  # class 1 -> pixel value 2
    assert np.array_equal(ds.masks[0].numpy(), expect)
    assert torch.allclose(ds.boxes[0], torch.tensor([[6.4, 6.4, 32.0, 32.0]]))


@pytest.mark.parametrize("text, expect", [
    ("2 0.5 0.5 0.2 0.2\n", r"b\.txt: line 1: class 2 but data\.yaml lists 2 names"),
    ("0 0.5 0.5 0.2\n", r"b\.txt: line 1: malformed label line"),
    ("0 0.5 0.5 x 0.2\n", r"b\.txt: line 1: malformed label line"),
    ("0.5 0.5 0.5 0.2 0.2\n", r"b\.txt: line 1: malformed label line"),
    ("0 0.5 0.5 0.2 0.2\n1 0.95 0.5 0.2 0.2\n", r"b\.txt: line 2: box .* outside the 32x32 image"),
    ("0 0.5 0.5 0.0 0.2\n", r"b\.txt: line 1: .*both must be positive"),
])
def test_yolo_bad_labels_are_one_line_errors(tmp_path, text, expect):
    root = _yolo_tree(tmp_path, "train: images/train\nval: images/val\nnames: [a, b]\n",
                      {"train/a": "0 0.5 0.5 0.5 0.5\n", "train/b": text, "val/c": ""}, size=(32, 32))
    assert __import__("re").search(expect, _one_line_error(f"yolo:{root}"))


def test_yolo_yaml_errors(tmp_path):
    assert "data.yaml does not exist" in _one_line_error(f"yolo:{tmp_path}")
    root = _yolo_tree(tmp_path, "train: images/train\nnc: 3\nnames: [a, b]\n", {"train/a": "0 0.5 0.5 0.5 0.5\n"}, size=(32, 32))
    assert "nc is 3 but names lists 2" in _one_line_error(f"yolo:{root}")
    (root / "data.yaml").write_text("train: images/train\nval: images/nowhere\nnames: [a]\n")
    assert "images/nowhere exists neither" in _one_line_error(f"yolo:{root}")
    (root / "data.yaml").write_text("train: images/train\nnames: [a]\n")
    (root / "labels" / "train" / "a.txt").write_text("\n")
    assert "no objects in any label file" in _one_line_error(f"yolo:{root}")
    (root / "data.yaml").write_text("")
    assert "is empty or not a mapping" in _one_line_error(f"yolo:{root}")


# ------------------------------------------------------------------------------------------ masks


def test_masks_folder_boxes_from_components(tmp_path):
    single = make_scenes(24, 64, seed=2, max_objects=1)  # one object each: one connected component
    write_masks(single, ["background", *CLASSES], tmp_path)
    splits = create_dense_dataset(f"masks:{tmp_path}", DataOptions())
    assert splits.classes == CLASSES and splits.seg_classes == ["background", *CLASSES]
    for ds in _all_sets(splits):
        for j, p in enumerate(ds.paths):
            i = _index(p)
            assert torch.equal(ds.masks[j], single.masks[i]) and torch.equal(ds.images[j], single.images[i])
            assert torch.equal(ds.boxes[j], single.boxes[i]) and torch.equal(ds.labels[j], single.labels[i])


def test_masks_folder_ignore_and_default_names(tmp_path):
    m = np.zeros((32, 32), np.uint8)
    m[2:10, 2:12] = 2
    m[20:30, 20:25] = 1
    m[0:2, :] = 255  # ignore stays ignore, is no object
    rng = np.random.default_rng(0)
    for k in range(20):
        _save(tmp_path / "images" / f"i{k}.jpg", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
        _save(tmp_path / "masks" / f"i{k}.png", m)
    splits = create_dense_dataset(f"masks:{tmp_path}", DataOptions(image_size=32))
    assert splits.seg_classes == ["background", "class1", "class2"] and splits.classes == ["class1", "class2"]
    ds = splits.train
    assert (ds.masks[0] == 255).sum() == 64
    order = ds.labels[0].argsort()
    assert ds.labels[0][order].tolist() == [0, 1]
    assert torch.equal(ds.boxes[0][order], torch.tensor([[20.0, 20, 25, 30], [2, 2, 12, 10]]))
    assert any("classes.txt" in n for n in splits.notes)


def test_masks_folder_errors(tmp_path):
    rng = np.random.default_rng(0)
    _save(tmp_path / "images" / "a.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    _save(tmp_path / "masks" / "a.png", np.zeros((16, 32), np.uint8))
    assert "mask " in (msg := _one_line_error(f"masks:{tmp_path}")) and "a.png is 32x16 but image" in msg
    _save(tmp_path / "masks" / "a.png", np.zeros((32, 32, 3), np.uint8))
    assert "is a RGB image; save class indices" in _one_line_error(f"masks:{tmp_path}")
    _save(tmp_path / "masks" / "a.png", np.full((32, 32), 3, np.uint8))
    (tmp_path / "classes.txt").write_text("background\nthing\n")
    assert "has class index 3 but" in _one_line_error(f"masks:{tmp_path}")
    _save(tmp_path / "masks" / "a.png", np.ones((32, 32), np.uint8))
    _save(tmp_path / "images" / "b.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    assert "image " + str(tmp_path / "images" / "b.png") + " has no mask" in _one_line_error(f"masks:{tmp_path}")
    _save(tmp_path / "masks" / "b.png", np.ones((32, 32), np.uint8))
    _save(tmp_path / "masks" / "c.png", np.ones((32, 32), np.uint8))
    assert "c.png has no image" in _one_line_error(f"masks:{tmp_path}")


# ------------------------------------------------------------------------------------------ conversions


def test_convert_yolo_coco_yolo_round_trip(tmp_path, scenes):
    src = tmp_path / "yolo"
    write_yolo({"train": scenes.subset(range(16)), "val": scenes.subset(range(16, 24))}, CLASSES, src)
    coco = convert(f"yolo:{src}", "coco", tmp_path / "coco")
    back = convert(f"coco:{coco}", "yolo", tmp_path / "back")
    assert (coco / "train.json").is_file() and (coco / "val.json").is_file()
    import yaml

    assert yaml.safe_load((back / "data.yaml").read_text())["names"] == dict(enumerate(CLASSES))
    for split in ("train", "val"):
        a, b = _read_yolo_labels(src, split), _read_yolo_labels(back, split)
        assert a.keys() == b.keys() and len(a) > 0
        for k in a:
            assert np.array_equal(a[k][:, 0], b[k][:, 0])
            assert np.allclose(a[k][:, 1:], b[k][:, 1:], rtol=1e-3, atol=1e-6)
        for img in (src / "images" / split).iterdir():  # copied, not re-encoded
            assert (back / "images" / split / img.name).read_bytes() == img.read_bytes()
    # The COCO output reads as the same data set.
    y = create_dense_dataset(f"yolo:{src}", DataOptions())
    c = create_dense_dataset(f"coco:{coco}", DataOptions())
    assert c.classes == y.classes
    for p, boxes in zip(c.train.paths, c.train.boxes):
        assert torch.allclose(boxes, y.train.boxes[[Path(q).name for q in y.train.paths].index(Path(p).name)], atol=1e-3)


def test_convert_refuses_and_leaves_nothing_on_failure(tmp_path, scenes, monkeypatch):
    src = tmp_path / "yolo"
    write_yolo({"train": scenes.subset(range(8)), "val": scenes.subset(range(8, 12))}, CLASSES, src)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(DataError, match="already exists and is not empty"):
        convert(f"yolo:{src}", "coco", tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep"
    with pytest.raises(DataError, match="cannot convert from 'masks'"):
        convert(f"masks:{src}", "coco", tmp_path / "new")

    from recogen.data.formats import writers

    real, calls = shutil.copyfile, []

    def flaky(a, b):
        calls.append(a)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(a, b)

    monkeypatch.setattr(writers.shutil, "copyfile", flaky)
    with pytest.raises(OSError, match="disk full"):
        convert(f"yolo:{src}", "coco", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "yolo"]  # no half-written temp folder
    # A bad source fails while reading, before anything is written.
    (src / "labels" / "train" / "img_00000.txt").write_text("0 0.5 0.5 0.5\n")
    with pytest.raises(DataError, match="malformed label line"):
        convert(f"yolo:{src}", "coco", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "yolo"]


def test_convert_coco_drops_crowd_with_a_warning(tmp_path):
    data = _valid_coco(tmp_path / "c")
    data["annotations"].append({"id": 12, "image_id": 1, "category_id": 1, "bbox": [20, 20, 5, 5], "iscrowd": 1})
    (tmp_path / "c" / "train.json").write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="drops 1 crowd"):
        out = convert(f"coco:{tmp_path / 'c'}", "yolo", tmp_path / "y")
    assert (out / "labels" / "train" / "a.txt").read_text().count("\n") == 1


# ------------------------------------------------------------------------------------------ augmentation


def test_hflip_mirrors_boxes_exactly():
    img = torch.zeros((1, 3, 32, 48), dtype=torch.uint8)
    img[0, :, 4:10, 3:13] = 200
    box = torch.tensor([[3.0, 4, 13, 10]])
    aug = DenseAugment(AugmentPreset(hflip=True))
    flipped = kept = 0
    for seed in range(12):
        torch.manual_seed(seed)
        out, boxes, labels, _ = aug(img, [box], [torch.tensor([5])], None)
        if torch.equal(out, img):
            kept += 1
            assert torch.equal(boxes[0], box)
        else:
            flipped += 1
            assert torch.equal(out, img.flip(-1))
            assert torch.equal(boxes[0], torch.tensor([[48.0 - 13, 4, 48 - 3, 10]]))
        assert labels[0].tolist() == [5]
    assert flipped and kept


@pytest.mark.parametrize("preset", ["light", "strong"])
def test_boxes_follow_masks_under_presets(preset):
    single = make_scenes(48, 64, seed=3, max_objects=1)
    aug = DenseAugment(PRESETS[preset])
    torch.manual_seed(0)
    images, boxes, labels, masks = aug(single.images, single.boxes, single.labels, single.masks)
    assert images.shape == single.images.shape and images.dtype == torch.uint8 and masks.shape == single.masks.shape
    assert not torch.equal(images, single.images)
    assert (masks == 255).any()  # areas brought in by the affine are ignore
    for i in range(len(single)):
        obj = (masks[i] != 0) & (masks[i] != 255)
        assert set(masks[i][obj].tolist()) <= {int(single.labels[i][0]) + 1}  # no class is invented
        if len(boxes[i]):
            assert labels[i].tolist() == single.labels[i].tolist()
            assert (boxes[i][0] - _tight_boxes(obj[None])[0]).abs().max() <= 1.0
        else:
            assert obj.sum() < 4  # only an object pushed (almost) out of the image is dropped
    # Without masks the boxes are v2's boxes around the moved corners: the same draw, and they
    # contain the object.
    torch.manual_seed(0)
    images2, boxes2, _, _ = aug(single.images, single.boxes, single.labels, None)
    assert torch.equal(images2, images)
    for b, b2 in zip(boxes, boxes2):
        if len(b) and len(b2):
            assert (b2[0, :2] <= b[0, :2] + 1).all() and (b2[0, 2:] >= b[0, 2:] - 1).all()


def test_affine_fills_image_0_mask_255():
    img = torch.full((1, 3, 32, 32), 200, dtype=torch.uint8)
    mask = torch.ones((1, 32, 32), dtype=torch.uint8)
    aug = DenseAugment(AugmentPreset(scale=(0.5, 0.5)))
    out, _, _, m = aug(img, [torch.zeros((0, 4))], [torch.zeros(0, dtype=torch.long)], mask)
    assert m[0, 0, 0] == 255 and m[0, 16, 16] == 1 and out[0, :, 0, 0].tolist() == [0, 0, 0] and out[0, 0, 16, 16] == 200


def test_degenerate_boxes_dropped_with_labels():
    img = torch.zeros((2, 3, 64, 64), dtype=torch.uint8)
    boxes = [torch.tensor([[0.0, 0, 3, 3], [22, 22, 42, 42]]), torch.zeros((0, 4))]
    labels = [torch.tensor([4, 7]), torch.zeros(0, dtype=torch.long)]
    aug = DenseAugment(AugmentPreset(scale=(0.5, 0.5)))  # shrinks about the centre, deterministic
    out, b, lab, _ = aug(img, boxes, labels, None)
    assert torch.allclose(b[0], torch.tensor([[27.0, 27, 37, 37]])) and lab[0].tolist() == [7]
    assert b[1].shape == (0, 4) and lab[1].shape == (0,)
    none = DenseAugment(PRESETS["none"])
    assert none(img, boxes, labels, None)[1] is boxes


def test_augment_is_seeded_and_keeps_thread_count(scenes):
    aug = DenseAugment(PRESETS["strong"])
    threads = torch.get_num_threads()
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(aug(scenes.images[:6], scenes.boxes[:6], scenes.labels[:6], scenes.masks[:6]))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][3], runs[1][3])
    assert all(torch.equal(x, y) for x, y in zip(runs[0][1], runs[1][1]))
    assert torch.get_num_threads() == threads
