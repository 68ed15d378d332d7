"""``recogen explain`` / ``recogen.explain``: every method's map, the files, the CLI and its errors, a
default layer for every classifier family, and the field's two sanity checks on a model trained on
``shapes`` (mass inside the object; model randomisation, Adebayo et al. 2018)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_line, main_in_process

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ["gradcam", "gradcam++", "eigencam", "scorecam", "integrated-gradients"]


def _image(path: Path, size=(24, 20), seed=0) -> Path:
    """A small RGB image of another size than the model's (the overlay keeps the image's size)."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("explain_images")
    _image(d / "a.png", seed=1)
    _image(d / "b.png", size=(16, 16), seed=2)
    return d


# ------------------------------------------------------------------------------------ the methods
@pytest.mark.parametrize("method", METHODS)
def test_each_method_gives_a_unit_map_an_overlay_and_files(tiny_run, images, tmp_path, method):
    import recogen

    [e] = recogen.explain(tiny_run, [images / "a.png"], method=method, out=tmp_path)
    size = json.loads((tiny_run / "model.json").read_text())["image_size"]
    assert e.map.shape == (size, size) and e.map.dtype == np.float32
    assert np.isfinite(e.map).all() and e.map.min() >= 0 and e.map.max() <= 1
    assert e.map.max() - e.map.min() > 0.1, "the map is (nearly) constant"
    assert e.overlay.shape == (20, 24, 3) and e.overlay.dtype == np.uint8  # at the image's own size
    assert e.method == method and (e.layer == "input") == (method == "integrated-gradients")
    assert e.target == e.top[0]["index"] and len(e.top) == 3 and e.top[0]["prob"] >= e.top[1]["prob"]
    png, npy = tmp_path / f"a.{method}.png", tmp_path / f"a.{method}.npy"
    assert e.files == {"overlay": str(png), "map": str(npy)}
    assert Image.open(png).size == (24, 20)
    assert np.array_equal(np.load(npy), e.map)


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "integrated-gradients"])
def test_same_inputs_give_the_same_maps(tiny_run, images, method):
    import recogen

    a, b = (recogen.explain(tiny_run, [images / "a.png", images / "b.png"], method=method, target=3) for _ in range(2))
    for x, y in zip(a, b):
        assert np.array_equal(x.map, y.map) and x.target == y.target == 3


def test_class_by_name_or_index_and_layer_by_name(tiny_run, images):
    import recogen

    by_name = recogen.explain(tiny_run, images / "a.png", target="7")[0]  # digits: classes named "0".."9"
    by_index = recogen.explain(tiny_run, images / "a.png", target=7, layer="features.6")[0]
    assert by_name.target == by_index.target == 7 and by_name.label == "7"
    assert by_name.layer == "features.10" and by_index.layer == "features.6"  # default: the last conv stage
    assert by_index.map.shape == by_name.map.shape


# ---------------------------------------------------------------------------------------- the CLI
def test_cli_prints_one_line_per_image_and_writes_files(tiny_run, images, tmp_path, capsys):
    out = tmp_path / "ex"
    rc, stdout, err = main_in_process(capsys, "explain", tiny_run, images, "--method", "gradcam++", "--out", out)
    assert rc == 0, err
    lines = stdout.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("wrote 2 overlay(s)"), stdout
    assert lines[0].startswith(f"{images / 'a.png'}: gradcam++ of ") and " at features.10  [top: " in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["a.gradcam++.npy", "a.gradcam++.png", "b.gradcam++.npy", "b.gradcam++.png"]

    rc, stdout, err = main_in_process(capsys, "explain", tiny_run, images / "b.png", "--class", "2", "--json", "--out", out)
    assert rc == 0, err
    [r] = json.loads(stdout)
    assert r["path"] == str(images / "b.png") and r["method"] == "gradcam" and r["target"]["index"] == 2
    assert r["target"]["label"] == "2" and len(r["top"]) == 3 and Path(r["overlay"]).is_file() and Path(r["map"]).is_file()


