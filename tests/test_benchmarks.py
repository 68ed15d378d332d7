"""Smoke runs of the benchmark scripts in their --quick mode: they run end to end and write their JSON
(the figures of a quick run mean nothing; BENCHMARKS.md has the real ones)."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def run_script(monkeypatch, name: str, *args: str) -> None:
    """``python benchmarks/NAME ARGS`` in this process (imports already paid for by the session)."""
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import bench_common from their folder
    monkeypatch.setattr(sys, "argv", [str(BENCH / name), *args])
    runpy.run_path(str(BENCH / name), run_name="__main__")


@pytest.mark.slow
def test_finetune_vs_scratch_quick(monkeypatch, tmp_path, capsys):
    out = tmp_path / "r.json"
    run_script(monkeypatch, "finetune_vs_scratch.py", "--quick", "--json", str(out), "--keep", str(tmp_path / "runs"))
    r = json.loads(out.read_text())
    assert r["quick"] is True and r["arch"] == "tv:resnet18"
    # The pretrained file is in torchvision's published layout: a 3-channel stem and a 1000-class head.
    saved = r["source"]["saved"]
    assert saved["stem_expanded_to_rgb"] == ["conv1.weight"] and saved["head_reinitialised_1000"] == ["fc.weight", "fc.bias"]
    import torch
    from safetensors.torch import load_file

    sd = torch.load(saved["file"], weights_only=True)
    assert sd["conv1.weight"].shape == (64, 3, 7, 7) and sd["fc.weight"].shape == (1000, 512)
    trained = load_file(str(tmp_path / "runs" / "source" / "model.safetensors"))
    assert torch.allclose(sd["conv1.weight"].sum(1, keepdim=True), trained["conv1.weight"], atol=1e-6)  # folds back exactly
    row = r["runs"][0]
    assert {"finetune", "scratch"} <= set(row) and "finetune_minus_scratch" in row
    assert "--weights" in r["arms"]["finetune"] and "--weights" not in r["arms"]["scratch"]
    assert "| finetune |" in capsys.readouterr().out


@pytest.mark.slow
def test_explain_latency_quick(monkeypatch, tmp_path, capsys):
    out = tmp_path / "r.json"
    run_script(monkeypatch, "explain_latency.py", "--quick", "--json", str(out))
    r = json.loads(out.read_text())
    methods = {row["method"] for row in r["rows"]}
    assert methods == {"gradcam", "gradcam++", "eigencam", "scorecam", "integrated-gradients"}
    assert all(row["median_ms"] > 0 and row["model"] == "cnn-s" for row in r["rows"])
    assert "| cnn-s | classify |" in capsys.readouterr().out


def test_text2img_latency_runs_on_the_tiny_pipeline(monkeypatch, tmp_path, capsys):
    """benchmarks/text2img_latency.py end to end on the tests' tiny random pipeline (CPU; figures mean
    nothing): a result the report can render, with the rounds, the model and the peak memory."""
    from pipeline_fixtures import tiny_pipeline_dir

    out = tmp_path / "t.json"
    run_script(monkeypatch, "text2img_latency.py", "--model", str(tiny_pipeline_dir()), "--steps", "2", "--size", "32",
               "--rounds", "2", "--json", str(out))
    r = json.loads(out.read_text())
    assert r["benchmark"] == "text2img_latency" and r["pipeline"] == "StableDiffusionPipeline"
    assert len(r["seconds"]) == 2 and r["median_s"] > 0 and r["peak_gib"] > 0 and (r["width"], r["height"]) == (32, 32)
    assert "median" in r["summary"] and len(r["table"]["rows"]) == 2
