"""Issue 12: every bad input a clear error, nothing lost, nothing executed.

Each test names the defect it pins down; all of them use tiny runs (digits at 16 px, a few epochs).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_line, main_in_process, one_line_error, run_cli, tiny_options
from recogen.errors import ConfigError, DataError, RunError
from recogen.tasks import classify


def cli(capsys, *args) -> tuple[int, str]:
    """``recogen ARGS`` in this process (fast): (exit code, stderr)."""
    rc, _, err = main_in_process(capsys, *args)
    return rc, err


one_line = assert_one_line


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    """A private copy of the session's tiny run, free to damage."""
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


@pytest.fixture
def digit_png(tmp_path) -> Path:
    p = tmp_path / "digit.png"
    Image.fromarray((np.arange(16 * 16).reshape(16, 16) % 256).astype(np.uint8)).save(p)
    return p


def _read_only(folder: Path, request) -> None:
    """Make ``folder`` unwritable even for root (chattr +i), or skip."""
    folder.chmod(0o555)
    request.addfinalizer(lambda: folder.chmod(0o755))
    if os.access(folder, os.W_OK) or os.geteuid() == 0:
        r = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
        if r.returncode != 0:
            pytest.skip("cannot make a folder read-only here (root without chattr)")
        request.addfinalizer(lambda: subprocess.run(["chattr", "-i", str(folder)], capture_output=True))
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return
    (folder / ".probe").unlink()
    pytest.skip("the folder stays writable here")


# ------------------------------------------------------------------------------ 1: nothing executed
class _Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling creates the marker file