def _other_task_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run whose card says generate: explain must refuse it from the card alone."""
    run = tmp_path / "gen"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    card = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**card, "task": "generate"}))
    return run


@pytest.mark.parametrize("args, needles", [
    (["--method", "lime"], ["unknown explanation method 'lime'", "gradcam, gradcam++, eigencam, scorecam, integrated-gradients"]),
    (["--layer", "features.99"], ["no layer 'features.99'", "features.8", "(default features.10)"]),
    (["--layer", "head.5"], ["layer 'head.5' gives outputs of shape (1, 10)", "not a spatial map"]),
    (["--class", "cat"], ["unknown class 'cat'", "0, 1, 2", "index from 0 to 9"]),
    (["--class", "10"], ["unknown class '10'"]),
    (["--method", "integrated-gradients", "--layer", "features.6"], ["--layer does not apply"]),
])
def test_user_mistakes_are_one_line_exit_2(tiny_run, images, tmp_path, capsys, args, needles):
    rc, _, err = main_in_process(capsys, "explain", tiny_run, images / "a.png", "--out", tmp_path, *args)
    assert_one_line(rc, err, *needles)
    assert not list(tmp_path.iterdir()), "nothing is written after a mistake"


def test_eigencam_thin_svd_gives_the_librarys_projection():
    """Eigen-CAM runs on grad-cam's projection computed from the thin SVD (the full one built a
    (H*W)^2 matrix: 1 GiB at 128x128): the same numbers as the library's own function."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from recogen.saliency.methods import first_component

    acts = np.random.default_rng(0).normal(size=(2, 8, 12, 10)).astype(np.float32)
    ours, theirs = first_component(acts), get_2d_projection(acts)
    for a, b in zip(ours, theirs):  # a singular vector's sign is LAPACK's choice: equal up to it
        np.testing.assert_allclose(a * np.sign((a * b).sum()), b, rtol=1e-4, atol=1e-4)


def test_an_onnx_predictor_is_explained_from_its_runs_torch_weights(tiny_run, images, tmp_path):
    """recogen.load(RUN, backend="onnx") runs onnxruntime, which has no layers to hook: explain loads the
    run's PyTorch weights instead (it raised a pickling TypeError), and gives the torch predictor's maps."""
    import recogen
    from recogen.export import export_model

    run = shutil.copytree(tiny_run, tmp_path / "run")  # the export writes into the run folder
    export_model(run, "onnx")
    onnx_pred = recogen.load(run, backend="onnx")
    assert getattr(onnx_pred.model, "session", None) is not None
    got = recogen.explain(onnx_pred, images / "a.png", method="gradcam")[0]
    want = recogen.explain(recogen.load(run), images / "a.png", method="gradcam")[0]
    assert got.label == want.label and np.array_equal(got.map, want.map)


def test_other_tasks_and_bad_images_are_one_line(tiny_run, images, tmp_path, capsys):
    rc, _, err = main_in_process(capsys, "explain", _other_task_run(tiny_run, tmp_path), images / "a.png")
    assert_one_line(rc, err, "holds a generate model", "explain supports classification, segmentation and detection runs")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    rc, _, err = main_in_process(capsys, "explain", tiny_run, bad, "--out", tmp_path / "x")
    assert_one_line(rc, err, "bad.png")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------- architecture families
FAMILY_CASES = [  # model, kwargs (tiny where the builder allows), image size, expected default layer
    ("seed-cnn", {}, 32, "features.7"),
    ("seed-cnn-bn", {}, 32, "features.10"),
    ("cnn-s", {}, 32, "features.10"),
    ("resnet18", {}, 32, "net.layer4.1"),
    ("resnet34", {}, 32, "net.layer4.2"),
    ("resnet50", {}, 32, "net.layer4.2"),
    ("vit-tiny", {"depth": 2}, 32, "blocks.1.norm1"),
    ("vit-small", {"depth": 1}, 32, "blocks.0.norm1"),
    # Register tokens and a 6x6 grid (48 px, 8 px patches): the reshape reads both from the model.
    ("vit-tiny", {"depth": 1, "reg_tokens": 4}, 48, "blocks.0.norm1"),
    ("cnn-rnn", {}, 32, "features.6"),
    ("speednet", {"width": 8}, 32, "features.4.6"),
]


