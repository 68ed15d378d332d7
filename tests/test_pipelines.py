"""Published diffusion pipelines (recogen.pipelines): text2img, img2img and inpaint end to end on the CPU.

A tiny Stable Diffusion pipeline with random weights (``pipeline_fixtures.tiny_pipeline_dir``, shared with
the service's tests) is saved with ``save_pretrained``. Every command then loads it from that folder with
``HF_HUB_OFFLINE=1``. Images are 32 px and runs take 2 steps, so the whole file takes seconds of compute.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recogen.cli import main
from recogen.errors import ConfigError, DataError, ModelError

from pipeline_fixtures import tiny_pipeline_dir  # tests/ is on sys.path (pytest's rootdir import mode)

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red square"


@pytest.fixture(scope="module")
def tiny() -> str:
    return str(tiny_pipeline_dir())  # built once per process, shared with the service's tests (read only)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test here may reach the Hub: everything loads from local folders."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def cli(*args: str) -> int:
    return main([str(a) for a in args])


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def pattern(path: Path, size=(32, 32)) -> Path:
    """A smooth colour pattern (gradients, not noise: the autoencoder's round trip keeps it roughly)."""
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    img = np.stack([x * 255 // size[0], y * 255 // size[1], np.full_like(x, 128)], -1).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


# ------------------------------------------------------------------------------------------- text2img
def test_text2img_writes_sized_pngs_and_a_record_and_seeds_repeat(tiny, tmp_path, capsys):
    common = ["generate", "text2img", "--model", tiny, "--prompt", PROMPT, "--steps", 2, "--size", "32x24"]
    assert cli(*common, "--seed", 3, "--out", tmp_path / "a.png", "--json") == 0
    rec = json.loads(capsys.readouterr().out)
    assert Image.open(tmp_path / "a.png").size == (32, 24)
    assert rec["model"] == tiny and rec["prompt"] == PROMPT and rec["seed"] == 3 and rec["steps"] == 2
    assert (rec["width"], rec["height"], rec["pipeline"], rec["device"], rec["dtype"]) == (
        32, 24, "StableDiffusionPipeline", "cpu", "float32")
    assert json.loads((tmp_path / "a.json").read_text()) == {**rec, "images": [str(tmp_path / "a.png")]}

    assert cli(*common, "--seed", 3, "--out", tmp_path / "b.png") == 0
    text = capsys.readouterr().out
    assert "1 image(s) 32x24, 2 steps, seed 3" in text and f"wrote {tmp_path / 'b.png'}" in text
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()  # same seed, same bytes

    assert cli(*common, "--seed", 4, "--n", 2, "--out", tmp_path / "many") == 0
    many = sorted(p.name for p in (tmp_path / "many").iterdir())
    assert many == ["0000.png", "0001.png", "params.json"]
    assert json.loads((tmp_path / "many" / "params.json").read_text())["seeds"] == [4, 5]
    a, c, d = pixels(tmp_path / "a.png"), pixels(tmp_path / "many" / "0000.png"), pixels(tmp_path / "many" / "0001.png")
    assert np.abs(a - c).mean() > 1 and np.abs(c - d).mean() > 1  # other seeds, other images


def test_python_api_returns_images_without_writing(tiny, tmp_path):
    import recogen

    res = recogen.text2img(tiny, PROMPT, steps=2, size=16, seed=1)
    assert [im.size for im in res.images] == [(16, 16)] and res.paths == [] and res.record_path is None
    assert res.record["seeds"] == [1] and res.record["seconds"] >= 0


# -------------------------------------------------------------------------------------------- img2img
def test_img2img_changes_the_image_less_at_low_strength(tiny, tmp_path, capsys):
    src = pattern(tmp_path / "in.png")
    for s in ("0.25", "1.0"):
        assert cli("edit", "img2img", tiny, src, "--prompt", PROMPT, "--steps", 4, "--strength", s, "--seed", 0,
                   "--out", tmp_path / f"s{s}.png") == 0
    assert "strength 0.25" in capsys.readouterr().out
    x, low, high = pixels(src), pixels(tmp_path / "s0.25.png"), pixels(tmp_path / "s1.0.png")
    assert low.shape == x.shape == high.shape
    # Random weights draw nothing meaningful, but the noise schedule still holds: at strength 0.25 the
    # result starts from the (round-tripped) input lightly noised, at 1.0 from pure noise.
    d_low, d_high = np.abs(low - x).mean(), np.abs(high - x).mean()
    assert 0 < d_low < d_high, (d_low, d_high)


# -------------------------------------------------------------------------------------------- inpaint
def test_inpaint_keeps_the_unmasked_pixels(tiny, tmp_path, capsys):
    src = pattern(tmp_path / "in.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 255  # repaint the left half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    args = ["edit", "inpaint", tiny, src, "--mask", tmp_path / "mask.png", "--prompt", PROMPT, "--steps", 2]
    assert cli(*args, "--out", tmp_path / "kept.png", "--json") == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["masked_fraction"] == 0.5 and rec["keep_unmasked"] is True
    x, kept = pixels(src), pixels(tmp_path / "kept.png")
    assert (kept[:, 16:] == x[:, 16:]).all()  # outside the mask: exactly the input
    assert np.abs(kept[:, :16] - x[:, :16]).mean() > 5  # inside: repainted

    # Without the paste-back the pipeline's own output comes through the autoencoder: the kept side is
    # blended back in latent space, so two seeds differ much less there than in the repainted side.
    for seed in (0, 1):
        assert cli(*args, "--no-keep-unmasked", "--seed", seed, "--out", tmp_path / f"raw{seed}.png") == 0
    diff = np.abs(pixels(tmp_path / "raw0.png") - pixels(tmp_path / "raw1.png")).mean(-1)
    inside, outside = diff[:, :12].mean(), diff[:, 20:].mean()  # away from the edge the decoder smears
    assert outside < 0.5 * inside, (inside, outside)


# ------------------------------------------------------------------------------------- offline, errors
def _offline_run(tmp_path, model: str, **env: str) -> tuple[int, str, float, bool]:
    code = ("import sys, time; from recogen.cli import main; t = time.perf_counter(); "
            f"rc = main(['generate', 'text2img', '--model', {model!r}, '--prompt', 'x', '--out', 'o.png']); "
            "print(rc, time.perf_counter() - t, 'torch' in sys.modules or 'diffusers' in sys.modules)")
    full = {**os.environ, "HF_HOME": str(tmp_path / "hf"), **env}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=full)
    rc, seconds, heavy = r.stdout.split()
    return int(rc), r.stderr, float(seconds), heavy == "True"


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}],
                         ids=["HF_HUB_OFFLINE", "no-network"])
