"""Training end to end: accuracy of the defaults, determinism, checkpoints, resume, run-folder safety."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_cli, tiny_options
from recogen.errors import RunError
from recogen.tasks import classify


def _json(p: Path):
    return json.loads(p.read_text())


@pytest.mark.slow
def test_demo_defaults_reach_98_percent_on_real_digits_and_write_the_run_folder(demo_run):
    m = _json(demo_run / "metrics.json")
    # The demo trains the defaults on mnist-5k (real MNIST digits) and tests on its fixed 1,000 images.
    # Measured with these defaults (benchmarks/classify_defaults.py, seeds 0/1/2): 0.991 / 0.992 / 0.990.
    assert m["split"] == "test" and m["held_out"] and m["num_images"] == 1000 and m["data"] == "mnist-5k"
    assert m["accuracy"] >= 0.98, m["accuracy"]
    cfg = (demo_run / "config.yaml").read_text()
    assert "model: cnn-s" in cfg and "epochs: auto" not in cfg  # the auto choices are saved resolved
    for f in ["model.safetensors", "model.json", "history.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
              "confusion_matrix.png", "sample_predictions.png", "report.html"]:
        assert (demo_run / f).is_file(), f
    assert list((demo_run / "tensorboard").glob("events.out.tfevents.*"))
    history = _json(demo_run / "history.json")
    assert [r["epoch"] for r in history] == list(range(len(history)))
    assert history[-1]["val_acc"] > history[0]["val_acc"]
    html = (demo_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3


def test_same_seed_gives_same_metrics_and_weights(tmp_path):
    a = classify.train(**tiny_options(tmp_path / "a"))
    b = classify.train(**tiny_options(tmp_path / "b"))
    c = classify.train(**tiny_options(tmp_path / "c", seed=1))
    assert _json(a / "metrics.json") == _json(b / "metrics.json")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_checkpoint_and_portable_model_give_identical_predictions(tiny_run):
    from recogen.data import DataOptions, create_dataset
    from recogen.models import create_model

    clf = classify.load(tiny_run)
    card = clf.card
    test = create_dataset("digits", DataOptions(image_size=16)).test
    from_portable = classify.predict_probs(clf.model, card, test.images)
    # The Lightning checkpoint, read without unpickling code, rebuilt from the registry.
    net = create_model(card["model"], num_classes=10, in_chans=1, image_size=16,
                       weights=tiny_run / "checkpoints" / "best.ckpt").eval()
    from_ckpt = classify.predict_probs(net, card, test.images)
    assert torch.equal(from_portable, from_ckpt)
    # And the accuracy the run recorded is what these predictions give.
    acc = (from_portable.argmax(1) == test.labels).float().mean().item()
    assert acc == pytest.approx(_json(tiny_run / "metrics.json")["accuracy"], abs=1e-6)


def _epochs(run: Path) -> list[int]:
    return [r["epoch"] for r in _json(run / "history.json")]


def test_resume_after_a_killed_run_continues_without_repeating_or_losing_an_epoch(tmp_path):
    args = ["classify", "train", "--data", "digits", "--limit", "300", "--image-size", "16", "--model", "cnn-s",
            "--epochs", "5", "--no-progress", "--seed", "2"]
    ref = run_cli(*args, "--out", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]

    run = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "recogen", *map(str, args), "--out", str(run)], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        try:
            if len(_json(run / "history.json")) >= 2:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    assert p.poll() is None, "the run finished before it could be killed"
    p.send_signal(signal.SIGKILL)  # a hard crash: no chance to clean up
    p.wait()
    done = _epochs(run)
    assert 2 <= len(done) < 5 and (run / "checkpoints" / "last.ckpt").is_file()

    r = run_cli("classify", "train", "--resume", "--out", run, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _epochs(run) == [0, 1, 2, 3, 4]
    # Exactly the run that was never interrupted: same weights, same per-epoch numbers.
    assert (run / "model.safetensors").read_bytes() == (tmp_path / "ref" / "model.safetensors").read_bytes()
    strip = lambda h: [{k: v for k, v in row.items() if k != "time_s"} for row in h]  # noqa: E731
    assert strip(_json(run / "history.json")) == strip(_json(tmp_path / "ref" / "history.json"))


def test_existing_run_is_never_overwritten(tiny_run):
    before = (tiny_run / "model.safetensors").read_bytes()
    with pytest.raises(RunError, match="already holds a run"):
        classify.train(**tiny_options(tiny_run))
    assert (tiny_run / "model.safetensors").read_bytes() == before


def test_resume_of_nothing_is_a_clear_error(tmp_path):
    r = run_cli("classify", "train", "--resume", "--out", tmp_path / "empty")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: nothing to resume") and len(r.stderr.strip().splitlines()) == 1


def test_interrupt_inside_the_api_is_resumable(tmp_path):
    import lightning.pytorch as pl

    class StopAfterTwo(pl.Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        classify.train(**tiny_options(out, epochs=4), callbacks=[StopAfterTwo()])
    assert not (out / "model.json").exists()  # no half-finished model is published
    classify.train(**tiny_options(out, epochs=4, resume=True))
    assert _epochs(out) == [0, 1, 2, 3]
    assert (out / "model.json").is_file()


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_learning_threshold_holds_in_both_precisions(tmp_path, precision):
    # "auto" picks bf16 on CPUs with native bf16 and fp32 elsewhere (tested with the capability faked in
    # test_budget.py); the recipe must learn in both. Measured (seed 0, 300 digits at 16 px, 8 epochs):
    # fp32 0.900, bf16-mixed 0.892 test accuracy; chance is 0.1.
    run = classify.train(**tiny_options(tmp_path / "run", epochs=8, precision=precision))
    m = _json(run / "metrics.json")
    assert m["accuracy"] >= 0.85, (precision, m["accuracy"])
    assert f"precision: {precision}" in (run / "config.yaml").read_text()
