"""Foundation models without training (recogen.foundation): CLIP zero-shot classification (predict and
eval), OWL-ViT open-vocabulary detection and SAM promptable segmentation, end to end through the CLI.

Tiny random-weight models are built here from configs, the way transformers' own tests build theirs
(CLIPConfig, OwlViTConfig and SamConfig with one-layer towers of width 16, and a CLIP tokenizer whose
vocabulary is written in the test), saved with ``save_pretrained`` and loaded from those folders with
``HF_HUB_OFFLINE=1``. Images are 32-56 px, so every command takes milliseconds of compute.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import recogen
from recogen.errors import ConfigError

from conftest import ROOT, assert_one_line, main_in_process
from foundation_fixtures import tiny_foundation_models

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------- tiny models
@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """Folders of a tiny CLIP, OWL-ViT and SAM (random weights, about 20k parameters each)."""
    return tiny_foundation_models(tmp_path_factory.mktemp("foundation"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """Two seeded noise images, 56x40 and 48x48 (not square: sizes must come back as given)."""
    root = tmp_path_factory.mktemp("zs_images")
    rng = np.random.default_rng(0)
    out = []
    for i, (w, h) in enumerate([(56, 40), (48, 48)]):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(root / f"img{i}.png")
        out.append(str(root / f"img{i}.png"))
    return out


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch):
    """Everything loads from local folders: no test here may reach the Hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def cli_json(capsys, *args):
    rc, out, err = main_in_process(capsys, *args, "--json")
    assert rc == 0, err[-2000:]
    return json.loads(out)


# ------------------------------------------------------------------------------------- classify
def test_clip_predict_format_determinism_and_label_order(models, images, capsys):
    clip = f"clip:{models['clip']}"
    a = cli_json(capsys, "classify", "predict", "--model", clip, "--labels", "cat,dog,car", *images, "--topk", 3)
    assert [r["path"] for r in a] == images
    for r in a:
        assert set(r) == {"path", "label", "index", "prob", "topk"} and len(r["topk"]) == 3
        assert (r["label"], r["index"], r["prob"]) == (r["topk"][0]["label"], r["topk"][0]["index"], r["topk"][0]["prob"])
        assert sum(t["prob"] for t in r["topk"]) == pytest.approx(1, abs=1e-5)
        assert [t["prob"] for t in r["topk"]] == sorted((t["prob"] for t in r["topk"]), reverse=True)
    assert cli_json(capsys, "classify", "predict", "--model", clip, "--labels", "cat,dog,car", *images, "--topk", 3) == a

    # The same labels in another order: the same probability per label, the index follows the order.
    b = cli_json(capsys, "classify", "predict", "--model", models["clip"], "--labels", "car, cat ,dog", *images)
    order = ["car", "cat", "dog"]
    for ra, rb in zip(a, b):
        assert rb["label"] == ra["label"] and rb["index"] == order.index(ra["label"])
        probs_a, probs_b = ({t["label"]: t["prob"] for t in r["topk"]} for r in (ra, rb))
        assert probs_b == pytest.approx(probs_a, abs=1e-5)
    # Other labels (or another prompt template) change the ranking's probabilities.
    c = cli_json(capsys, "classify", "predict", "--model", clip, "--labels", "cat,dog,car,a red bicycle", *images)
    for ra, rc in zip(a, c):  # one more label takes its share: every other label's probability drops
        pa, pc = ({t["label"]: t["prob"] for t in r["topk"]} for r in (ra, rc))
        assert all(pc[k] < pa[k] for k in pa) and len(pc) == 4
    d = cli_json(capsys, "classify", "predict", "--model", clip, "--labels", "cat,dog,car", *images,
                 "--prompt-template", "{} on a table")
    assert d[0]["topk"] != a[0]["topk"]

    rc, out, err = main_in_process(capsys, "classify", "predict", "--model", clip, "--labels", "cat,dog,car",
                                   images[0], "--topk", 2)
    assert rc == 0 and out.startswith(f"{images[0]}: {a[0]['label']} (") and out.count("\n") == 1, out