def test_every_registered_classifier_has_a_family_case():
    from recogen.models import list_models

    assert {name for name, _ in list_models("classify")} == {m for m, *_ in FAMILY_CASES}


@pytest.mark.parametrize("name, kwargs, size, layer", FAMILY_CASES, ids=[f"{c[0]}-{c[2]}px-{len(c[1])}" for c in FAMILY_CASES])
def test_every_classifier_family_gets_a_default_layer_and_a_map(name, kwargs, size, layer):
    import recogen
    from recogen.tasks.classify.predict import Classifier

    torch.manual_seed(0)
    model = recogen.create_model(name, num_classes=4, in_chans=3, image_size=size, **kwargs).eval()
    card = {"task": "classify", "model": name, "model_kwargs": kwargs, "classes": list("abcd"), "image_size": size,
            "in_chans": 3, "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    img = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    [e] = recogen.explain(Classifier(model, card), img, method="gradcam")
    assert e.layer == layer
    assert e.map.shape == (size, size) and np.isfinite(e.map).all()
    assert e.map.max() - e.map.min() > 0.1, "the map is (nearly) constant"


# ------------------------------------------------------------------ where the evidence is known
class ColourDetector(torch.nn.Module):
    """A hand-set network whose class "red" (0) is the mean redness of the image and class "green" (1)
    its mean greenness (1x1 conv, ReLU, 4x4 average pool, global average, linear): the evidence for
    each class lies exactly on the pixels of that colour, so a map that is transposed, shifted, of
    the wrong class or wrongly resized shows at once."""

    def __init__(self):
        super().__init__()
        conv = torch.nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([[1.0, -1, -1], [-1, 1, -1]]).view(2, 3, 1, 1))
            conv.bias.fill_(-0.2)
        head = torch.nn.Linear(2, 2)
        with torch.no_grad():
            head.weight.copy_(torch.eye(2) * 10)
            head.bias.zero_()
        self.features = torch.nn.Sequential(conv, torch.nn.ReLU(inplace=True), torch.nn.AvgPool2d(4))
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), head)

    def forward(self, x):
        return self.head(self.features(x))


def _colour_scene() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Grey 32 px image, a red bar (rows 4-11, columns 20-31) and a green one (rows 20-31, columns
    4-7): off-centre and not symmetric, on the 4 px grid of the pooled layer."""
    img = np.full((32, 32, 3), 128, np.uint8)
    red, green = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
    red[4:12, 20:32] = True
    green[20:32, 4:8] = True
    img[red], img[green] = (230, 20, 20), (20, 230, 20)
    return img, {"red": red, "green": green}


def _share(m: np.ndarray, mask: np.ndarray) -> float:
    return float((m * mask).sum() / m.sum())


# (method, layer): the default layer keeps the full size; "features.2" is the 8x8 pooled map, resized.
EVIDENCE_CASES = [(m, layer) for m in ("gradcam", "gradcam++", "scorecam") for layer in (None, "features.2")]


@pytest.mark.parametrize("method, layer", EVIDENCE_CASES + [("integrated-gradients", None)])
def test_maps_lie_on_the_known_evidence(method, layer):
    import recogen
    from recogen.tasks.classify.predict import Classifier
    card = {"task": "classify", "model": "colour", "classes": ["red", "green"], "image_size": 32, "in_chans": 3,
            "normalize": {"mean": [0.0] * 3, "std": [1.0] * 3}}
    clf = Classifier(ColourDetector().eval(), card)
    img, masks = _colour_scene()
    maps = {t: recogen.explain(clf, img, method=method, target=t, layer=layer)[0].map for t in masks}
    for label, other in (("red", "green"), ("green", "red")):
        # Whatever the method, explaining a colour's class moves the map onto that colour (Score-CAM,
        # the least: 0.63 against 0.53 on the pooled layer).
        assert _share(maps[label], masks[label]) > _share(maps[other], masks[label]) + 0.05, (label, maps)
        if method != "scorecam":
            # Measured 1.00 at full size, 0.84 (red) and 0.72 (green) from the pooled 8x8 map. Score-CAM
            # weights channels by a softmax of their scores, which with two channels leaves much weight
            # on the other colour (measured 0.77 and 0.39 at full size): only the shift above holds.
            assert _share(maps[label], masks[label]) > (0.95 if layer is None else 0.6), (label, maps)
            assert masks[label].flat[maps[label].argmax()], label


# ------------------------------------------------------------------- sanity checks, as the field does
# A cnn-s trained on shapes through the real training path (test accuracy 0.50; about 15 s).
SHAPES_TRAIN = dict(data="shapes:1500", image_size=32, model="cnn-s", epochs=8, lr=0.01, augment="none",
                    batch_size=64, seed=0, progress=False)


@pytest.fixture(scope="module")
def shapes_maps(tmp_path_factory) -> dict[str, list[np.ndarray]]:
    """Grad-CAM maps of the true class of 100 new shapes images (drawn as the data set draws them: one
    shape, 50-95% of the side; another seed), from the trained run and from the same network with
    fresh weights, and the shapes' masks."""
    import recogen
    from recogen.data.shapes import render_scene
    from recogen.tasks import classify
    from recogen.tasks.classify.predict import Classifier

    trained = recogen.load(classify.train(**SHAPES_TRAIN, out=str(tmp_path_factory.mktemp("shapes") / "run")))
    card = trained.card
    torch.manual_seed(1)
    fresh = Classifier(recogen.create_model(card["model"], num_classes=len(card["classes"]), in_chans=card["in_chans"],
                                            image_size=card["image_size"]).eval(), card)
    rng = np.random.default_rng(2024)
    scenes = [render_scene(rng, 32, 1, classes=[i % 10], min_frac=0.5, max_frac=0.95) for i in range(100)]
    images, labels = [img for img, _ in scenes], [obj["class_id"] for _, [obj] in scenes]
    maps = {name: [recogen.explain(p, img, method="gradcam", target=k)[0].map for img, k in zip(images, labels)]
            for name, p in (("trained", trained), ("random", fresh))}
    return {"masks": [obj["mask"] for _, [obj] in scenes], **maps}


