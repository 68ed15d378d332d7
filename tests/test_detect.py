"""Object detection: models, COCO metrics against pycocotools, training, round trips, predict, errors."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from recogen.errors import DataError, ModelError, OfflineError
from recogen.metrics.detection import detection_metrics
from recogen.models import create_model, list_models
from recogen.tasks import detect

CLASSES = ["a", "b", "c"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def _json(p: Path):
    return json.loads(p.read_text())


def tiny(out: Path, **over) -> dict:
    """A few-second detection run: 80 shapes scenes at 64 px, a narrow fcos-s, 3 epochs."""
    opts = dict(data="shapes:80", image_size=64, model="fcos-s", model_kwargs={"width": 8, "fpn_channels": 32},
                epochs=3, batch_size=8, augment="light", out=str(out), progress=False, seed=0)
    opts.update(over)
    return opts


# ------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", [n for n, _ in list_models("detect")])
def test_every_detector_builds_and_runs_in_train_and_eval_mode(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=len(CLASSES), in_chans=3, image_size=64)
    x = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    target = [{"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([2])},
              {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]  # an image with no object
    model.train()
    # Batch 2: SSDlite's last feature maps are 1x1, and BatchNorm cannot train on one value per channel.
    losses = model(x, target)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad(), detect.postprocess(model, 0.0):
        out = model(x[:1])[0]
    assert out["boxes"].shape[1:] == (4,) and len(out["boxes"]) > 0
    # One output per object class plus torchvision's background (0); the task keeps 1..K as 0..K-1.
    assert int(out["labels"].max()) <= len(CLASSES)
    mine = detect._from_model_outputs([out])[0]
    assert len(mine["labels"]) and 0 <= int(mine["labels"].min()) and int(mine["labels"].max()) < len(CLASSES)
    assert float(out["boxes"].max()) <= 64.0  # the input size, not torchvision's 800 px default


def test_detector_input_mistakes_are_clear_errors():
    with pytest.raises(ModelError, match="3-channel"):
        create_model("fcos-s", num_classes=3, in_chans=1, image_size=64)
    with pytest.raises(ModelError, match="no pretrained weights"):
        create_model("fcos-s", num_classes=3, image_size=64, pretrained=True)


def test_pretrained_offline_is_one_clear_error(monkeypatch, tmp_path):
    def offline(*a, **k):
        raise socket.gaierror("offline (test)")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(OfflineError) as e:
        create_model("ssdlite", num_classes=3, image_size=64, pretrained=True)
    msg = str(e.value)
    assert "\n" not in msg and "--weights PATH" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "ssdlite320_mobilenet_v3_large_coco") in msg


# One per head type (fasterrcnn-resnet50 has fasterrcnn-mobilenet's).
@pytest.mark.parametrize("name", ["fasterrcnn-mobilenet", "retinanet-resnet50", "fcos-resnet50", "ssdlite"])
def test_pretrained_weights_load_and_the_class_head_is_replaced(name, monkeypatch):
    from torchvision.models._api import WeightsEnum

    # Stand-in for the COCO download: a 91-output detector's tensors, saved without BatchNorm
    # counters as torchvision's FrozenBatchNorm2d checkpoints are.
    coco = create_model(name, num_classes=90, image_size=64).state_dict()
    sd = {k: v for k, v in coco.items() if not k.endswith("num_batches_tracked")}
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: sd)
    model = create_model(name, num_classes=len(CLASSES), image_size=64, pretrained=True)
    own = model.state_dict()
    reused = {k for k in sd if k in own and own[k].shape == sd[k].shape and torch.equal(own[k], sd[k])}
    replaced = {k for k in own if k in sd and own[k].shape != sd[k].shape}
    assert replaced, "the class head still has COCO's 91 outputs"
    # Every other tensor, backbone included, came from the checkpoint; the new head's layers are fresh.
    assert any(k.startswith("backbone.") for k in reused)
    assert set(sd) - reused <= {k for k in sd if "cls" in k or "class" in k or "box_predictor" in k}
    # K + 1 = 4 outputs where COCO had 91 (per anchor): the first dimension shrank by 91 / 4.
    assert all(own[k].shape[0] * 91 == sd[k].shape[0] * (len(CLASSES) + 1) for k in replaced if own[k].ndim)


# ------------------------------------------------------------------------------------------ metrics
def _synthetic_detections(seed: int = 0, n_images: int = 25):
    """Ground truth plus predictions that jitter, miss, mislabel and invent boxes (seeded)."""
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in range(n_images):
        k = int(torch.randint(0, 5, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * 80
        wh = 8 + torch.rand(k, 2, generator=g) * 40
        boxes = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(0, len(CLASSES), (k,), generator=g)
        targets.append({"boxes": boxes, "labels": labels})
        keep = torch.rand(k, generator=g) > 0.2
        pb = boxes[keep] + torch.randn(int(keep.sum()), 4, generator=g) * 3
        pl = labels[keep].clone()
        flip = torch.rand(len(pl), generator=g) < 0.15
        pl[flip] = (pl[flip] + 1) % len(CLASSES)
        m = int(torch.randint(0, 3, (1,), generator=g))
        fxy = torch.rand(m, 2, generator=g) * 80
        pb = torch.cat([pb, torch.cat([fxy, fxy + 10 + torch.rand(m, 2, generator=g) * 30], 1)])
        pl = torch.cat([pl, torch.randint(0, len(CLASSES), (m,), generator=g)])
        preds.append({"boxes": pb, "scores": torch.rand(len(pl), generator=g), "labels": pl})
    return preds, targets


def _pycocotools_reference(preds, targets, cat_ids=None):
    """COCOeval run directly: returns (stats, precision array)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    xywh = lambda b: [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]  # noqa: E731
    anns, dets = [], []
    for i, (p, t) in enumerate(zip(preds, targets)):
        for b, lab in zip(t["boxes"], t["labels"]):
            w = xywh(b)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(lab), "bbox": w, "area": w[2] * w[3],
                         "iscrowd": 0})
        for b, s, lab in zip(p["boxes"], p["scores"], p["labels"]):
            dets.append({"image_id": i, "category_id": int(lab), "bbox": xywh(b), "score": float(s)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i} for i in range(len(targets))], "annotations": anns,
                      "categories": [{"id": c, "name": str(c)} for c in range(len(CLASSES))]}
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats, ev.eval["precision"]


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_metrics_match_pycocotools_cocoeval(backend):
    preds, targets = _synthetic_detections()
    m = detection_metrics(preds, targets, CLASSES, backend=backend)
    stats, precision = _pycocotools_reference(preds, targets)
    assert 0.1 < m["map"] < 0.9  # a non-trivial case
    assert m["map"] == pytest.approx(stats[0], abs=1e-6)
    assert m["map_50"] == pytest.approx(stats[1], abs=1e-6)
    assert m["map_75"] == pytest.approx(stats[2], abs=1e-6)
    assert m["mar_100"] == pytest.approx(stats[8], abs=1e-6)
    assert m["iou_thresholds"] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95] and m["backend"] == backend
    for k, name in enumerate(CLASSES):
        class_stats, _ = _pycocotools_reference(preds, targets, cat_ids=[k])
        assert m["per_class"][name]["ap"] == pytest.approx(class_stats[0], abs=1e-6)
        assert m["per_class"][name]["ap50"] == pytest.approx(class_stats[1], abs=1e-6)
        curve = precision[0, :, k, 0, -1]
        got = np.array([np.nan if v is None else v for v in m["pr_curves"][name]["precision"]])
        assert np.allclose(got, np.where(curve > -1, curve, np.nan), atol=1e-6, equal_nan=True)


