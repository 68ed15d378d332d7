"""Hugging Face sources without network: ``--data hf:DIR`` (datasets saved with save_to_disk) for classify
and detect, ``--model hf:DIR`` (a random-weight transformers classifier saved with save_pretrained), and
the offline fast failure for an id that is neither a folder nor cached."""
from __future__ import annotations

import json
from pathlib import Path
import time

import numpy as np
import pytest

from conftest import assert_one_line, main_in_process

pytest.importorskip("datasets")
pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["red", "green", "blue"]
BOXES = {0: (4, 6, 14, 10), 1: (24, 9, 14, 11)}  # per category: COCO [x, y, w, h] in a 48x40 image


def _colour(rng, c: int, size: int = 32):
    """A noisy image whose dominant channel is its class."""
    from PIL import Image

    a = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    a[..., c] += 150
    return Image.fromarray(a)


def _scene(k: int):
    """A 48x40 image with one or two filled boxes, and its objects as cppe-5 stores them (a dict of lists)."""
    from PIL import Image

    a = np.zeros((40, 48, 3), np.uint8)
    objs = {"bbox": [], "category": []}
    for cat in range(1 + k % 2):
        x, y, w, h = BOXES[cat]
        a[y:y + h, x:x + w] = 255 - 127 * cat
        objs["bbox"].append([x, y, w, h])
        objs["category"].append(cat)
    return Image.fromarray(a), objs


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """Folders: ``cls`` (train 48 + test 12), ``two`` (two ClassLabel columns), ``det`` (train 16 +
    validation 8, COCO-style objects), ``vit`` (a tiny ViT with an image processor config), ``text`` (a
    config of another task)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value
    from datasets.utils.logging import disable_progress_bar
    from transformers import AutoModelForImageClassification, ViTConfig, ViTImageProcessor

    disable_progress_bar()  # "Saving the dataset" bars in the test log
    root = tmp_path_factory.mktemp("hf")
    rng = np.random.default_rng(0)
    feats = Features({"img": Image(), "label": ClassLabel(names=CLASSES)})
    part = lambda n: Dataset.from_dict({"img": [_colour(rng, i % 3) for i in range(n)],  # noqa: E731
                                        "label": [i % 3 for i in range(n)]}, features=feats)
    DatasetDict({"train": part(48), "test": part(12)}).save_to_disk(str(root / "cls"))
    Dataset.from_dict({"img": [_colour(rng, i % 3) for i in range(6)], "fine": [i % 3 for i in range(6)],
                       "coarse": [i % 2 for i in range(6)]},
                      features=Features({"img": Image(), "fine": ClassLabel(names=CLASSES),
                                         "coarse": ClassLabel(names=["warm", "cool"])})).save_to_disk(str(root / "two"))

    dfeats = Features({"image": Image(), "objects": {"bbox": List(List(Value("float32"), length=4)),
                                                     "category": List(ClassLabel(names=["white", "gray"]))}})
    scenes = [_scene(k) for k in range(24)]
    det = lambda rows: Dataset.from_dict({"image": [r[0] for r in rows], "objects": [r[1] for r in rows]},  # noqa: E731
                                         features=dfeats)
    DatasetDict({"train": det(scenes[:16]), "validation": det(scenes[16:])}).save_to_disk(str(root / "det"))

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, num_labels=5)
    AutoModelForImageClassification.from_config(cfg).save_pretrained(str(root / "vit"))
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                      image_std=[0.2, 0.25, 0.3]).save_pretrained(str(root / "vit"))
    (root / "text").mkdir()
    (root / "text" / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    return root


# ---------------------------------------------------------------------------------------------- data
def test_classification_set_from_disk(hf):
    from recogen.data import DataOptions, create_dataset

    s = create_dataset(f"hf:{hf / 'cls'}", DataOptions(seed=0))
    assert s.classes == CLASSES and s.name == f"hf:{hf / 'cls'}"
    # No validation split: split off train as folder sets are (15%), the set's own test split kept.
    assert (len(s.train), len(s.val), len(s.test)) == (42, 6, 12)
    assert s.train.images.shape[1:] == (3, 32, 32)
    for part in (s.train, s.val, s.test):  # labels follow their images: the dominant channel is the class
        assert part.images.float().mean((2, 3)).argmax(1).tolist() == part.labels.tolist()


def test_columns_found_by_type_and_ambiguity_is_one_clear_error(hf):
    from recogen.data import DataOptions, create_dataset
    from recogen.errors import DataError

    with pytest.raises(DataError, match=r"several label \(ClassLabel feature\) columns \(fine, coarse\).*\?label=COLUMN"):
        create_dataset(f"hf:{hf / 'two'}", DataOptions())
    s = create_dataset(f"hf:{hf / 'two'}?label=coarse,hflip=no", DataOptions(image_size=16, val_fraction=0.34,
                                                                              test_fraction=0.0))
    assert s.classes == ["warm", "cool"] and not s.hflip_ok and s.train.images.shape[-1] == 16
    with pytest.raises(DataError, match="bad hf data option"):
        create_dataset(f"hf:{hf / 'two'}?colour=red", DataOptions())
    with pytest.raises(DataError, match="has no split 'dev'"):
        create_dataset(f"hf:{hf / 'two'}?val=dev", DataOptions())


def test_detection_set_reads_boxes_and_classes(hf):
    from recogen.data import DataOptions
    from recogen.data.dense import create_dense_dataset
    from recogen.errors import DataError

    d = create_dense_dataset(f"hf:{hf / 'det'}", DataOptions(image_size=64))
    assert d.classes == ["white", "gray"] and (len(d.train), len(d.val), d.test) == (16, 8, None)
    sx, sy = 64 / 48, 64 / 40  # boxes follow the resize of each 48x40 image to 64x64
    for i in range(len(d.train)):
        n = 1 + i % 2
        assert d.train.labels[i].tolist() == list(range(n)) and d.train.orig_sizes[i] == (40, 48)
        want = [[x * sx, y * sy, (x + w) * sx, (y + h) * sy] for x, y, w, h in (BOXES[c] for c in range(n))]
        assert np.allclose(d.train.boxes[i].numpy(), want, atol=1e-4)
    # Read as corners, the second box [24, 9, 14, 11] ends left of where it starts: one clear error.
    with pytest.raises(DataError, match="8 of 24 boxes are invalid, e.g. .*both must be positive"):
        create_dense_dataset(f"hf:{hf / 'det'}?bbox=xyxy", DataOptions())


def test_detect_trains_on_an_hf_set(hf, tmp_path, capsys):
    rc, out, err = main_in_process(
        capsys, "detect", "train", "--data", f"hf:{hf / 'det'}", "--model", "fcos-s", "--model-kwargs",
        '{"width": 8, "fpn_channels": 32}', "--image-size", "64", "--epochs", "1", "--batch-size", "8",
        "--out", tmp_path / "det", "--no-progress")
    assert rc == 0, err[-2000:]
    card = json.loads((tmp_path / "det" / "model.json").read_text())
    assert card["classes"] == ["white", "gray"] and card["data"] == f"hf:{hf / 'det'}"


# -------------------------------------------------------------------------------------------- models
def test_hf_model_wraps_logits_head_and_preprocessing(hf):
    import torch

    from recogen.errors import ModelError
    from recogen.models import create_model, model_meta
    from recogen.models.sources import preprocessing

    name = f"hf:{hf / 'vit'}"
    assert model_meta(name)["task"] == "classify"
    assert preprocessing(name) == {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3], "input_size": 32}
    m = create_model(name, num_classes=3, in_chans=1, image_size=48, pretrained=True)
    assert m.training and m.recogen_head == ("net.classifier",)
    assert m(torch.randn(2, 1, 48, 48)).shape == (2, 3)  # grayscale, and a size other than its config's
    with pytest.raises(ModelError, match="BertForMaskedLM, not an image classifier"):
        model_meta(f"hf:{hf / 'text'}")


def test_classify_train_eval_predict_with_hf_model_and_data(hf, tmp_path, capsys, monkeypatch):
    import shutil

    run, vit = tmp_path / "run", tmp_path / "vit"
    shutil.copytree(hf / "vit", vit)  # a copy: it is moved away below
    rc, out, err = main_in_process(
        capsys, "classify", "train", "--data", f"hf:{hf / 'cls'}", "--model", f"hf:{vit}", "--pretrained",
        "--epochs", "1", "--batch-size", "16", "--out", run, "--no-progress")
    assert rc == 0, err[-2000:]
    card = json.loads((run / "model.json").read_text())
    assert card["model"] == f"hf:{vit}" and card["classes"] == CLASSES and card["image_size"] == 32
    assert card["model_kwargs"]["hf_config"]["model_type"] == "vit"  # the architecture travels with the run
    assert card["normalize"] == {"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}  # the image processor's
    # The portable model reloads from the local folder with the network forbidden.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, out, err = main_in_process(capsys, "classify", "eval", run, "--json")
    assert rc == 0, err[-2000:]
    assert json.loads(out)["num_images"] == 12
    image = tmp_path / "blue.png"
    _colour(np.random.default_rng(1), 2).save(image)
    rc, out, err = main_in_process(capsys, "classify", "predict", run, image, "--json")
    assert rc == 0, err[-2000:]
    # The model folder moves away (or the run is copied to another machine): the run still predicts the same.
    vit.rename(tmp_path / "moved")
    rc, out2, err = main_in_process(capsys, "classify", "predict", run, image, "--json")
    assert rc == 0, err[-2000:]
    assert json.loads(out2) == json.loads(out)


# ------------------------------------------------------------------------------------------- offline
@pytest.mark.parametrize("task,option,value,needles", [
    ("classify", "--model", "hf:nobody-x/no-such-model", ("model nobody-x/no-such-model", "hf download nobody-x/no-such-model --local-dir DIR", "--model hf:DIR")),
    ("classify", "--data", "hf:nobody-x/no-such-set", ("data set nobody-x/no-such-set", "--repo-type dataset", "save_to_disk", "--data hf:DIR")),
    ("detect", "--data", "hf:nobody-x/no-such-set:cfg", ("data set nobody-x/no-such-set", "--repo-type dataset")),
])
def test_offline_and_not_cached_fails_at_once(task, option, value, needles, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [task, "train", option, value, "--out", tmp_path / "run", "--no-progress"]
    if option == "--model":
        args += ["--data", "digits"]
    t = time.perf_counter()
    rc, out, err = main_in_process(capsys, *args)
    assert time.perf_counter() - t < 1.0
    assert_one_line(rc, err, "not in the Hugging Face cache", "offline mode is set", *needles)


def test_offline_train_fails_before_torch_is_imported(tmp_path):
    """A fresh interpreter, offline, an empty cache: `train` with an hf: data set or model that is not
    cached stops with its one line before torch, datasets or transformers is imported (the in-process test
    above has them imported already)."""
    import subprocess
    import sys

    code = ("import sys; from recogen.cli import main\n"
            "print(main(['classify', 'train', '--data', 'hf:nobody-x/no-such-set', '--out', sys.argv[1] + '/a']))\n"
            "print(main(['classify', 'train', '--data', 'digits', '--model', 'hf:nobody-x/no-model', '--out', sys.argv[1] + '/b']))\n"
            "print(sorted(m for m in ('torch', 'datasets', 'transformers') if m in sys.modules))\n")
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                       env=env, cwd=Path(__file__).resolve().parents[1])
    assert r.stdout.split("\n")[:3] == ["2", "2", "[]"], r.stdout + r.stderr
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in r.stderr, r.stderr
    assert errors[0].startswith("error: data set nobody-x/no-such-set is not in the Hugging Face cache"), errors[0]
    assert errors[1].startswith("error: model nobody-x/no-model is not in the Hugging Face cache"), errors[1]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written