def _mass_ratio(maps: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """Mean share of the map's mass inside the mask over the mean area of the masks (1: chance). An empty
    map (all its evidence negative, clipped by Grad-CAM's ReLU) counts as chance: its mask's area."""
    inside = [(m * k).sum() / m.sum() if m.sum() > 0 else k.mean() for m, k in zip(maps, masks)]
    return float(np.mean(inside) / np.mean([k.mean() for k in masks]))


def test_gradcam_mass_lies_on_the_object(shapes_maps):
    trained = _mass_ratio(shapes_maps["trained"], shapes_maps["masks"])
    fresh = _mass_ratio(shapes_maps["random"], shapes_maps["masks"])
    print(f"gradcam mass in the mask / mask area: trained {trained:.2f}, re-initialised {fresh:.2f}")
    # Measured: trained 1.35 here (1.29 and 1.34 with two other seeds of test images), re-initialised 0.96
    # (0.99, 1.07); the masks cover 28% of the image. A weak effect, and it does not grow with training:
    # a cnn-s trained longer (shapes:3000, 15 epochs, accuracy 0.84) measured 1.05. At 32 px its last
    # conv stage is an 8x8 map whose cells each see most of the image, and its head is dense (no global
    # pooling). test_maps_lie_on_the_known_evidence checks the wiring exactly.
    assert trained >= 1.15 and trained >= fresh + 0.15, (trained, fresh)


def test_gradcam_of_a_randomised_model_differs(shapes_maps):
    """Model randomisation (Adebayo et al. 2018): the same network with fresh weights must give clearly
    different maps, or the maps show the architecture and the image, not what was learned."""
    from scipy.stats import spearmanr

    def rho(a: np.ndarray, b: np.ndarray) -> float:  # an empty map has no ranks: it agrees with nothing
        return 0.0 if a.max() == a.min() or b.max() == b.min() else float(spearmanr(a.ravel(), b.ravel())[0])

    mean = np.mean([rho(a, b) for a, b in zip(shapes_maps["trained"], shapes_maps["random"])])
    print(f"mean Spearman rank correlation of the maps, trained vs re-initialised: {mean:.3f}")
    assert mean < 0.3, mean  # measured 0.03 (-0.01 for the longer-trained cnn-s)
