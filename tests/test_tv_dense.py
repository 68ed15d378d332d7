"""torchvision's detection and segmentation builders as ``tv:NAME`` models of ``detect``/``segment``
(issue 13): listing by task, wrong-task and refused names, ``--pretrained`` from torch.hub's cache offline
(a file laid out as torchvision publishes it, random values), ``--weights`` and ``weights import``, and a
run of each task trained, predicted, exported and rebuilt from model.json. Tiny: 64 px, a few steps."""
from __future__ import annotations

import json
import time

import pytest
import torch
from PIL import Image

from conftest import assert_one_line, main_in_process
from recogen.errors import ModelError, OfflineError
from recogen.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

DET = "tv:ssdlite320_mobilenet_v3_large"
SEG = "tv:lraspp_mobilenet_v3_large"


def _published_file(folder, name: str, fmt: str = "pth", seed: int = 0):
    """A state dict with the keys and shapes of ``name``'s published weights (random values), saved as
    torchvision saves them: detectors without BatchNorm counters (FrozenBatchNorm2d has none)."""
    from recogen.models.sources import _published_layout

    torch.manual_seed(seed)
    sd = {k: v for k, v in _published_layout("tv", name.split(":", 1)[1]).items() if not k.endswith("num_batches_tracked")}
    path = folder / f"{name.split(':', 1)[1]}.{fmt}"
    torch.save(sd, path)
    return path, sd


# ----------------------------------------------------------------------------------- names and tasks
def test_tv_lists_detection_and_segmentation_builders_by_task(capsys):
    from recogen.models import model_meta
    from recogen.models.sources import list_source_models

    det = list_source_models("tv", task="detect")
    assert {"ssdlite320_mobilenet_v3_large", "fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn",
            "ssd300_vgg16"} <= set(det)
    assert not any(n.startswith(("maskrcnn", "keypointrcnn")) for n in det)  # they need masks / keypoints
    assert set(list_source_models("tv", task="segment")) >= {"lraspp_mobilenet_v3_large", "deeplabv3_resnet101", "fcn_resnet50"}
    assert "resnet18" in list_source_models("tv", task="classify") and "resnet18" not in det
    assert model_meta(DET)["task"] == "detect" and model_meta(SEG)["task"] == "segment"
    assert model_meta("tv:resnet18")["task"] == "classify"
    rc, out, _ = main_in_process(capsys, "models", "--source", "tv", "--task", "segment", "--filter", "lraspp*")
    assert rc == 0 and out.split() == [SEG]
    rc, out, _ = main_in_process(capsys, "models", "--source", "tv", "--task", "detect", "--filter", "ssd*", "--json")
    assert rc == 0 and json.loads(out) == [{"name": "tv:ssd300_vgg16", "task": "detect"}, {"name": DET, "task": "detect"}]


def test_mask_and_keypoint_rcnn_are_refused_saying_what_to_use(tmp_path, capsys):
    with pytest.raises(ModelError, match=r"instance masks.*tv:fasterrcnn_resnet50_fpn_v2.*segment train"):
        create_model("tv:maskrcnn_resnet50_fpn_v2", num_classes=3, image_size=64)
    rc, _, err = main_in_process(capsys, "detect", "train", "--data", "shapes:40", "--model", "tv:keypointrcnn_resnet50_fpn",
                                 "--out", tmp_path / "k", "--no-progress")
    assert_one_line(rc, err, "keypoints", "tv:fasterrcnn_resnet50_fpn")
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize("argv,needles", [
    (["detect", "train", "--model", "tv:resnet18"], ["classification model", "not a detector", "recogen classify train"]),
    (["classify", "train", "--model", "tv:fasterrcnn_resnet50_fpn"], ["detection model", "not a classifier", "recogen detect train"]),
    (["segment", "train", "--model", DET], ["detection model", "not a segmenter", "--source tv --task segment"]),
    (["detect", "train", "--model", "tv:nosuchnet"], ["tv has no model 'nosuchnet'", "recogen models --source tv"]),
])
def test_a_model_of_another_task_is_one_line_before_any_data(tmp_path, capsys, argv, needles):
    t = time.perf_counter()
    rc, _, err = main_in_process(capsys, *argv, "--data", "shapes:40", "--out", tmp_path / "r", "--no-progress")
    assert_one_line(rc, err, *needles)
    assert time.perf_counter() - t < 5 and not (tmp_path / "r" / "config.yaml").exists()


def test_small_inputs_and_channels_are_clear_errors():
    with pytest.raises(ModelError, match="--image-size 268 or more"):
        create_model("tv:ssd300_vgg16", num_classes=3, image_size=64)
    with pytest.raises(ModelError, match="3-channel"):
        create_model(DET, num_classes=3, in_chans=1, image_size=64)


# ------------------------------------------------------------------- --pretrained, --weights, import
def test_pretrained_offline_fails_fast_naming_the_file_and_folder(offline):
    for name, file in ((DET, "ssdlite320_mobilenet_v3_large_coco-a79551df.pth"),
                       (SEG, "lraspp_mobilenet_v3_large-d234d4ea.pth")):
        t = time.perf_counter()
        with pytest.raises(OfflineError) as e:
            create_model(name, num_classes=3, image_size=64, pretrained=True)
        assert time.perf_counter() - t < 1.0
        msg = str(e.value)
        assert file in msg and str(offline / "torch" / "hub" / "checkpoints") in msg and "--weights PATH" in msg


