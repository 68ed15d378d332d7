"""Export: ONNX (checked with onnxruntime), TorchScript, safetensors; predict --backend onnx; CLI errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli, tiny_options
from recogen.errors import ModelError, RunError
from recogen.export import export_model

# One-epoch tiny runs: the weights only need to be non-trivial, not good.
TINY = {
    "classify": lambda out: tiny_options(out, epochs=1, limit=200),
    "detect": lambda out: dict(data="shapes:40", image_size=64, model="fcos-s", epochs=1, batch_size=8,
                               model_kwargs={"width": 8, "fpn_channels": 32}, augment="none", out=str(out),
                               progress=False, seed=0),
    "segment": lambda out: dict(data="shapes:40", image_size=32, model="unet", model_kwargs={"width": 4, "depth": 2},
                                epochs=1, batch_size=8, augment="none", out=str(out), progress=False, seed=0),
}
TASKS = list(TINY)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny trained run per task, exported to ONNX in its folder (model.onnx)."""
    from recogen.tasks import get_task

    base = tmp_path_factory.mktemp("export")
    out = {}
    for task, opts in TINY.items():
        run = get_task(task).train(**opts(base / task))
        out[task] = run
    return out


@pytest.fixture(scope="module")
def exported(runs) -> dict[str, dict]:
    return {task: export_model(run, "onnx") for task, run in runs.items()}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Three PNGs of different sizes: coloured shapes on a grey ground (so the detector finds boxes)."""
    from PIL import Image, ImageDraw

    d = tmp_path_factory.mktemp("images")
    paths = []
    for i, (w, h) in enumerate([(64, 64), (90, 70), (40, 56)]):
        img = Image.new("RGB", (w, h), (120, 120, 120))
        draw = ImageDraw.Draw(img)
        draw.rectangle([w // 8, h // 6, w // 2, h // 2], fill=(220, 40, 40))
        draw.ellipse([w // 2, h // 2, w - 4, h - 4], fill=(40, 40, 220))
        p = d / f"img{i}.png"
        img.save(p)
        paths.append(p)
    return paths


# -------------------------------------------------------------------------------------------- onnx
@pytest.mark.parametrize("task", TASKS)
def test_onnx_export_is_verified_and_the_batch_axis_is_dynamic(task, runs, exported):
    import onnxruntime as ort

    from recogen.export.graphs import build_graph
    from recogen.artifact import load_portable

    r = exported[task]
    assert Path(r["path"]) == runs[task] / "model.onnx" and r["max_abs_diff"] < 1e-4
    model, card = load_portable(runs[task])
    graph = build_graph(model, card)
    sess = ort.InferenceSession(r["path"], providers=["CPUExecutionProvider"])
    # The card travels inside the file too.
    assert json.loads(sess.get_modelmeta().custom_metadata_map["recogen.card"])["classes"] == card["classes"]
    for b in (1, 3, 5):
        x = graph.sample(b, 100 + b)
        got = sess.run(None, {"images": x.numpy()})
        with torch.inference_mode():
            ref = [t.numpy() for t in graph.module(x)]
        assert [g.shape for g in got] == [t.shape for t in ref] and got[0].shape[0] == b
        assert max(float(np.abs(g - t).max()) for g, t in zip(got, ref)) < 1e-4


def test_classify_backend_onnx_gives_the_same_predictions(runs, exported, images):
    from recogen.tasks import classify

    eager = classify.load(runs["classify"]).predict([str(p) for p in images], topk=3)
    onnx = classify.load(runs["classify"], backend="onnx").predict([str(p) for p in images], topk=3)
    for a, b in zip(eager, onnx):
        assert a["label"] == b["label"] and [t["index"] for t in a["topk"]] == [t["index"] for t in b["topk"]]
        assert abs(a["prob"] - b["prob"]) < 1e-4


def test_detect_backend_onnx_gives_the_same_boxes(runs, exported, images):
    from recogen.tasks import detect

    # A low threshold so that the one-epoch model returns boxes to compare (measured: dozens per image).
    kw = dict(conf=0.01, iou=0.5, max_det=50)
    eager = detect.load(runs["detect"]).predict([str(p) for p in images], **kw)
    onnx = detect.load(runs["detect"], backend="onnx").predict([str(p) for p in images], **kw)
    assert sum(len(r["detections"]) for r in eager) > 0
    for a, b in zip(eager, onnx):
        assert [d["index"] for d in a["detections"]] == [d["index"] for d in b["detections"]]
        for da, db in zip(a["detections"], b["detections"]):
            assert np.allclose(da["box"], db["box"], atol=1e-3, rtol=0) and abs(da["score"] - db["score"]) < 1e-4


def test_segment_backend_onnx_gives_the_same_masks(runs, exported, images):
    from recogen.tasks import segment

    eager = segment.load(runs["segment"]).predict([str(p) for p in images])
    onnx = segment.load(runs["segment"], backend="onnx").predict([str(p) for p in images])
    for a, b in zip(eager, onnx):
        assert a["size"] == b["size"] and np.array_equal(a["mask"], b["mask"])


def test_failed_verification_writes_nothing(runs, tmp_path, monkeypatch):
    from recogen.export import onnx

    monkeypatch.setattr(onnx, "TOLERANCE", -1.0)  # every real difference (>= 0) now fails
    with pytest.raises(ModelError, match="does not match"):
        export_model(runs["segment"], "onnx", out=tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file, no card


def test_a_stale_export_is_refused(runs, tmp_path):
    from safetensors.torch import load_file, save_file

    from recogen.tasks import segment

    run = tmp_path / "run"
    shutil.copytree(runs["segment"], run, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    segment.load(run, backend="onnx")  # the copied export matches the copied weights
    sd = load_file(str(run / "model.safetensors"))
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}, str(run / "model.safetensors"))
    with pytest.raises(RunError, match="other weights"):
        segment.load(run, backend="onnx")


# ------------------------------------------------------------------------------ torchscript, safetensors
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("task", TASKS)
def test_torchscript_export_runs_like_eager(task, runs, tmp_path):
    from recogen.export.graphs import build_graph
    from recogen.artifact import load_portable

    r = export_model(runs[task], "torchscript", out=tmp_path / "net.pt")
    assert (tmp_path / "net.json").is_file()  # the card beside the file
    traced = torch.jit.load(r["path"])
    graph = build_graph(*load_portable(runs[task]))
    x = graph.sample(4, 7)
    with torch.inference_mode():
        for a, b in zip(traced(x), graph.module(x)):
            assert torch.allclose(a, b, atol=1e-5, rtol=0)


def test_safetensors_export_copies_weights_and_card(runs, tmp_path):
    from recogen.tasks import classify

    export_model(runs["classify"], "safetensors", out=tmp_path / "dist")
    assert {p.name for p in (tmp_path / "dist").iterdir()} == {"model.safetensors", "model.json"}
    a = classify.load(runs["classify"]).predict(np.zeros((16, 16), np.uint8))
    b = classify.load(tmp_path / "dist").predict(np.zeros((16, 16), np.uint8))
    assert a == b


# --------------------------------------------------------------------------------------------- CLI
def test_cli_export_and_predict_backend_onnx(runs, exported, images, tmp_path):
    run = runs["classify"]
    r = run_cli("export", run, "--out", tmp_path / "cls.onnx")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "max abs difference" in r.stdout and (tmp_path / "cls.onnx").is_file() and (tmp_path / "cls.json").is_file()
    # An existing output is refused (one line, exit 2) and replaced with --force.
    r = run_cli("export", run, "--out", tmp_path / "cls.onnx")
    assert r.returncode == 2 and "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert run_cli("export", run, "--out", tmp_path / "cls.onnx", "--force").returncode == 0
    # A kill between the exported file and its card leaves the file alone: the refusal says so.
    (tmp_path / "cls.json").unlink()
    with pytest.raises(RunError, match=r"exists without its card cls\.json \(an interrupted export\?\); pass --force"):
        export_model(run, "onnx", out=tmp_path / "cls.onnx")
    # predict --backend onnx (RUN/model.onnx, exported by the fixture) gives the eager labels.
    from recogen.tasks import classify

    onnx = run_cli("classify", "predict", run, *images, "--json", "--backend", "onnx")
    assert onnx.returncode == 0, onnx.stderr[-2000:]
    eager = classify.load(run).predict([str(p) for p in images])
    assert [x["label"] for x in eager] == [x["label"] for x in json.loads(onnx.stdout)]


@pytest.mark.parametrize("args, message", [
    (("export", "{run}", "--format", "tflite"), "invalid choice"),
    (("export", "{empty}"), "no trained model"),
    (("export", "{run}", "--out", "{tmp}/x.txt"), "should end in .onnx"),
    (("segment", "predict", "{unexported}", "{img}", "--backend", "onnx"), "recogen export"),
])
def test_cli_mistakes_are_one_line_and_exit_2(args, message, runs, images, tmp_path):
    unexported = tmp_path / "unexported"
    shutil.copytree(runs["segment"], unexported, ignore=shutil.ignore_patterns("model.onnx", "checkpoints", "tensorboard"))
    (tmp_path / "empty").mkdir()
    fill = dict(run=runs["classify"], empty=tmp_path / "empty", tmp=tmp_path, unexported=unexported, img=images[0])
    r = run_cli(*(a.format(**fill) for a in args))
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