def test_a_missing_model_fails_fast_offline_naming_the_fix(tmp_path, env):
    rc, err, seconds, heavy = _offline_run(tmp_path, "nobody-here/no-such-model", **env)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: model nobody-here/no-such-model"), err
    assert "download nobody-here/no-such-model --local-dir DIR" in lines[0] and "--model DIR" in lines[0]
    assert seconds < 1.0 and not heavy  # refused before torch or diffusers is imported


@pytest.mark.parametrize("args, message", [
    (["--size", "30"], "multiples of 8"),
    (["--steps", "0"], "--steps must be"),
    (["--dtype", "fp16", "--device", "cpu"], "fp16 needs a GPU"),
    (["--cpu-offload", "--device", "cpu"], "nothing to offload to"),
    (["--out", "x.jpg"], "NAME.png or a folder"),
])
def test_bad_text2img_options_are_one_error_line(tiny, tmp_path, capsys, args, message):
    base = ["generate", "text2img", "--model", tiny, "--prompt", PROMPT, "--out", tmp_path / "o.png"]
    try:
        rc = cli(*base, *args)
    except SystemExit as e:  # argparse's own checks
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not (tmp_path / "o.png").exists()


def test_bad_inputs_are_one_error_line(tiny, tmp_path, capsys):
    src = pattern(tmp_path / "in.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "black.png")
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "small.png")
    cases = [
        (["generate", "text2img", "--model", tiny, "--out", "o.png"], "required: --prompt"),
        (["edit", "inpaint", tiny, src, "--mask", tmp_path / "none.png", "--prompt", PROMPT, "--out", "o.png"],
         "no such mask file"),
        (["edit", "inpaint", tiny, src, "--mask", tmp_path / "black.png", "--prompt", PROMPT, "--out", "o.png"],
         "no white pixels"),
        (["edit", "inpaint", tiny, src, "--mask", tmp_path / "small.png", "--prompt", PROMPT, "--out", "o.png"],
         "the mask is 16x16 but the image is 32x32"),
        (["edit", "img2img", tiny, tmp_path / "none.png", "--prompt", PROMPT, "--out", "o.png"], "no such image file"),
        (["edit", "img2img", tiny, src, "--prompt", PROMPT, "--strength", "0.1", "--steps", "5", "--out", "o.png"],
         "use --steps 10 or more"),
        (["edit", "inpaint", tiny, src, "--mask", src, "--prompt", PROMPT], "--out NAME.png"),
        (["generate", "text2img", "--model", str(tmp_path), "--prompt", PROMPT, "--out", "o.png"],
         "not a diffusers pipeline folder"),
        (["edit", "inpaint", str(tmp_path), src, "--mask", src, "--prompt", PROMPT, "--out", "o.png"],
         "--prompt apply to diffusers pipelines"),
        (["edit", "inpaint", tiny, src, "--mask", src, "--prompt", PROMPT, "--ddim-steps", "5", "--out", "o.png"],
         "--ddim-steps apply to recogen runs"),
    ]
    for args, message in cases:
        try:
            rc = cli(*args)
        except SystemExit as e:
            rc = e.code
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0], (args, err)


def test_device_and_memory_checks(tmp_path, monkeypatch, tiny):
    from recogen.pipelines import device as dev

    assert dev.pick_dtype("auto", "cpu") == "float32" and dev.pick_dtype("auto", "cuda") == "float16"
    assert dev.pick_dtype("bf16", "cpu") == "bfloat16"
    monkeypatch.setattr(dev.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="needs the accelerate package"):
        dev.check_offload(True, "cuda")
    params = dev.weight_params(Path(tiny))
    assert set(params) == {"unet", "vae", "text_encoder"} and all(n > 1000 for n in params.values())
    assert dev.check_fits(Path(tiny), "cpu", "float32", False, "tiny")["weights_bytes"] == 4 * sum(params.values())
    monkeypatch.setattr(dev, "free_memory", lambda device: 1000)  # a machine with 1000 bytes free
    with pytest.raises(ModelError, match=r"tiny needs about .* GiB at float32 .* --attention-slicing, --cpu-offload"):
        dev.check_fits(Path(tiny), "cpu", "float32", False, "tiny")
    with pytest.raises(DataError):
        from recogen.pipelines.core import read_rgb

        read_rgb(tmp_path / "missing.png")