def test_detector_pretrained_loads_the_cached_coco_file_and_replaces_the_class_head(offline, capsys):
    path, sd = _published_file(offline, DET)
    rc, out, _ = main_in_process(capsys, "weights", "import", path, "--model", DET)
    assert rc == 0 and "ssdlite320_mobilenet_v3_large_coco-a79551df.pth" in out
    m = create_model(DET, num_classes=3, image_size=64, pretrained=True)
    own = m.state_dict()
    reused = {k for k in sd if k in own and torch.equal(own[k], sd[k])}
    assert {k for k in sd if k.startswith("backbone.")} <= reused  # the backbone, the box head: COCO's
    assert {k for k in sd if k.startswith("head.regression_head.")} <= reused
    assert set(sd) - reused <= {k for k in sd if k.startswith("head.classification_head.")}
    last = "head.classification_head.module_list.0.1.weight"  # the 1x1 class conv: 4 = 3 + background outputs
    assert sd[last].shape[0] == 6 * 91 and own[last].shape[0] == 6 * 4
    # The same file through --weights: strict except the class head (whose shapes are COCO's).
    w = create_model(DET, num_classes=3, image_size=64, weights=path).state_dict()
    assert w.keys() == own.keys() and torch.equal(w["backbone.features.0.0.0.weight"], sd["backbone.features.0.0.0.weight"])


def test_segmenter_pretrained_and_weights_fold_the_input_conv_and_replace_the_head(offline):
    path, sd = _published_file(offline, SEG)
    from recogen.models.sources import import_weights

    import_weights(path, SEG)
    for m in (create_model(SEG, num_classes=4, in_chans=1, image_size=64, pretrained=True),
              create_model(SEG, num_classes=4, in_chans=1, image_size=64, weights=path)):
        own = m.net.state_dict()
        assert torch.equal(own["backbone.5.block.0.0.weight"], sd["backbone.5.block.0.0.weight"])
        assert torch.allclose(own["backbone.0.0.weight"][:, 0], sd["backbone.0.0.weight"].sum(1))
        assert own["classifier.high_classifier.weight"].shape[0] == 4 and sd["classifier.high_classifier.weight"].shape[0] == 21
        assert set(m.state_dict()) == set(create_model(SEG, num_classes=4, in_chans=1, image_size=64).state_dict())


def test_a_file_of_another_architecture_is_refused_in_one_line(offline, capsys):
    seg, _ = _published_file(offline, SEG)
    with pytest.raises(ModelError, match=r"missing keys \(.*\), \d+ unexpected keys \(") as e:
        create_model(DET, num_classes=3, image_size=64, weights=seg)
    assert "\n" not in str(e.value)
    rc, _, err = main_in_process(capsys, "weights", "import", seg, "--model", DET)
    assert_one_line(rc, err, "not tv:ssdlite320_mobilenet_v3_large's published weights", "missing keys")
    rc, _, err = main_in_process(capsys, "detect", "train", "--data", "shapes:40", "--image-size", "64", "--model", DET,
                                 "--weights", seg, "--epochs", "1", "--out", offline / "run", "--no-progress")
    assert_one_line(rc, err, "missing keys", "unexpected keys")


# ------------------------------------------------------------------------------------- whole runs
def _image(folder, size=80):
    from recogen.data.dense import create_dense_dataset
    from recogen.data import DataOptions

    img = create_dense_dataset("shapes:40", DataOptions(image_size=size, channels=3, seed=3)).test.images[0]
    path = folder / "scene.png"
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)
    return path


def test_tv_detector_run_trains_predicts_exports_and_rebuilds_from_its_card(tmp_path):
    from recogen.export import export_model
    from recogen.tasks import detect

    run = detect.train(data="shapes:40", image_size=64, model=DET, epochs=1, batch_size=8, limit=16, progress=False,
                       seed=0, out=str(tmp_path / "det"))
    card = json.loads((run / "model.json").read_text())
    assert card["model"] == DET and card["normalize"]["applied_by"] == "model"  # torchvision normalises inside
    img = _image(tmp_path)
    (r,) = detect.predict_files(run, [img], conf=0.0, max_det=5)
    assert r["size"] == [80, 80] and len(r["detections"]) == 5
    again = detect.load(run / "model.json").predict(str(img), conf=0.0, max_det=5)  # rebuilt from the card alone
    assert [d["box"] for d in again["detections"]] == [d["box"] for d in r["detections"]]
    out = export_model(run, "onnx")
    assert out["max_abs_diff"] < 1e-4
    onnx = detect.load(run, backend="onnx").predict(str(img), conf=0.0, max_det=5)
    assert [d["label"] for d in onnx["detections"]] == [d["label"] for d in r["detections"]]


def test_tv_segmenter_run_from_pretrained_resumes_predicts_and_rebuilds(offline):
    from recogen.export import export_model
    from recogen.models.sources import import_weights, preprocessing
    from recogen.tasks import segment

    path, _ = _published_file(offline, SEG)
    import_weights(path, SEG)
    opts = dict(data="shapes:40", image_size=32, model=SEG, pretrained=True, batch_size=8, limit=16, progress=False,
                seed=0, out=str(offline / "seg"))
    segment.train(**opts, epochs=1)
    run = segment.train(**opts, epochs=2, resume=True)
    assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [0, 1]
    card = json.loads((run / "model.json").read_text())
    assert card["model"] == SEG and card["normalize"]["mean"] == pytest.approx(preprocessing(SEG)["mean"])  # the weights'
    img = _image(offline)
    (r,) = segment.predict_files(run, [img], offline / "out")
    assert sum(r["class_pixels"].values()) == 80 * 80  # the image's own size
    again = segment.load(run / "model.json").predict(str(img))  # rebuilt from the card alone
    assert again["class_pixels"] == r["class_pixels"]
    assert export_model(run, "onnx")["max_abs_diff"] < 1e-4
