"""Evaluation that cannot flatter: the split manifest (splits.json) and loud validation-split figures.

Every train writes splits.json (image counts, a content hash per image, source paths when there are
files, the data spec and seed). A data set without a test split is evaluated on val, and every
task then says so in one warning line and records ``"held_out": false`` in its metrics.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import torch

from conftest import run_cli, tiny_options
from recogen.data import DataOptions, ImageSet, ImageSplits, create_dataset
from recogen.data.manifest import MANIFEST, image_hashes, read_manifest, write_manifest
from recogen.errors import RunError
from recogen.metrics.heldout import split_fields


def _json(p: Path):
    return json.loads(p.read_text())


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "recogen" and r.levelno == logging.WARNING]


# ---------------------------------------------------------------------------------------- manifest
def test_image_hashes_are_content_and_shape_hashes_and_fast():
    x = torch.randint(0, 256, (5000, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    h = image_hashes(x)
    assert time.perf_counter() - t0 < 0.5  # measured ~0.01 s
    assert len(h) == 5000 and len(set(h)) == 5000
    assert image_hashes(x[:3].clone()) == h[:3]  # the pixels decide, not the tensor's memory
    y = x[:1].clone()
    y[0, 0, 5, 5] ^= 1
    assert image_hashes(y)[0] != h[0]
    assert image_hashes(x[:1].reshape(1, 1, 14, 56))[0] != h[0]  # same bytes, another shape


def test_manifest_of_classification_splits_round_trips(tmp_path):
    from recogen.config import ClassifyConfig

    s = create_dataset("digits", DataOptions(image_size=16, test_fraction=0.0))
    path = write_manifest(tmp_path, s, ClassifyConfig(data="digits", image_size=16, test_fraction=0.0, seed=3))
    assert path == tmp_path / MANIFEST
    m = read_manifest(tmp_path)
    assert m["data"] == "digits" and m["seed"] == 3 and m["options"]["test_fraction"] == 0.0
    assert m["image_shape"] == [1, 16, 16] and m["splits"]["test"] is None  # no test split: null
    for name in ("train", "val"):
        e = m["splits"][name]
        assert e["n"] == len(getattr(s, name)) and e["sha1"] == image_hashes(getattr(s, name).images)
        assert "paths" not in e  # digits has no files


def test_manifest_records_absolute_source_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    imgs = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    imgs[:, 0, 0, 0] = torch.arange(4, dtype=torch.uint8)
    one = lambda i: ImageSet(imgs[i:i + 2], torch.zeros(2, dtype=torch.long), [f"a/{i}.png", "<synthetic>"])  # noqa: E731
    s = ImageSplits("folder", ["a"], one(0), one(2))
    m = read_manifest(write_manifest(tmp_path / "run", s).parent)
    assert m["splits"]["train"]["paths"] == [str(tmp_path / "a" / "0.png"), "<synthetic>"]
    assert m["data"] == "folder" and m["options"] is None


def test_manifest_of_dense_splits(tmp_path):
    from recogen.data.dense import create_dense_dataset

    s = create_dense_dataset("shapes:40", DataOptions(image_size=32))
    m = read_manifest(write_manifest(tmp_path, s).parent)
    assert m["image_shape"] == [3, 32, 32]
    assert [m["splits"][k]["n"] for k in ("train", "val", "test")] == [len(s.train), len(s.val), len(s.test)]
    assert m["splits"]["test"]["sha1"] == image_hashes(s.test.images)


def test_missing_or_corrupt_manifest_is_a_run_error(tmp_path):
    with pytest.raises(RunError, match="no splits.json.*retrain"):
        read_manifest(tmp_path)
    for text in ("{not json", json.dumps({"version": 1, "splits": {"train": {"n": 2, "sha1": ["x"]}}}), "[]"):
        (tmp_path / MANIFEST).write_text(text)
        with pytest.raises(RunError, match="corrupt"):
            read_manifest(tmp_path)


def test_training_writes_the_manifest(tiny_run):
    m = read_manifest(tiny_run)
    s = create_dataset("digits", DataOptions(image_size=16, limit=300))
    assert m["data"] == "digits" and m["seed"] == 0 and m["options"]["limit"] == 300
    assert [m["splits"][k]["n"] for k in ("train", "val", "test")] == [300, len(s.val), len(s.test)]
    assert m["splits"]["test"]["sha1"] == image_hashes(s.test.images)
    assert set(m["splits"]["train"]["sha1"]).isdisjoint(m["splits"]["test"]["sha1"])


# ------------------------------------------------------------------------------------ held out or not
def test_split_fields():
    assert split_fields("test", "digits") == {"split": "test", "held_out": True}
    v = split_fields("val", "digits")
    assert v["held_out"] is False and v["warning"].startswith("digits has no test split; these are VALIDATION figures")
    asked = split_fields("val", "digits", has_test=True)
    assert "no test split" not in asked["warning"] and "VALIDATION" in asked["warning"]
    assert split_fields("train", "digits")["held_out"] is False and "TRAINING" in split_fields("train", "x")["warning"]


def test_classify_without_a_test_split_says_validation(tmp_path, caplog, tiny_run):
    from recogen.tasks import classify

    caplog.set_level(logging.WARNING, logger="recogen")
    run = classify.train(**tiny_options(tmp_path / "noval", epochs=1, test_fraction=0.0))
    m = _json(run / "metrics_val.json")
    assert not (run / "metrics.json").exists()
    assert m["split"] == "val" and m["held_out"] is False and "VALIDATION figures" in m["warning"]
    assert any("digits has no test split; these are VALIDATION figures" in w for w in _warnings(caplog))
    assert read_manifest(run)["splits"]["test"] is None
    # A run with a test split: held out, no warning; asking for val explicitly is still flagged.
    caplog.clear()
    t = classify.evaluate(tiny_run, write=False)
    assert t["split"] == "test" and t["held_out"] is True and "warning" not in t and not _warnings(caplog)
    v = classify.evaluate(tiny_run, split="val", write=False)
    assert v["held_out"] is False and "no test split" not in v["warning"]
    # The CLI: one warning line on stderr; --json carries the fields.
    r = run_cli("classify", "eval", run, "--json", "--no-write")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["split"] == "val" and out["held_out"] is False
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert lines == ["warning: digits has no test split; these are VALIDATION figures (used to pick the best "
                     "checkpoint), not a held-out test"], r.stderr[-2000:]


def test_detect_and_segment_without_a_test_split_say_validation(tmp_path, caplog):
    from recogen.tasks import detect, segment

    caplog.set_level(logging.WARNING, logger="recogen")
    det = detect.train(data="shapes:40", image_size=32, model="fcos-s", model_kwargs={"width": 8, "fpn_channels": 32},
                       epochs=1, batch_size=8, test_fraction=0.0, out=str(tmp_path / "det"), progress=False, seed=0)
    seg = segment.train(data="shapes:40", image_size=32, model="unet", model_kwargs={"width": 4, "depth": 2}, epochs=1,
                        batch_size=8, test_fraction=0.0, out=str(tmp_path / "seg"), progress=False, seed=0)
    for run in (det, seg):
        m = _json(run / "metrics_val.json")
        assert m["split"] == "val" and m["held_out"] is False and "VALIDATION figures" in m["warning"], run
        man = read_manifest(run)
        assert man["splits"]["test"] is None and man["splits"]["val"]["n"] == m["num_images"]
    assert sum("shapes:40 has no test split" in w for w in _warnings(caplog)) == 2
    assert detect.evaluate(det, write=False)["held_out"] is False
    assert segment.evaluate(seg, write=False)["held_out"] is False
