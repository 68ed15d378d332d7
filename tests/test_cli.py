"""The command line as a user runs it: eval, predict, listings, and one-line errors for bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import assert_one_line, main_in_process, one_line_error as _one_line_error, run_cli


def test_help_does_not_import_torch():
    code = "import sys, recogen.cli as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    r = run_cli("--help")
    assert r.returncode == 0 and "classify" in r.stdout


def test_models_and_datasets_are_listed():
    r = run_cli("models")
    assert r.returncode == 0
    for name in ["seed-cnn", "cnn-s", "resnet18", "resnet34", "resnet50", "vit-tiny", "vit-small", "cnn-rnn"]:
        assert f"\n{name} " in "\n" + r.stdout
    r = run_cli("datasets")
    assert r.returncode == 0, r.stderr
    classify, dense = r.stdout.split("detection and segmentation:")
    for name in ["digits", "shapes", "mnist", "fashion-mnist", "cifar10", "cifar100", "folder"]:
        assert f"\n  {name} " in classify
    for name in ["shapes", "coco", "yolo", "masks"]:
        assert f"\n  {name} " in dense


@pytest.mark.slow
def test_eval_json_matches_the_saved_metrics(demo_run):
    r = run_cli("classify", "eval", demo_run, "--json", "--no-write")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    saved = json.loads((demo_run / "metrics.json").read_text())
    assert m["accuracy"] == saved["accuracy"] and m["num_images"] == 1000  # mnist-5k's fixed test digits
    assert m["top5_accuracy"] >= m["accuracy"]
    assert sum(map(sum, m["confusion_matrix"])) == 1000
    assert set(m["per_class"]) == {str(i) for i in range(10)}
    assert sum(v["support"] for v in m["per_class"].values()) == 1000
    text = run_cli("classify", "eval", demo_run, "--split", "val", "--no-write")
    assert "precision" in text.stdout and "true\\pred" in text.stdout


@pytest.mark.slow
def test_predict_files_and_folders(demo_run, tmp_path):
    samples = sorted((demo_run / "samples").glob("*.png"))
    r = run_cli("classify", "predict", demo_run, *samples, "--json", "--topk", "3")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert len(res) == len(samples) == 16
    right = sum(Path(x["path"]).stem.split("_true_")[1] == x["label"] for x in res)
    assert right >= 15
    for x in res:
        assert len(x["topk"]) == 3 and x["topk"][0]["prob"] >= x["topk"][1]["prob"]
        assert 0 < sum(t["prob"] for t in x["topk"]) <= 1 + 1e-6
    # A folder, with an RGB JPEG among the PNGs (converted to the model's grayscale).
    Image.open(samples[0]).convert("RGB").resize((64, 64)).save(tmp_path / "big.jpg")
    for s in samples[:3]:
        (tmp_path / s.name).write_bytes(s.read_bytes())
    r = run_cli("classify", "predict", demo_run, tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 4


@pytest.mark.slow
def test_python_api_predicts_like_the_cli(demo_run):
    import recogen

    clf = recogen.load(demo_run)
    sample = sorted((demo_run / "samples").glob("*.png"))[0]
    one = clf.predict(Image.open(sample))
    assert one["label"] == clf.predict(str(sample))["label"]
    assert clf.evaluate()["accuracy"] == json.loads((demo_run / "metrics.json").read_text())["accuracy"]


def test_bad_inputs_give_one_line_and_exit_2(tiny_run, tmp_path, capsys):
    # One in a fresh interpreter, as a user runs it (`python -m recogen`); the others in this process
    # (the same main(), without paying the interpreter's start-up ten more times).
    _one_line_error(run_cli("classify", "predict", tiny_run, tmp_path / "missing.png"), "missing.png")

    def fails(*args, needles):
        assert_one_line(*main_in_process(capsys, *args)[::2], *needles)

    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    fails("classify", "predict", tiny_run, bad, needles=["corrupt.png"])
    fails("classify", "train", "--model", "resnet19", "--out", tmp_path / "r1", needles=["resnet19", "resnet18"])
    fails("classify", "train", "--model", "seed-cnn", "--image-size", "4", "--out", tmp_path / "r2", needles=["8 px"])
    fails("classify", "train", "--model", "vit-tiny", "--image-size", "30", "--out", tmp_path / "r3", needles=["divisible"])
    fails("classify", "train", "--data", "nosuch", "--out", tmp_path / "r4", needles=["nosuch"])
    fails("classify", "train", "--data", f"folder:{tmp_path / 'nofolder'}", "--out", tmp_path / "r5", needles=["nofolder"])
    fails("classify", "train", "--epochs", "many", needles=["--epochs"])
    fails("classify", "eval", tmp_path / "norun", needles=["norun"])
    fails("classify", "train", "--augment", "wild", "--out", tmp_path / "r6", needles=["wild"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochz: 3\n")
    fails("classify", "train", "--config", cfg, "--out", tmp_path / "r7", needles=["epochz"])
    for k in range(1, 8):  # a rejected command leaves nothing behind
        assert not (tmp_path / f"r{k}").exists()


def test_yaml_config_is_read_and_the_command_line_wins(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: digits\nlimit: 200\nimage_size: 16\nmodel: cnn-s\nepochs: 5\nbatch_size: 64\n")
    r = run_cli("classify", "train", "--config", cfg, "--epochs", "1", "--out", tmp_path / "run", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    import yaml

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["limit"] == 200 and saved["model"] == "cnn-s"
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 1


def test_data_convert_yolo_to_coco_and_refuses_to_overwrite(tmp_path):
    from recogen.data import DataOptions
    from recogen.data.dense import create_dense_dataset
    from recogen.data.formats import write_yolo
    from recogen.data.shapes import SHAPE_CLASSES
    from recogen.data.shapes_scenes import make_scenes

    scenes = make_scenes(30, 64, seed=0)
    write_yolo({"train": scenes.subset(range(20)), "val": scenes.subset(range(20, 30))}, SHAPE_CLASSES, tmp_path / "yolo")
    r = run_cli("data", "convert", "--from", "yolo", "--to", "coco", tmp_path / "yolo", tmp_path / "coco")
    assert r.returncode == 0, r.stderr[-2000:]
    back = create_dense_dataset(f"coco:{tmp_path / 'coco'}", DataOptions(image_size=64))
    n_back = sum(len(b) for s in (back.train, back.val) for b in s.boxes)
    assert back.classes == SHAPE_CLASSES and n_back == sum(len(b) for b in scenes.boxes)
    again = run_cli("data", "convert", "--from", "yolo", "--to", "coco", tmp_path / "yolo", tmp_path / "coco")
    _one_line_error(again, "not empty")
