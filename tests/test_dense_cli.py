"""`recogen detect|segment train|eval|predict` through the real command line, on files the test writes.

Subprocess tests: what a user types, with user mistakes giving one `error:` line, exit 2 and no run left
half-written.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import one_line_error as _one_line_error, run_cli
from recogen.data.formats import write_coco, write_masks
from recogen.data.shapes_scenes import make_scenes

SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross", "ellipse", "diamond", "pentagon", "heart"]
DETECT_TINY = ["--model", "fcos-s", "--model-kwargs", '{"width": 8, "fpn_channels": 32}', "--epochs", "1",
               "--batch-size", "8", "--augment", "none", "--no-progress"]
SEGMENT_TINY = ["--model", "unet", "--model-kwargs", '{"width": 4, "depth": 2}', "--epochs", "1", "--batch-size", "8",
                "--augment", "none", "--no-progress"]


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory) -> Path:
    """40 generated scenes at 64 px written as PNGs + one COCO JSON (boxes and RLE masks)."""
    root = tmp_path_factory.mktemp("coco")
    return write_coco(make_scenes(40, 64, seed=3), SHAPES, root / "annotations.json")


def test_detect_train_eval_predict_from_a_coco_folder(coco_set, tmp_path):
    run = tmp_path / "det"
    r = run_cli("detect", "train", "--data", f"coco:{coco_set}", *DETECT_TINY, "--out", str(run))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mAP" in r.stdout and (run / "model.json").is_file() and (run / "metrics.json").is_file()

    m = json.loads(run_cli("detect", "eval", str(run), "--json", "--no-write").stdout)
    assert {"map", "map_50", "map_75", "mar_100", "per_class", "num_images"} <= set(m)
    assert 0.0 <= m["map"] <= m["map_50"] <= 1.0

    images = sorted((coco_set.parent).rglob("*.png"))[:2]
    r = run_cli("detect", "predict", str(run), *map(str, images), "--json", "--conf", "0.01", "--max-det", "3",
                "--save", str(tmp_path / "drawn"))
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(r.stdout)
    assert [Path(x["path"]).name for x in results] == [p.name for p in images]
    for x in results:
        assert x["size"] == [64, 64] and len(x["detections"]) <= 3
        for d in x["detections"]:
            assert d["label"] in SHAPES and d["score"] >= 0.01 and 0 <= d["box"][0] <= d["box"][2] <= 64
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == sorted(p.name for p in images)


def test_segment_train_eval_predict_from_a_masks_folder(tmp_path):
    scenes = make_scenes(40, 32, seed=4)
    root = write_masks(scenes, ["background", *SHAPES], tmp_path / "set")
    run = tmp_path / "seg"
    r = run_cli("segment", "train", "--data", f"masks:{root}", *SEGMENT_TINY, "--out", str(run))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mIoU" in r.stdout and (run / "metrics.json").is_file()

    m = json.loads(run_cli("segment", "eval", str(run), "--json", "--no-write").stdout)
    assert {"miou", "pixel_accuracy", "mean_dice", "per_class"} <= set(m) and 0 <= m["miou"] <= 1

    # A differently sized RGBA image: the mask comes back at the image's own size.
    img = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 70, 4), dtype=np.uint8), "RGBA").save(img)
    r = run_cli("segment", "predict", str(run), str(img), "--json", "--save", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    (res,) = json.loads(r.stdout)
    assert res["size"] == [45, 70] and sum(res["class_pixels"].values()) == 45 * 70
    mask = np.asarray(Image.open(tmp_path / "out" / "odd_mask.png"))
    assert mask.shape == (45, 70) and set(np.unique(mask).tolist()) <= set(range(len(SHAPES) + 1))
    assert (tmp_path / "out" / "odd_overlay.png").is_file()


def _coco_with(tmp_path: Path, coco_set: Path, change) -> Path:
    d = json.loads(coco_set.read_text())
    change(d)
    out = coco_set.parent / f"bad_{tmp_path.name}.json"
    out.write_text(json.dumps(d))
    return out


@pytest.mark.parametrize("change, needle", [
    (lambda d: d["annotations"][0].update(bbox=[50, 50, 40, 40]), "outside"),
    (lambda d: d["annotations"][0].update(category_id=999), "999"),
    (lambda d: d.update(annotations=[]), "no annotations"),
])
def test_bad_annotations_stop_training_with_one_line_and_write_nothing(coco_set, tmp_path, change, needle):
    bad = _coco_with(tmp_path, coco_set, change)
    run = tmp_path / "never"
    _one_line_error(run_cli("detect", "train", "--data", f"coco:{bad}", *DETECT_TINY, "--out", str(run)), needle)
    assert not run.exists() or not any(run.iterdir())


def test_masks_of_the_wrong_size_stop_segment_training(tmp_path):
    root = write_masks(make_scenes(20, 32, seed=5), ["background", *SHAPES], tmp_path / "set")
    first = sorted((root / "masks").glob("*.png"))[0]
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(first)
    run = tmp_path / "never"
    _one_line_error(run_cli("segment", "train", "--data", f"masks:{root}", *SEGMENT_TINY, "--out", str(run)), first.name)
    assert not run.exists() or not any(run.iterdir())


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 7])
def test_schedules_work_for_runs_of_a_few_steps(steps):
    # A one-epoch run on a handful of images used to crash inside OneCycleLR (division by zero).
    import torch

    from recogen.config import TrainConfig
    from recogen.tasks.trainer import configure_optimizers

    for schedule in ("onecycle", "cosine"):
        p = torch.nn.Parameter(torch.zeros(1))
        out = configure_optimizers(TrainConfig(data="x", lr=0.1, schedule=schedule), [p], steps)
        opt = out["optimizer"] if isinstance(out, dict) else out
        sched = out["lr_scheduler"]["scheduler"] if isinstance(out, dict) else None
        for _ in range(steps):
            opt.step()
            if sched is not None:
                sched.step()
        assert all(0 <= g["lr"] <= 0.1 + 1e-12 for g in opt.param_groups)
