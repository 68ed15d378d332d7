"""Issue 12, what users see: one-line errors for bad --model-kwargs in every task, a clear stop on a
non-finite loss, 1-based epochs in the progress bar, one line per epoch without it, listings with
tasks and JSON, one detected box per line, conversion counts, errors that point at the subcommand's
help, and report.html for every training run.

Training here is tiny (64 digits at 16 px, 1-3 epochs) and runs in this process.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_line, main_in_process, tiny_options
from recogen.errors import UserError
from recogen.tasks import callbacks, classify


cli = main_in_process  # (capsys, *args) -> (exit code, stdout, stderr)
one_line = assert_one_line


TINY = ["--data", "digits", "--limit", "64", "--image-size", "16", "--model", "cnn-s", "--batch-size", "32", "--seed", "0"]


# ------------------------------------------------------------------ A: bad --model-kwargs, every task
@pytest.mark.parametrize("task, model, kwargs", [("detect", "fcos-s", '{"num_classes": 3}'),
                                                  ("detect", "fcos-s", '{"bogus": 1}'),
                                                  ("segment", "unet", '{"bogus": 1}')])
def test_bad_model_kwargs_of_detect_and_segment_is_one_line_and_writes_nothing(capsys, tmp_path, task, model, kwargs):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, task, "train", "--data", "shapes:40", "--image-size", "32", "--model", model,
                     "--model-kwargs", kwargs, "--epochs", "1", "--no-progress", "--out", out)
    one_line(rc, err, "--model-kwargs", next(iter(json.loads(kwargs))), model)
    assert "Traceback" not in err
    assert not out.exists()  # checked before the run folder is made


# ------------------------------------------------------------------------------ B: non-finite loss
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys, caplog, monkeypatch):
    pl = callbacks.lightning()
    # As a Python program that did not ask for log output: the epoch lines are logged, not printed.
    monkeypatch.setattr(logging.getLogger("recogen"), "handlers", [])
    caplog.set_level(logging.INFO, logger="recogen.train")

    class Poison(pl.Callback):
        """The model's weights become NaN at the first step of the second epoch."""

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 0:
                with torch.no_grad():
                    next(module.parameters()).fill_(float("nan"))

    run = tmp_path / "run"
    with pytest.raises(UserError) as e:
        classify.train(**tiny_options(run, limit=64, epochs=3, batch_size=32), callbacks=[Poison()])
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code == 2
    assert "loss became nan at step 3 (epoch 2" in msg and "lower --lr" in msg, msg
    last = run / "checkpoints" / "last.ckpt"
    assert str(last) in msg and "(epoch 1)" in msg, msg
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0  # the first epoch's, not overwritten with the broken weights
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert len(json.loads((run / "history.json").read_text())) == 1
    assert not (run / "model.json").exists()
    lines = [r.getMessage() for r in caplog.records if r.name == "recogen.train"]
    assert [m.split()[:2] for m in lines if m.startswith("epoch ")] == [["epoch", "1/3"]]
    assert any(m.startswith("data ") for m in lines)  # the run's summary lines are logged too
    out = capsys.readouterr().out
    assert "epoch 1/3" not in out and "data " not in out  # ...and nothing is printed


def test_a_huge_learning_rate_is_one_line_and_saves_no_broken_epoch(capsys, tmp_path):
    run = tmp_path / "run"
    rc, out, err = cli(capsys, "classify", "train", *TINY, "--epochs", "3", "--lr", "1e6", "--precision", "32-true",
                       "--no-progress", "--out", run)
    line = one_line(rc, err, "became", "lower --lr or check the data")
    assert any(f"became {v} " in line for v in ("nan", "inf", "-inf")), line
    assert not (run / "model.json").exists()
    if (run / "checkpoints" / "last.ckpt").is_file():  # only epochs whose losses were all finite
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert f"(epoch {ckpt['epoch'] + 1})" in line
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


# --------------------------------------------------------------------- C: progress and epoch lines
def test_progress_bar_counts_epochs_from_one(capsys, tmp_path):
    rc, out, err = cli(capsys, "classify", "train", *TINY, "--epochs", "1", "--out", tmp_path / "run")
    assert rc == 0, err[-2000:]
    assert "Epoch 1/1" in out and "Epoch 0/0" not in out, out[-2000:]


def test_no_progress_prints_one_line_per_epoch_and_every_run_has_a_report(capsys, tmp_path):
    run = tmp_path / "run"
    rc, out, err = cli(capsys, "classify", "train", *TINY, "--epochs", "2", "--no-progress", "--out", run)
    assert rc == 0, err[-2000:]
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"], out
    for line in lines:
        assert "train_loss" in line and "val_acc" in line and line.endswith(" s"), line
    assert "Epoch " not in out  # no progress bar

    # report.html for every training run, and `recogen report RUN` rebuilds it.
    report = run / "report.html"
    page = report.read_text()
    assert "accuracy" in page and "data:image/png" in page
    report.unlink()
    rc, out, err = cli(capsys, "report", run)
    assert rc == 0, err
    assert report.is_file() and str(report) in out
    one_line(*cli(capsys, "report", tmp_path / "nope")[::2], "nope")
    (tmp_path / "empty").mkdir()
    one_line(*cli(capsys, "report", tmp_path / "empty")[::2], "not a run folder")