def test_clip_eval_writes_the_classify_report(models, tmp_path, capsys):
    data = tmp_path / "pets"
    for k, name in enumerate(["black_cat", "white_dog", "red_car"]):
        (data / name).mkdir(parents=True)
        for i in range(2):
            colour = (40 * k + 10 * i, 200 - 60 * k, 90)
            Image.fromarray(np.full((32, 32, 3), colour, np.uint8)).save(data / name / f"{i}.png")
    out = tmp_path / "report"
    rc, text, err = main_in_process(capsys, "classify", "eval", "--model", f"clip:{models['clip']}", "--data", data,
                                    "--out", out)
    assert rc == 0, err[-2000:]
    assert "6 images, accuracy" in text and "precision" in text and "wrote metrics.json" in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_images"] == 6 and 0 <= m["accuracy"] <= 1 and m["split"] == "all"
    assert np.asarray(m["confusion_matrix"]).shape == (3, 3) and np.asarray(m["confusion_matrix"]).sum() == 6
    assert list(m["per_class"]) == ["black_cat", "red_car", "white_dog"]  # the folder's class names, sorted
    assert m["labels"] == ["black cat", "red car", "white dog"] and m["prompt_template"] == "a photo of a {}."
    assert (out / "confusion_matrix.png").stat().st_size > 0

    j = cli_json(capsys, "classify", "eval", "--model", f"clip:{models['clip']}", "--data", f"folder:{data}",
                 "--labels", "cat,car,dog")
    assert j["labels"] == ["cat", "car", "dog"] and "report_text" not in j
    rc, _, err = main_in_process(capsys, "classify", "eval", "--model", f"clip:{models['clip']}", "--data", data,
                                 "--labels", "cat,dog")
    assert_one_line(rc, err, "--labels gives 2 label(s)", "3 classes", "black_cat, red_car, white_dog")