def test_metrics_of_perfect_and_empty_predictions():
    _, targets = _synthetic_detections()
    perfect = [{"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])), "labels": t["labels"]} for t in targets]
    m = detection_metrics(perfect, targets, CLASSES + ["never"])
    assert m["map"] == pytest.approx(1.0) and m["map_50"] == pytest.approx(1.0)
    assert m["per_class"]["never"] == {"ap": None, "ap50": None}  # no ground truth: undefined, not 0
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
             for _ in targets]
    assert detection_metrics(empty, targets, CLASSES)["map_50"] == 0.0


# ----------------------------------------------------------------------------------------- training
# 8 epochs of 280 scenes at 64 px, about a minute single-threaded on the CPU of BENCHMARKS.md.
# Measured (seed 0): test mAP@.5 0.129 (mAP 0.069), up from 0.016 after the first epoch; the threshold
# leaves margin for other CPUs' kernels.
TRAINED = dict(data="shapes:400", image_size=64, model="fcos-s", epochs=8, batch_size=8, lr=4e-3, augment="none",
               progress=False, seed=0)
MIN_MAP50 = 0.08


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    return detect.train(**TRAINED, out=str(tmp_path_factory.mktemp("det") / "run"))


@pytest.mark.slow
def test_tiny_detector_learns_shapes_and_writes_the_run_folder(trained_run):
    from recogen.data import DataOptions
    from recogen.data.dense import create_dense_dataset

    m = _json(trained_run / "metrics.json")
    n_test = len(create_dense_dataset("shapes:400", DataOptions(image_size=64, channels=3)).test)
    assert m["split"] == "test" and m["num_images"] == n_test
    assert m["map_50"] >= MIN_MAP50, m["map_50"]
    assert 0 < m["map"] <= m["map_50"]
    assert set(m["per_class"]) == set(detect.load(trained_run).classes)
    for f in ["model.safetensors", "model.json", "history.json", "checkpoints/best.ckpt", "pr_curve.png",
              "predictions.png", "config.yaml"]:
        assert (trained_run / f).is_file(), f
    history = _json(trained_run / "history.json")
    assert [r["epoch"] for r in history] == list(range(TRAINED["epochs"]))
    assert history[-1]["val_map_50"] > history[0]["val_map_50"]
    card = _json(trained_run / "model.json")
    assert card["task"] == "detect" and card["image_size"] == 64 and card["normalize"]["applied_by"] == "model"
    # The best epoch's val mAP, recomputed through the portable model and evaluate(): the same number.
    best = max(r["val_map"] for r in history)
    assert detect.evaluate(trained_run, split="val", write=False)["map"] == pytest.approx(best, abs=1e-6)


@pytest.mark.slow
def test_checkpoint_and_portable_model_give_identical_detections(trained_run):
    from recogen.data import DataOptions
    from recogen.data.dense import create_dense_dataset

    det = detect.load(trained_run)
    images = create_dense_dataset("shapes:400", DataOptions(image_size=64, channels=3)).test.images[:8]
    net = create_model("fcos-s", num_classes=10, in_chans=3, image_size=64,
                       weights=trained_run / "checkpoints" / "best.ckpt").eval()
    for a, b in zip(detect.detect_batch(det.model, images), detect.detect_batch(net, images)):
        for k in ("boxes", "scores", "labels"):
            assert torch.equal(a[k], b[k])


def _scene_png(tmp_path: Path, scale: tuple[int, int] = (1, 1)) -> Path:
    from PIL import Image

    from recogen.data import DataOptions
    from recogen.data.dense import create_dense_dataset

    img = create_dense_dataset("shapes:400", DataOptions(image_size=64, channels=3)).test.images[3]
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    pil = pil.resize((64 * scale[0], 64 * scale[1]), Image.NEAREST)
    p = tmp_path / f"scene_{scale[0]}x{scale[1]}.png"
    pil.save(p)
    return p


@pytest.mark.slow
def test_predict_returns_boxes_in_original_image_coordinates(trained_run, tmp_path):
    det = detect.load(trained_run)
    small = det.predict(_scene_png(tmp_path), conf=0.3)
    big = det.predict(_scene_png(tmp_path, (3, 2)), conf=0.3)  # 192 wide, 128 high
    assert small["size"] == [64, 64] and big["size"] == [128, 192]
    assert small["detections"], "the trained model should find the shapes in a test scene"
    s, b = small["detections"][0], big["detections"][0]
    assert s["label"] == b["label"]
    assert np.allclose(np.array(b["box"]), np.array(s["box"]) * [3, 2, 3, 2], atol=3.0), (s["box"], b["box"])
    assert max(d["box"][2] for d in big["detections"]) > 64  # not left in the 64 px frame


@pytest.mark.slow
def test_conf_iou_and_max_det_behave(trained_run, tmp_path):
    from torchvision.ops import box_iou

    det = detect.load(trained_run)
    p = _scene_png(tmp_path)
    loose = det.predict(p, conf=0.01, iou=1.0, max_det=300)["detections"]
    assert len(loose) > len(det.predict(p, conf=0.5)["detections"])
    assert all(d["score"] >= 0.5 for d in det.predict(p, conf=0.5)["detections"])
    assert len(det.predict(p, conf=0.01, max_det=2)["detections"]) == 2
    strict = det.predict(p, conf=0.01, iou=0.1, max_det=300)["detections"]
    assert len(strict) < len(loose)
    for c in {d["index"] for d in strict}:  # class-wise NMS: same-class boxes overlap at most 0.1
        boxes = torch.tensor([d["box"] for d in strict if d["index"] == c])
        iou = box_iou(boxes, boxes).fill_diagonal_(0)
        assert float(iou.max()) <= 0.1 + 1e-6
    scores = [d["score"] for d in loose]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.slow
def test_predict_files_draws_and_returns_json(trained_run, tmp_path):
    p = _scene_png(tmp_path)
    res = detect.predict_files(trained_run, [p], out_dir=tmp_path / "out", conf=0.3)
    json.dumps(res)
    assert res[0]["path"] == str(p) and Path(res[0]["saved"]).is_file()
    line = detect.format_prediction(res[0])
    assert line.startswith(f"{p}: {len(res[0]['detections'])} object(s)") and "\n" not in line
    from PIL import Image

    assert Image.open(res[0]["saved"]).size == (64, 64)


def test_predicting_a_corrupt_image_is_a_clear_error(trained_or_tiny, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError) as e:
        detect.load(trained_or_tiny).predict(bad)
    assert "broken.png" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------- determinism and resume
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tiny")
    return {"a": detect.train(**tiny(base / "a")), "b": detect.train(**tiny(base / "b"))}


@pytest.fixture
def trained_or_tiny(tiny_runs) -> Path:
    return tiny_runs["a"]


def test_same_seed_gives_same_metrics_and_weights(tiny_runs):
    a, b = tiny_runs["a"], tiny_runs["b"]
    assert _json(a / "metrics.json") == _json(b / "metrics.json")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_interrupt_inside_the_api_is_resumable_and_bit_identical(tmp_path, tiny_runs):
    import lightning.pytorch as pl

    class StopAfterTwo(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 1:  # epoch 0's checkpoint is saved, epoch 1's is not
                raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        detect.train(**tiny(out), callbacks=[StopAfterTwo()])
    assert not (out / "model.json").exists()  # no half-finished model is published
    detect.train(**tiny(out, resume=True))
    assert [r["epoch"] for r in _json(out / "history.json")] == [0, 1, 2]
    # Exactly the run that was never interrupted (same seed): augmentation and order re-seeded per epoch.
    assert (out / "model.safetensors").read_bytes() == (tiny_runs["a"] / "model.safetensors").read_bytes()


# ------------------------------------------------------------------------------------------ defaults
@pytest.mark.parametrize("bf16", [False, True])
def test_defaults_fit_the_data_and_the_cpu_budget(monkeypatch, bf16):
    from recogen.config import DetectConfig
    from recogen.data import DataOptions
    from recogen.data.dense import create_dense_dataset
    from recogen.tasks import trainer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(trainer, "bf16_supported", lambda: bf16)  # fp32 for the detectors on a CPU either way
    splits = create_dense_dataset("shapes:600", DataOptions(image_size=128, channels=3))
    cfg, why = detect.resolve_defaults(DetectConfig(data="shapes:600", image_size=128), splits)
    # The benchmarked recipe (BENCHMARKS.md): an 8-minute budget planned from measured epoch times,
    # within a data bound of 55,000 image passes at 128 px.
    assert (cfg.model, cfg.batch_size, cfg.epochs, cfg.lr, cfg.augment, cfg.budget) == ("fcos-s", 16, 131, 4e-3, "light", "8m")
    assert cfg.precision == "32-true" and cfg.image_size == 128 and why
    # The bound scales: twice the images -> about half the epochs; 4x the pixels -> a quarter.
    small = create_dense_dataset("shapes:300", DataOptions(image_size=128, channels=3))
    assert detect.resolve_defaults(DetectConfig(data="shapes:300"), small)[0].epochs == pytest.approx(262, abs=4)
    big = create_dense_dataset("shapes:100", DataOptions(image_size=256, channels=3))
    n = len(big.train)
    assert detect.resolve_defaults(DetectConfig(data="shapes:100"), big)[0].epochs == min(300, round(55_000 / 4 / n))
    # Explicit choices are kept (explicit epochs: no clock); --pretrained picks the COCO-pretrained Faster R-CNN.
    mine = detect.resolve_defaults(DetectConfig(data="x", epochs=3, lr=1e-3, batch_size=4), splits)[0]
    assert (mine.epochs, mine.lr, mine.batch_size, mine.budget) == (3, 1e-3, 4, "none")
    assert detect.resolve_defaults(DetectConfig(data="x", pretrained=True), splits)[0].model == "fasterrcnn-mobilenet"


@pytest.mark.parametrize("name", ["fcos-s", "ssdlite"])
def test_unknown_detector_options_are_refused_not_silently_dropped(name):
    # torchvision's builders hand unknown keywords to GeneralizedRCNNTransform(**kwargs), which ignores them.
    from recogen.models import create_model

    with pytest.raises(ModelError, match=r"takes no option 'score_tresh'.*score_thresh"):
        create_model(name, num_classes=3, in_chans=3, image_size=64, score_tresh=0.1)
    assert create_model(name, num_classes=3, in_chans=3, image_size=64, score_thresh=0.1).score_thresh == 0.1