# -------------------------------------------------------------------------------------- listings
def test_models_have_a_task_column_json_and_an_unknown_task_is_an_error(capsys):
    rc, out, _ = cli(capsys, "models")
    assert rc == 0
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()}
    assert rows["cnn-s"] == "classify" and rows["fcos-s"] == "detect" and rows["unet"] == "segment"
    assert rows["ddpm"] == "generate"
    rc, out, _ = cli(capsys, "models", "--task", "segment")
    assert rc == 0 and {line.split()[1] for line in out.splitlines()} == {"segment"}
    line = one_line(*cli(capsys, "models", "--task", "foo")[::2], "foo")
    for task in ("classify", "detect", "segment", "generate"):
        assert task in line
    rc, out, _ = cli(capsys, "models", "--json")
    models = json.loads(out)
    assert {"name": "unet", "task": "segment"}.items() <= next(m for m in models if m["name"] == "unet").items()
    assert all(m["description"] for m in models)


def test_datasets_json(capsys):
    rc, out, _ = cli(capsys, "datasets", "--json")
    assert rc == 0
    sets = json.loads(out)
    kinds = {(d["name"], d["kind"]) for d in sets}
    assert ("digits", "classification") in kinds and ("coco", "detection and segmentation") in kinds
    assert ("shapes", "classification") in kinds and ("shapes", "detection and segmentation") in kinds
    assert next(d for d in sets if d["name"] == "yolo")["tasks"] == ["detect", "segment"]


# ---------------------------------------------------------------------------- predict and convert
def test_detect_predict_prints_one_box_per_line_and_json_is_unchanged(capsys, tmp_path, monkeypatch):
    from recogen.tasks import detect

    img = tmp_path / "scene.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    result = {"path": str(img), "size": [64, 64], "detections": [
        {"label": "circle", "index": 0, "score": 0.91, "box": [1.0, 2.0, 30.4, 40.6]},
        {"label": "star", "index": 3, "score": 0.5, "box": [10.0, 12.0, 20.0, 22.0]}]}
    monkeypatch.setattr(detect, "predict_files", lambda run, files, out_dir=None, backend="torch", **kw: [result])
    rc, out, err = cli(capsys, "detect", "predict", tmp_path, img)
    assert rc == 0, err
    assert out.splitlines() == [f"{img}: 2 object(s)", "  circle  0.91  1 2 30 41", "  star    0.50  10 12 20 22"]
    rc, out, err = cli(capsys, "detect", "predict", tmp_path, img, "--json")
    assert rc == 0 and json.loads(out) == [result]


def test_data_convert_prints_images_and_objects_per_split(capsys, tmp_path):
    from recogen.data.formats import write_yolo
    from recogen.data.shapes import SHAPE_CLASSES
    from recogen.data.shapes_scenes import make_scenes

    scenes = make_scenes(30, 64, seed=0)
    write_yolo({"train": scenes.subset(range(20)), "val": scenes.subset(range(20, 30))}, SHAPE_CLASSES, tmp_path / "yolo")
    n_train = sum(len(b) for b in scenes.subset(range(20)).boxes)
    n_val = sum(len(b) for b in scenes.subset(range(20, 30)).boxes)
    rc, out, err = cli(capsys, "data", "convert", "--from", "yolo", "--to", "coco", tmp_path / "yolo", tmp_path / "coco")
    assert rc == 0, err
    assert f"converted 30 images, {n_train + n_val} objects, {len(SHAPE_CLASSES)} classes" in out
    split_lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    assert split_lines == {"train": ["20", "images", str(n_train), "objects"],
                           "val": ["10", "images", str(n_val), "objects"]}, out


# ------------------------------------------------------------------------------------ bad options
def test_an_unknown_option_points_at_the_subcommands_help(capsys):
    one_line(*cli(capsys, "classify", "train", "--bogus", "3")[::2], "--bogus", "`recogen classify train --help`")
    one_line(*cli(capsys, "detect", "predict", "run", "x.png", "--topk", "3")[::2], "`recogen detect predict --help`")


# ------------------------------------------------------------------ predict over a folder with a bad file
def test_predict_names_a_bad_image_and_skip_bad_images_predicts_the_others(tiny_run, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("L", (16, 16), 0).save(folder / "a.png")
    Image.new("L", (16, 16), 255).save(folder / "b.png")
    (folder / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rc, out, err = cli(capsys, "classify", "predict", tiny_run, folder)
    one_line(rc, err, "c.png", "--skip-bad-images")
    rc, out, err = cli(capsys, "classify", "predict", tiny_run, folder, "--skip-bad-images", "--json")
    assert rc == 0 and "skipped 1 unreadable image" in err and "c.png" in err
    assert sorted(Path(r["path"]).name for r in json.loads(out)) == ["a.png", "b.png"]


def test_no_trained_model_names_the_path_once(tmp_path, capsys):
    from PIL import Image

    Image.new("L", (16, 16), 0).save(tmp_path / "x.png")
    (tmp_path / "run").mkdir()
    rc, _, err = cli(capsys, "classify", "predict", tmp_path / "run", tmp_path / "x.png")
    assert rc == 2 and err.count(str(tmp_path / "run")) == 1 and "no model.json in it" in err, err