# ------------------------------------------------------------------------------------- detect
def test_owl_detect_boxes_in_the_detect_format(models, images, tmp_path, capsys):
    owl = f"owl:{models['owl']}"
    args = ("detect", "predict", "--model", owl, "--labels", "cat,remote", *images, "--score-threshold", 0.0)
    a = cli_json(capsys, *args, "--save", tmp_path / "drawn")
    assert cli_json(capsys, *args) == [{k: v for k, v in r.items() if k != "saved"} for r in a]  # deterministic
    for r, (w, h) in zip(a, [(56, 40), (48, 48)]):
        assert r["size"] == [h, w] and r["detections"]
        scores = [d["score"] for d in r["detections"]]
        assert scores == sorted(scores, reverse=True)
        for d in r["detections"]:
            assert set(d) == {"label", "index", "score", "box"} and d["label"] == ["cat", "remote"][d["index"]]
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert Image.open(r["saved"]).size == (w, h)
    # A higher threshold keeps the boxes above it; --max-det caps them.
    cut = sorted(d["score"] for d in a[0]["detections"])[len(a[0]["detections"]) // 2]
    hi = cli_json(capsys, "detect", "predict", "--model", owl, "--labels", "cat,remote", images[0],
                  "--score-threshold", cut)
    assert hi[0]["detections"] and all(d["score"] > cut for d in hi[0]["detections"])
    one = cli_json(capsys, *args[:-2], "--score-threshold", 0.0, "--max-det", 1)
    assert all(len(r["detections"]) == 1 for r in one)

    rc, _, err = main_in_process(capsys, "detect", "predict", "--model", owl, "--labels", "cat", images[0], "--conf", 0.5)
    assert_one_line(rc, err, "--conf applies to trained runs")


# ------------------------------------------------------------------------------------- segment
def test_sam_mask_has_the_image_size_and_follows_the_prompt(models, images, tmp_path, capsys):
    sam = f"sam:{models['sam']}"
    masks = {}
    for name, prompt in [("p1", ["--points", "10,20"]), ("p2", ["--points", "45,5;30,30,0"]),
                         ("boxes", ["--boxes", "1,1,30,30;20,5,50,38"])]:
        out = tmp_path / name
        r = cli_json(capsys, "segment", "predict", "--model", sam, images[0], *prompt, "--save", out)[0]
        assert r["size"] == [40, 56] and sum(r["class_pixels"].values()) == 40 * 56
        png = Image.open(r["mask_path"])
        assert png.size == (56, 40) and Image.open(r["overlay_path"]).size == (56, 40)
        masks[name] = np.array(png)
        assert len(r["scores"]) == (2 if name == "boxes" else 1)
    assert set(np.unique(masks["p1"])) <= {0, 1} and set(np.unique(masks["boxes"])) <= {0, 1, 2}
    assert (masks["p1"] != masks["p2"]).any()  # another point, another mask
    again = cli_json(capsys, "segment", "predict", "--model", sam, images[0], "--points", "10,20",
                     "--save", tmp_path / "again")
    assert np.array_equal(np.array(Image.open(again[0]["mask_path"])), masks["p1"])

    rc, _, err = main_in_process(capsys, "segment", "predict", "--model", sam, images[0], "--points", "99,5")
    assert_one_line(rc, err, "outside the 56x40 image")
    with pytest.raises(ConfigError, match="needs a prompt"):  # the Python API checks it too
        recogen.zero_shot_segment(sam, images[0])


# ------------------------------------------------------------------------------------- Python API
def test_python_api_matches_the_cli(models, images, capsys):
    cli = cli_json(capsys, "classify", "predict", "--model", f"clip:{models['clip']}", "--labels", "cat,dog", images[0])
    api = recogen.zero_shot_classify(f"clip:{models['clip']}", images[0], ["cat", "dog"], device="cpu")
    assert api == cli[0]
    det = recogen.zero_shot_detect(models["owl"], images, "cat", score_threshold=0.0, device="cpu")  # a bare folder
    assert len(det) == 2 and det[1]["size"] == [48, 48]
    seg = recogen.zero_shot_segment(f"sam:{models['sam']}", np.asarray(Image.open(images[1])), points=[(5, 5)], device="cpu")
    assert seg["mask"].shape == (48, 48) and seg["mask"].dtype == np.uint8 and "path" not in seg


# ------------------------------------------------------------------------------------- mistakes
def test_offline_missing_model_fails_fast_without_importing_torch(tmp_path, images):
    """A fresh interpreter, no network, an empty Hub cache: each family fails in well under a second,
    naming the id and the download command, before torch or transformers is imported."""
    code = ("import sys, time; from recogen.cli import main\n"
            "for args in ([\"classify\", \"predict\", \"--model\", \"clip:nobody/no-clip\", \"--labels\", \"a,b\"],\n"
            "             [\"classify\", \"eval\", \"--model\", \"clip:nobody/no-clip\", \"--data\", sys.argv[1]],\n"
            "             [\"detect\", \"predict\", \"--model\", \"owl:nobody/no-owl\", \"--labels\", \"a\"],\n"
            "             [\"segment\", \"predict\", \"--model\", \"sam:nobody/no-sam\", \"--points\", \"1,1\"]):\n"
            "    t = time.perf_counter(); rc = main(args + ([] if args[1] == 'eval' else [sys.argv[1]]))\n"
            "    print(rc, round(time.perf_counter() - t, 3))\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    r = subprocess.run([sys.executable, "-c", code, images[0]], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=env)
    lines = r.stdout.split("\n")
    assert lines[-2] == "[]", r.stdout + r.stderr
    for line in lines[:4]:
        rc, seconds = line.split()
        assert rc == "2" and float(seconds) < 1.0, r.stdout
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 4 and "Traceback" not in r.stderr, r.stderr
    expected = [("clip", "nobody/no-clip")] * 2 + [("owl", "nobody/no-owl"), ("sam", "nobody/no-sam")]
    for err, (prefix, repo) in zip(errors, expected):
        assert err.startswith(f"error: model {repo} is not in the Hugging Face cache"), err
        assert f"hf download {repo} --local-dir DIR" in err and f"--model {prefix}:DIR" in err and "HF_HUB_OFFLINE=1" in err


@pytest.mark.parametrize("args, needles", [
    (["classify", "predict", "IMG"], ["needs RUN and images", "--model"]),
    (["classify", "eval"], ["needs RUN"]),
    (["classify", "predict", "RUN", "IMG", "--labels", "a,b"], ["--labels apply to foundation models"]),
    (["classify", "predict", "--model", "owl:x/y", "--labels", "a,b", "IMG"], ["owl: models are for detect",
                                                                               "recogen detect predict --model owl:x/y"]),
    (["classify", "predict", "--model", "openai/clip-vit-base-patch32", "IMG"], ["name the model family", "clip:"]),
    (["classify", "predict", "--model", "CLIP", "--labels", "a,b", "IMG", "--out", "r.jsonl"], ["--out (streaming"]),
    (["classify", "predict", "--model", "CLIP", "RUN", "IMG"], ["not both"]),
    (["classify", "eval", "--model", "CLIP"], ["needs --data FOLDER"]),
    (["classify", "eval", "RUN", "--model", "CLIP", "--data", "x"], ["not both"]),
    (["classify", "predict", "--model", "CLIP", "IMG"], ["needs --labels"]),
    (["segment", "predict", "--model", "SAM", "IMG"], ["needs --points or --boxes"]),
    (["classify", "predict", "--model", "CLIP", "--labels", "a,a", "IMG"], ["duplicates: a"]),
    (["classify", "predict", "--model", "CLIP", "--labels", "a,b", "--prompt-template", "a {} {}", "IMG"], ["exactly once"]),
    (["segment", "predict", "--model", "SAM", "--points", "1,2,3", "IMG"], ["LABEL 1"]),
    # checked while parsing, before the model loads (the model here is an id that cannot be had offline)
    (["detect", "predict", "--model", "owl:nobody/no-owl", "--labels", "a", "--score-threshold", "2", "IMG"],
     ["--score-threshold", "from 0 to 1"]),
])
def test_mistakes_are_one_line_errors(models, images, tiny_folder_run, args, needles, capsys):
    subst = {"IMG": images[0], "RUN": str(tiny_folder_run), "CLIP": f"clip:{models['clip']}", "SAM": f"sam:{models['sam']}"}
    rc, _, err = main_in_process(capsys, *[subst.get(a, a) for a in args])
    assert_one_line(rc, err, *needles)


@pytest.fixture(scope="module")
def tiny_folder_run(tmp_path_factory) -> Path:
    """A folder that looks like a run (its model.json) to the both-given check; nothing loads it."""
    run = tmp_path_factory.mktemp("fake_run")
    (run / "model.json").write_text("{}")
    return run
