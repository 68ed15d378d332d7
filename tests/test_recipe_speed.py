"""``--recipe speed`` (the CIFAR-10 speed-run recipe, tasks/classify/speed.py) and its network ``speednet``.

Trained on digits (no mirror images: no flips, no TTA) and on shapes (flips and flip TTA), with tiny
widths and images so that the file runs in well under a minute on two CPU cores. What the recipe
reaches on real digits, and its speed beside a plain loop and ResNet-18: benchmarks/speed_recipe.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_one_line, main_in_process

# A tiny speednet (width 8: 8-32-32 channels) at 16 px, fp32 (pinned: "auto" would pick bf16 on CPUs that
# have it). Measured, seed 0, this 2-core CPU (one thread and two gave the same numbers): digits, 8
# epochs, test accuracy 0.9219; shapes:1200, the recipe's own 40 epochs, 0.5389 (chance: 0.1). The
# thresholds keep a margin of 7 and 12 points under them.
DIGITS = dict(data="digits", image_size=16, recipe="speed", model_kwargs={"width": 8}, epochs=8, seed=0,
              precision="32-true", progress=False)
SHAPES = dict(data="shapes:1200", image_size=16, recipe="speed", model_kwargs={"width": 8}, seed=0, budget="none",
              precision="32-true", progress=False)
DIGITS_MIN_ACC = 0.85
SHAPES_MIN_ACC = 0.42


def _json(p: Path):
    return json.loads(Path(p).read_text())


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    from recogen.tasks import classify

    return classify.train(**DIGITS, out=str(tmp_path_factory.mktemp("speed") / "digits"))


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory) -> Path:
    from recogen.tasks import classify

    return classify.train(**SHAPES, out=str(tmp_path_factory.mktemp("speed") / "shapes"))


def _train_images(run: Path) -> torch.Tensor:
    """The run's training images, loaded again as the run loaded them."""
    from recogen.config import ClassifyConfig
    from recogen.tasks import classify
    from recogen.tasks.runs import data_options, load_run_config

    cfg = load_run_config(ClassifyConfig, run)
    return classify.TASK.create_splits(cfg.data, data_options(cfg)).train.images


# ------------------------------------------------------------------------------------- training
def test_speed_recipe_learns_digits_and_records_its_choices(digits_run):
    m = _json(digits_run / "metrics.json")
    assert m["accuracy"] >= DIGITS_MIN_ACC, m["accuracy"]
    cfg = (digits_run / "config.yaml").read_text()
    for line in ("recipe: speed", "model: speednet", "optimizer: sgd", "label_smoothing: 0.2", "augment: speed",
                 "epochs: 8", "schedule: onecycle"):
        assert line in cfg, line
    card = _json(digits_run / "model.json")
    assert card["hflip_ok"] is False and card["tta"] == "none"  # a mirrored digit is another symbol


def test_speed_recipe_learns_shapes_with_flip_tta(shapes_run):
    m = _json(shapes_run / "metrics.json")
    assert m["accuracy"] >= SHAPES_MIN_ACC, m["accuracy"]
    assert _json(shapes_run / "model.json")["tta"] == "hflip"
    assert "epochs: 40" in (shapes_run / "config.yaml").read_text()  # the recipe's: 840 images get its most