def test_resume_refuses_a_planted_pickle_even_with_TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD(run, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    last = run / "checkpoints" / "last.ckpt"
    torch.save({"epoch": 0, "state_dict": {}, "x": _Evil(marker)}, last)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    config = (run / "config.yaml").read_bytes()
    with pytest.raises(RunError, match="refused to load"):
        classify.train(out=str(run), resume=True, epochs=4, progress=False)
    assert not marker.exists()
    assert (run / "config.yaml").read_bytes() == config


def test_lightning_loads_checkpoints_weights_only_whatever_the_environment(tmp_path, monkeypatch):
    from recogen.tasks.callbacks import _atomic_checkpoint_io

    marker = tmp_path / "pwned"
    path = tmp_path / "x.ckpt"
    torch.save({"epoch": 0, "state_dict": {}, "x": _Evil(marker)}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(RunError, match="refused"):
        _atomic_checkpoint_io().load_checkpoint(path)
    assert not marker.exists()


# ------------------------------------------------------------------ 6, 7, 10: bad options, one line
BAD_OPTIONS = [
    (["--epochs", "-1"], "--epochs"),
    (["--epochs", "0"], "--epochs"),
    (["--limit", "0"], "--limit"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--image-size", "0"], "--image-size"),
    (["--image-size", "100000"], "--image-size"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--optimizer", "adam"], "--optimizer"),
    (["--precision", "fp16"], "--precision"),
    (["--label-smoothing", "2"], "--label-smoothing"),
    (["--model-kwargs", '{"bogus": 1}'], "bogus"),
]


@pytest.mark.parametrize("args,needle", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_training_options_are_one_line_and_leave_nothing(args, needle, tmp_path, capsys):
    out = tmp_path / "r"
    rc, err = cli(capsys, "classify", "train", "--data", "digits", "--limit", "64", "--image-size", "16",
                  "--model", "cnn-s", "--epochs", "1", "--no-progress", "--out", out, *args)
    one_line(rc, err, needle)
    assert not out.exists()  # validated before the run folder is made


def test_a_gpu_that_is_not_there_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    rc, err = cli(capsys, "classify", "train", "--accelerator", "gpu", "--out", tmp_path / "r")
    one_line(rc, err, "--accelerator gpu")
    rc, err = cli(capsys, "classify", "train", "--accelerator", "cpu", "--precision", "16-mixed", "--out", tmp_path / "r")
    one_line(rc, err, "16-mixed")
    assert not (tmp_path / "r").exists()


def test_yaml_values_are_typed_and_checked(tmp_path, capsys):
    from recogen.config import ClassifyConfig
    from recogen.tasks.runs import make_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text('epochs: "many"\n')
    rc, err = cli(capsys, "classify", "train", "--config", cfg, "--out", tmp_path / "r")
    one_line(rc, err, "epochs", "many")
    cfg.write_text("lr: 1e-3\nepochs: 3\n")  # YAML 1.1 reads 1e-3 as a string
    c = make_config(ClassifyConfig, cfg, {})
    assert c.lr == 1e-3 and isinstance(c.lr, float)
    # The Python API gets the same checks.
    with pytest.raises(ConfigError, match="--batch-size"):
        ClassifyConfig(batch_size=0)
    with pytest.raises(ConfigError, match="--lr"):
        classify.train(data="digits", lr=float("nan"), out=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_out_that_cannot_be_a_run_folder_is_one_line(tmp_path, capsys, request):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, needle in [(a_file, "is a file"), (a_file / "sub", "which is a file")]:
        rc, err = cli(capsys, "classify", "train", "--data", "digits", "--limit", "64", "--out", out)
        one_line(rc, err, needle)
    locked = tmp_path / "locked"
    locked.mkdir()
    _read_only(locked, request)
    rc, err = cli(capsys, "classify", "train", "--data", "digits", "--limit", "64", "--out", locked / "run")
    one_line(rc, err, "cannot write")


def test_predict_topk_below_one_is_refused(run, digit_png, capsys):
    for k in ("0", "-3"):
        rc, err = cli(capsys, "classify", "predict", run, digit_png, "--topk", k)
        one_line(rc, err, "--topk")
    with pytest.raises(ConfigError, match="topk"):
        classify.load(run).predict(str(digit_png), topk=0)


# ------------------------------------------------------------------------ 6: damaged run folders
def _damage(run: Path, how: str) -> None:
    from safetensors.torch import save_file

    w, card = run / "model.safetensors", run / "model.json"
    data = w.read_bytes()
    if how == "truncated weights":
        w.write_bytes(data[: len(data) // 2])
    elif how == "empty weights":
        w.write_bytes(b"")
    elif how == "random weights":
        w.write_bytes(np.random.default_rng(0).bytes(4096))
    elif how == "other tensors":
        save_file({"x": torch.zeros(3)}, str(w))
    elif how == "card is a list":
        card.write_text("[1, 2, 3]")
    elif how == "card lacks normalize":
        c = json.loads(card.read_text())
        del c["normalize"]
        card.write_text(json.dumps(c))
    elif how == "card disagrees with weights":
        c = json.loads(card.read_text())
        c["classes"] = c["classes"][:5]
        card.write_text(json.dumps(c))


DAMAGE = ["truncated weights", "empty weights", "random weights", "other tensors", "card is a list",
          "card lacks normalize", "card disagrees with weights"]


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_model_files_are_one_line(how, run, digit_png, capsys):
    _damage(run, how)
    rc, err = cli(capsys, "classify", "predict", run, digit_png)
    one_line(rc, err, "model.")
    rc, err = cli(capsys, "export", run, "--format", "safetensors", "--out", run / "copy.safetensors")
    one_line(rc, err)


@pytest.mark.parametrize("how", ["empty", "truncated"])
def test_damaged_last_checkpoint_is_one_line_and_changes_nothing(how, run, capsys):
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(b"" if how == "empty" else last.read_bytes()[:1000])
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    rc, err = cli(capsys, "classify", "train", "--resume", "--out", run, "--no-progress")
    one_line(rc, err, "last.ckpt")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_eval_and_export_of_a_read_only_run_fail_before_any_work(run, capsys, request):
    _read_only(run, request)
    rc, err = cli(capsys, "classify", "eval", run)
    one_line(rc, err, "--no-write")
    rc, err = cli(capsys, "export", run, "--format", "torchscript")
    one_line(rc, err, "cannot write")


# ------------------------------------------------------------- 5, 10: checkpoints and --resume
@pytest.fixture(scope="module")
def flat_run(tmp_path_factory) -> Path:
    """3 epochs whose validation accuracy never improves (a learning rate of 1e-12), so best.ckpt is epoch 0."""
    out = tmp_path_factory.mktemp("flat") / "run"
    return classify.train(**tiny_options(out, epochs=3, lr=1e-12))


def test_last_checkpoint_is_written_every_epoch_not_only_when_the_metric_improves(flat_run):
    load = lambda name: torch.load(flat_run / "checkpoints" / name, weights_only=True)  # noqa: E731
    assert load("best.ckpt")["epoch"] == 0
    assert load("last.ckpt")["epoch"] == 2


def test_resume_with_fewer_epochs_than_done_is_refused_and_changes_nothing(flat_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(flat_run, run)
    config = (run / "config.yaml").read_bytes()
    rc, err = cli(capsys, "classify", "train", "--resume", "--out", run, "--epochs", "2", "--no-progress")
    one_line(rc, err, "--epochs 2", "3 epochs")
    assert (run / "config.yaml").read_bytes() == config


def test_resume_with_more_epochs_rebuilds_the_one_cycle_schedule(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    classify.train(out=str(run), resume=True, epochs=5, progress=False)
    hist = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in hist] == [0, 1, 2, 3, 4]
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 5
    # The schedule was rebuilt to end at the new last step: the final rate is that of a 5-epoch run.
    ref = classify.train(**tiny_options(tmp_path / "ref", epochs=5))
    assert hist[-1]["lr"] == pytest.approx(json.loads((ref / "history.json").read_text())[-1]["lr"], rel=1e-6)


def test_sigterm_before_the_first_epoch_ends_says_nothing_was_saved(tmp_path):
    import lightning.pytorch as pl

    class Term(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == 0:
                os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as e:
        classify.train(**tiny_options(out, epochs=2), callbacks=[Term()])
    assert "no checkpoint was saved" in str(e.value)
    assert not (out / "checkpoints" / "last.ckpt").exists()
    # Nothing to resume, and the same command starts over instead of being refused.
    classify.train(**tiny_options(out, epochs=1))
    assert (out / "model.json").is_file()


# ---------------------------------------------------------------------------- 10: demo, file modes
def test_demo_refuses_a_folder_that_is_not_a_demo_run(tmp_path, capsys):
    keep = tmp_path / "mine" / "thesis.txt"
    keep.parent.mkdir()
    keep.write_text("precious")
    rc, err = cli(capsys, "demo", "--out", keep.parent, "--no-progress")
    one_line(rc, err, "not a previous demo run")
    assert keep.read_text() == "precious"


def test_run_files_get_the_usual_permissions(tiny_run):
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("config.yaml", "model.json", "model.safetensors", "history.json", "checkpoints/last.ckpt"):
        assert (tiny_run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# --------------------------------------------------------------------------------- 8: image files
def test_16_bit_png_is_scaled_not_clipped(tmp_path, run):
    from recogen.data.images import open_image

    p = tmp_path / "g16.png"
    Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16)).save(p)
    with Image.open(p) as raw:
        assert raw.mode.startswith("I;16")
    assert np.asarray(open_image(p).convert("L")).max() == 128  # 32768 * 255 / 65535, not 255
    assert classify.load(run).preprocess([str(p)]).unique().tolist() == [128]


def _corrupt_crc_png(path: Path) -> None:
    b = io.BytesIO()
    Image.fromarray((np.arange(16 * 16).reshape(16, 16) % 256).astype(np.uint8)).save(b, "PNG")
    data = bytearray(b.getvalue())
    i = data.index(b"IDAT")
    n = struct.unpack(">I", data[i - 4 : i])[0]
    data[i + 4 + n] ^= 0xFF  # the IDAT chunk's CRC: Pillow decodes such a file without a word
    path.write_bytes(bytes(data))


def test_png_with_a_bad_checksum_is_refused(tmp_path, run, capsys):
    bad = tmp_path / "bad.png"
    _corrupt_crc_png(bad)
    rc, err = cli(capsys, "classify", "predict", run, bad)
    one_line(rc, err, "bad.png")
    # ... and in training data (a class folder).
    for c in ("a", "b"):
        (tmp_path / "set" / c).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(tmp_path / "set" / c / f"{k}.png")
    shutil.copy(bad, tmp_path / "set" / "a" / "bad.png")
    from recogen.data import DataOptions, create_dataset

    with pytest.raises(DataError, match="bad.png"):
        create_dataset(f"folder:{tmp_path / 'set'}", DataOptions(image_size=8))


def test_the_cli_exit_code_is_2_in_a_fresh_interpreter(tmp_path):
    one_line_error(run_cli("classify", "train", "--epochs", "0", "--out", tmp_path / "r"), "--epochs")
    assert not (tmp_path / "r").exists()