# ------------------------------------------------------------------------------- the whitening layer
@pytest.mark.parametrize("which", ["digits", "shapes"])
def test_whitening_is_computed_from_the_training_images_and_never_trained(which, digits_run, shapes_run):
    import recogen

    run = digits_run if which == "digits" else shapes_run
    clf = recogen.load(run)
    model, card = clf.model, clf.card
    assert "features.0.weight" not in dict(model.named_parameters())  # a buffer: no gradient, no optimiser
    saved = model.whiten.weight.clone()
    assert model.whiten.ready.item() == 1

    # The same computation on the same images (normalised as in training) gives the saved filters:
    # they came from these images and training did not move them.
    from recogen.tasks.classify.speed import WHITEN_IMAGES

    images = _train_images(run)
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:WHITEN_IMAGES]
    mean = torch.tensor(card["normalize"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(card["normalize"]["std"]).view(1, -1, 1, 1)
    x = (images[pick].float() / 255 - mean) / std
    fresh = recogen.create_model("speednet", num_classes=10, in_chans=card["in_chans"], image_size=card["image_size"],
                                 **card["model_kwargs"])
    before = fresh.whiten.weight.clone()
    fresh.init_from_data(x)
    assert not torch.allclose(before, fresh.whiten.weight)
    assert torch.allclose(fresh.whiten.weight, saved, rtol=1e-4, atol=1e-5)

    # And they whiten: the first half of the outputs (one per eigenvector of the patch covariance) is
    # uncorrelated with variance lambda / (lambda + eps), 1 up to the eps added to the eigenvalues.
    with torch.no_grad():
        out = torch.nn.functional.conv2d(x.double(), saved[: len(saved) // 2].double())
    flat = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])
    cov = flat.T @ flat / len(flat)
    patches = x.double().unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, len(cov))
    lam = torch.linalg.eigvalsh(patches.T @ patches / len(patches)).flip(0)
    assert torch.allclose(cov, torch.diag(lam / (lam + model.whiten.eps)), atol=1e-5), cov


def test_whitening_differs_between_data_sets():
    from recogen.data import create_dataset
    from recogen.data.base import DataOptions
    from recogen.models import create_model

    filters = []
    for spec in ("digits", "shapes:100"):
        splits = create_dataset(spec, DataOptions(image_size=16, channels=1))
        m = create_model("speednet", num_classes=10, in_chans=1, image_size=16, width=8)
        x = splits.train.images.float() / 255
        m.init_from_data((x - x.mean()) / x.std())
        filters.append(m.whiten.weight.clone())
    assert not torch.allclose(filters[0], filters[1], atol=1e-3)


# ----------------------------------------------------------------- save/load, TTA, export
def test_a_loaded_speed_run_predicts_exactly_as_the_run_evaluated(shapes_run):
    import recogen

    saved = _json(shapes_run / "metrics.json")
    again = recogen.load(shapes_run).evaluate()
    assert again["accuracy"] == saved["accuracy"] and again["confusion_matrix"] == saved["confusion_matrix"]


def test_flip_tta_is_the_mean_of_the_image_and_its_mirror(shapes_run):
    import recogen

    clf = recogen.load(shapes_run)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    got = torch.tensor([[t["prob"] for t in sorted(r["topk"], key=lambda t: t["index"])]
                        for r in clf.predict(images, topk=10)])
    card = clf.card
    x = clf.preprocess(images).float() / 255
    x = (x - torch.tensor(card["normalize"]["mean"]).view(1, -1, 1, 1)) / torch.tensor(card["normalize"]["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        want = ((clf.model(x) + clf.model(x.flip(-1))) / 2).softmax(1)
        plain = clf.model(x).softmax(1)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-5)  # the mirror changes the answer: TTA really ran


def test_onnx_export_of_a_speed_run_predicts_as_the_torch_model(shapes_run, tmp_path):
    import shutil

    import recogen
    from recogen.export import export_model

    run = shutil.copytree(shapes_run, tmp_path / "run")  # the export writes into the run folder
    r = export_model(run, "onnx")
    assert r["max_abs_diff"] < 1e-4
    # The ONNX file is the network; the card beside it says tta: hflip, and recogen's onnx backend
    # averages the image and its mirror around it exactly as the torch predictor does.
    assert _json(run / "model.json")["tta"] == "hflip"
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(4)]
    a = recogen.load(run).predict(images, topk=3)
    b = recogen.load(run, backend="onnx").predict(images, topk=3)
    assert [x["index"] for x in a] == [x["index"] for x in b]
    assert np.allclose([x["prob"] for x in a], [x["prob"] for x in b], atol=1e-5)


# --------------------------------------------------------------------------- recipe decisions
class _Splits:
    def __init__(self, n: int, size: int = 32, channels: int = 3, hflip_ok: bool = True):
        self.train = range(n)
        self.image_size, self.channels, self.hflip_ok = (size, size), channels, hflip_ok


def test_explicit_options_override_the_recipe():
    from recogen.config import ClassifyConfig
    from recogen.tasks import get_task

    resolve_defaults = get_task("classify").resolve_defaults  # --recipe chooses the resolver there
    chosen, why = resolve_defaults(ClassifyConfig(recipe="speed"), _Splits(45_000))
    assert (chosen.model, chosen.batch_size, chosen.epochs, chosen.optimizer) == ("speednet", 1024, 11, "sgd")
    assert chosen.label_smoothing == 0.2 and chosen.augment == "speed" and abs(chosen.lr - 1.5) < 1e-6
    assert any("flip TTA" in w for w in why) and chosen.model_kwargs == {}  # airbench's width 64
    small, _ = resolve_defaults(ClassifyConfig(recipe="speed"), _Splits(3_000, size=28, channels=1, hflip_ok=False))
    assert (small.model, small.batch_size, small.epochs, small.augment) == ("speednet", 64, 40, "speed")
    assert abs(small.lr - 1.5 * 64 / 1024) < 1e-6
    given = ClassifyConfig(recipe="speed", epochs=20, batch_size=256, lr=0.5, label_smoothing=0.05, weight_decay=1e-3,
                           augment="none", model="cnn-s")
    chosen, why = resolve_defaults(given, _Splits(45_000))
    for f in ("epochs", "batch_size", "lr", "label_smoothing", "weight_decay", "augment", "model"):
        assert getattr(chosen, f) == getattr(given, f), f
    assert any("no flip TTA" in w for w in why)  # --augment none: no flips at all
    with pytest.raises(Exception, match="--recipe speed trains the whole network"):
        resolve_defaults(ClassifyConfig(recipe="speed", freeze_backbone=True), _Splits(1000))


def test_tta_only_where_mirrors_keep_the_class():
    from recogen.config import ClassifyConfig
    from recogen.tasks.classify.speed import tta_mode

    assert tta_mode(ClassifyConfig(recipe="speed", augment="speed"), hflip_ok=True) == "hflip"
    assert tta_mode(ClassifyConfig(recipe="speed", augment="speed"), hflip_ok=False) == "none"
    assert tta_mode(ClassifyConfig(recipe="speed", augment="none"), hflip_ok=True) == "none"
    assert tta_mode(ClassifyConfig(augment="light"), hflip_ok=True) == "none"  # the default recipe: none


def test_a_bad_recipe_is_one_line(capsys):
    rc, _, err = main_in_process(capsys, "classify", "train", "--recipe", "fast", "--epochs", "1")
    assert_one_line(rc, err, "--recipe", "default, speed")


# ------------------------------------------------------------------------------- augmentation
def test_alternating_flip_and_translation():
    from recogen.tasks.classify.speed import ShiftFlip

    torch.manual_seed(0)
    # Bright on the left, dark on the right, and some noise (each image its own pixels).
    x = (torch.linspace(1, 0, 32).expand(64, 3, 32, 32) * 0.8 + torch.rand(64, 3, 32, 32) * 0.2).contiguous()
    aug = ShiftFlip(hflip=True)
    bits = aug.start_bits(x)
    assert 10 < int(bits.sum()) < 54  # about half the images start mirrored
    assert torch.equal(aug.start_bits(x[torch.randperm(64)]).sort().values, bits.sort().values)

    def flipped(epoch: int) -> torch.Tensor:
        aug.epoch = epoch
        out = aug(x)
        assert out.shape == x.shape
        return out[..., :16].mean((1, 2, 3)) < out[..., 16:].mean((1, 2, 3))  # shifts of 2 px keep the sides

    e0, e1, e2 = flipped(0), flipped(1), flipped(2)
    assert torch.equal(e0, ~e1) and torch.equal(e0, e2)  # every image is mirrored in every other epoch
    # Without flips: each image is a crop of the reflect-padded image, shifted by at most 2 px (32 / 16).
    out = ShiftFlip(hflip=False)(x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    shifts = [[(dy, dx) for dy in range(5) for dx in range(5)
               if torch.equal(out[i], padded[i, :, dy : dy + 32, dx : dx + 32])] for i in range(len(x))]
    assert all(len(s) == 1 for s in shifts)
    assert len({s[0] for s in shifts}) > 10  # drawn per image


# -------------------------------------------------------------------------------------- resume
def test_an_interrupted_speed_run_resumes_to_the_same_weights(tmp_path):
    """The lookahead's slow weights are the network's at each epoch's end, so a resumed run re-creates
    them from the checkpoint and ends with exactly the weights of an uninterrupted run (CPU, fp32)."""
    import lightning.pytorch as pl
    from safetensors.torch import load_file

    from recogen.tasks import classify

    opts = dict(DIGITS, limit=400, epochs=4)

    class StopAfterTwo(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    ref = classify.train(**opts, out=str(tmp_path / "ref"))
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        classify.train(**opts, out=str(out), callbacks=[StopAfterTwo()])
    classify.train(**dict(opts, resume=True), out=str(out))
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
