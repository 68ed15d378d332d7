"""``recogen generate finetune``: LoRA and full fine-tuning of a diffusers pipeline on the CPU.

The tiny random-weight Stable Diffusion pipeline of ``pipeline_fixtures`` (32 px images, 16 px latents)
is fine-tuned on a folder of 8 copies of one colour pattern written by the test, loaded offline. A
random UNet draws nothing, but the objective is real: on a repeated image the LoRA adapters learn to
cancel what the random UNet adds to its noise prediction, and the fixed-noise loss falls.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recogen.cli import main
from recogen.errors import DataError

from conftest import assert_one_line, main_in_process
from pipeline_fixtures import build_tiny_pipeline  # tests/ is on sys.path (pytest's rootdir import mode)

pytestmark = pytest.mark.usefixtures("one_thread")
PROMPT = "a photo of sks dog"
# The LoRA run below: 40 steps of 4 images at lr 1e-2. Measured (seeds 0-2; also rank 8, lr 2e-2, 60 steps
# of 2, 30 steps of 8): the fixed-noise loss fell from 1.15-1.16 to 1.004-1.012, a ratio of 0.87 every time.
LORA_ARGS = ["--prompt", PROMPT, "--steps", "40", "--batch-size", "4", "--lr", "1e-2", "--sample-steps", "2",
             "--checkpoint-every", "20"]
MAX_LOSS_RATIO = 0.93


@pytest.fixture(autouse=True)
def hub_offline(monkeypatch):
    """No test here may reach the Hub: everything loads from local folders."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(build_tiny_pipeline(tmp_path_factory.mktemp("sd") / "tiny-sd"))


def pattern(size: int = 32) -> Image.Image:
    """A smooth colour pattern (gradients survive the tiny autoencoder's round trip roughly)."""
    y, x = np.mgrid[0:size, 0:size]
    return Image.fromarray(np.stack([x * 255 // size, y * 255 // size, np.full_like(x, 128)], -1).astype(np.uint8))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """8 copies of one image: a repeated image the adapters can fit."""
    folder = tmp_path_factory.mktemp("data") / "images"
    folder.mkdir()
    for k in range(8):
        pattern().save(folder / f"{k}.png")
    return folder


def cli_quiet(*args) -> tuple[int, str]:
    """``recogen ARGS`` in this process, stdout captured (module fixtures cannot use capsys)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main([str(a) for a in args])
    return rc, buf.getvalue()


@pytest.fixture(scope="module")
def lora_run(tiny, images, tmp_path_factory) -> tuple[Path, str]:
    run = tmp_path_factory.mktemp("runs") / "lora"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        rc, out = cli_quiet("generate", "finetune", "--model", tiny, "--data", images, "--out", run, *LORA_ARGS)
    assert rc == 0, out
    return run, out


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


# ---------------------------------------------------------------------------------------------- LoRA
def test_lora_run_learns_and_writes_its_folder(lora_run, tiny):
    run, out = lora_run
    rec = json.loads((run / "finetune.json").read_text())
    assert rec["method"] == "lora" and rec["images"] == 8 and rec["captions"] == "--prompt" and rec["size"] == "32x32"
    assert rec["fixed_loss_after"] < MAX_LOSS_RATIO * rec["fixed_loss_before"], rec
    assert rec["loss_last"] < rec["loss_first"], rec
    assert 0 < rec["trainable_params"] < rec["unet_params"] / 4  # adapters only
    assert f"wrote {run / 'pytorch_lora_weights.safetensors'}" in out and "--lora" in out
    assert "step 40/40" in out  # progress lines
    cfg = (run / "config.yaml").read_text()
    assert "method: lora" in cfg and "steps: 40" in cfg and "size: 32x32" in cfg and f"model: {tiny}" in cfg
    history = json.loads((run / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, 41))
    assert {p.name for p in (run / "samples").iterdir()} == {"before.png", "after.png"}
    assert not list(run.rglob("*.tmp")) and not list(run.glob(".lora.*"))  # atomic writes left nothing behind

    import torch
    from safetensors.torch import load_file

    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 40 and all("lora_" in k for k in ckpt["weights"])
    lora = load_file(run / "pytorch_lora_weights.safetensors")
    assert lora and all(k.startswith("unet.") and "lora" in k for k in lora)
    assert all(any(f".{t}." in k for k in lora) for t in ("to_q", "to_k", "to_v", "to_out.0"))


def test_lora_loads_with_diffusers_and_changes_the_output(lora_run, tiny):
    import torch
    from diffusers import StableDiffusionPipeline

    run, _ = lora_run

    def draw(pipe):
        pipe.set_progress_bar_config(disable=True)
        return np.asarray(pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                               output_type="np").images[0])

    base = draw(StableDiffusionPipeline.from_pretrained(tiny))
    pipe = StableDiffusionPipeline.from_pretrained(tiny)
    pipe.load_lora_weights(run)  # diffusers' own loader finds RUN/pytorch_lora_weights.safetensors
    assert np.abs(draw(pipe) - base).mean() > 0.01


def test_only_the_adapters_train(tiny, images):
    import torch
    from diffusers import StableDiffusionPipeline

    from recogen.pipelines.finetune_data import load_pixels, read_examples
    from recogen.pipelines.finetune_train import LORA_TARGETS, Loop, add_trainable, encode

    pipe = StableDiffusionPipeline.from_pretrained(tiny)
    examples, _ = read_examples(images, PROMPT)
    enc = encode(pipe, load_pixels(examples, (32, 32)), [e.caption for e in examples], "cpu", torch.float32)
    params = add_trainable(pipe.unet, "lora", 4)
    assert params and all("lora_" in n and any(f".{t}." in n for t in LORA_TARGETS) for n, _ in params)
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    loop = Loop(pipe, enc, params, lr=1e-2, batch_size=4, seed=0, max_grad_norm=1.0, device="cpu", dtype=torch.float32)
    for step in range(3):
        loop.step(step)
    after = dict(pipe.unet.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all("lora_B" in n or "lora_A" in n for n in changed)
    assert any("lora_B" in n for n in changed)  # B starts at zero and moves: the adapters now act
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)  # base weights untouched


def test_text2img_with_lora_redraws_the_after_sample(lora_run, tiny, tmp_path, capsys):
    run, _ = lora_run
    common = ["generate", "text2img", "--model", tiny, "--prompt", PROMPT, "--steps", "2", "--seed", "0",
              "--size", "32"]
    rc, out, err = main_in_process(capsys, *common, "--lora", run, "--out", tmp_path / "lora.png", "--json")
    assert rc == 0, err
    rec = json.loads(out)
    assert rec["lora"] == str(run / "pytorch_lora_weights.safetensors") and rec["lora_scale"] == 1.0
    assert err == ""  # diffusers' "no LoRA keys for the text encoder" chatter is silenced
    # the run's after-sample is the same call (prompt, seed, steps, guidance) on the trained model
    assert (pixels(tmp_path / "lora.png") == pixels(run / "samples" / "after.png")).all()
    assert main_in_process(capsys, *common, "--out", tmp_path / "base.png")[0] == 0
    assert (pixels(tmp_path / "base.png") == pixels(run / "samples" / "before.png")).all()
    assert np.abs(pixels(tmp_path / "lora.png") - pixels(tmp_path / "base.png")).mean() > 1
    assert main_in_process(capsys, *common, "--lora", run, "--lora-scale", "0", "--out", tmp_path / "zero.png")[0] == 0
    assert (pixels(tmp_path / "zero.png") == pixels(tmp_path / "base.png")).all()

    import recogen

    res = recogen.img2img(tiny, pattern(), PROMPT, steps=2, strength=0.5, lora=run / "pytorch_lora_weights.safetensors")
    assert res.record["lora"].endswith("pytorch_lora_weights.safetensors")


# -------------------------------------------------------------------------------------------- resume
def test_an_interrupted_run_resumes_where_its_checkpoint_left_off(tiny, images, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    from recogen.pipelines import finetune_train

    data = tmp_path / "data"  # a copy: the test changes it at the end
    shutil.copytree(images, data)
    args = ["generate", "finetune", "--model", tiny, "--data", data, "--prompt", PROMPT, "--batch-size", "2",
            "--lr", "1e-2", "--sample-steps", "0", "--checkpoint-every", "2"]
    rc, _, err = main_in_process(capsys, *args, "--steps", "6", "--out", tmp_path / "whole")
    assert rc == 0, err

    real_step = finetune_train.Loop.step

    def step(self, k):  # Ctrl+C during step 5 (steps 1-4 are checkpointed)
        if k == 4:
            raise KeyboardInterrupt
        return real_step(self, k)

    monkeypatch.setattr(finetune_train.Loop, "step", step)
    rc, _, err = main_in_process(capsys, *args, "--steps", "6", "--out", tmp_path / "cut")
    assert rc == 130 and "step 4 is saved" in err and "--resume" in err, err
    assert not (tmp_path / "cut" / "pytorch_lora_weights.safetensors").exists()
    monkeypatch.setattr(finetune_train.Loop, "step", real_step)

    # --model and --data come from the run; the rest of the options too
    rc, out, err = main_in_process(capsys, "generate", "finetune", "--out", tmp_path / "cut", "--resume")
    assert rc == 0, err
    assert "resuming from step 4" in out and "steps 5-6" in out
    rec = json.loads((tmp_path / "cut" / "finetune.json").read_text())
    assert rec["resumed_from"] == 4 and rec["steps"] == 6
    # each step's randomness is a function of (seed, step): the resumed run ends where the whole one did
    whole = load_file(tmp_path / "whole" / "pytorch_lora_weights.safetensors")
    cut = load_file(tmp_path / "cut" / "pytorch_lora_weights.safetensors")
    assert whole.keys() == cut.keys() and all(whole[k].equal(cut[k]) for k in whole)  # bit for bit
    assert (tmp_path / "cut" / "history.json").read_text() == (tmp_path / "whole" / "history.json").read_text()

    # training on: a larger --steps continues the finished run
    rc, out, err = main_in_process(capsys, "generate", "finetune", "--out", tmp_path / "cut", "--resume",
                                   "--steps", "8")
    assert rc == 0 and "steps 7-8" in out, err

    pattern().save(data / "extra.png")  # the data changed: resuming would train on another set
    rc, _, err = main_in_process(capsys, "generate", "finetune", "--out", tmp_path / "cut", "--resume", "--steps", "9")
    assert_one_line(rc, err, "changed since the run", "8 images then, 9 now")


# ---------------------------------------------------------------------------------------------- full
def test_full_finetune_writes_a_pipeline_text2img_loads(tiny, images, tmp_path, capsys):
    run = tmp_path / "full"
    rc, out, err = main_in_process(capsys, "generate", "finetune", "--model", tiny, "--data", images, "--out", run,
                                   "--prompt", PROMPT, "--method", "full", "--steps", "8", "--batch-size", "2",
                                   "--lr", "1e-3", "--sample-steps", "2", "--json")
    assert rc == 0, err
    rec = json.loads(out)  # --json: the record only, no progress lines
    assert rec["method"] == "full" and rec["pipeline_folder"] == str(run / "pipeline") and rec["lora"] is None
    assert rec["trainable_params"] == rec["unet_params"] and rec["rank"] is None
    assert (run / "pipeline" / "model_index.json").is_file() and not (run / "pytorch_lora_weights.safetensors").exists()
    rc, _, err = main_in_process(capsys, "generate", "text2img", "--model", run / "pipeline", "--prompt", PROMPT,
                                 "--steps", "2", "--seed", "0", "--size", "32", "--out", tmp_path / "full.png")
    assert rc == 0, err
    assert (pixels(tmp_path / "full.png") == pixels(run / "samples" / "after.png")).all()
    rc, _, err = main_in_process(capsys, "generate", "text2img", "--model", tiny, "--prompt", PROMPT, "--lora", run,
                                 "--out", tmp_path / "x.png")
    assert_one_line(rc, err, "is a full fine-tuning run", f"--model {run / 'pipeline'}")


# -------------------------------------------------------------------------------------- data, errors
def test_captions_from_metadata_or_text_files(tmp_path):
    from recogen.data.folder import IMAGE_EXTENSIONS
    from recogen.pipelines import finetune_data
    from recogen.pipelines.finetune_data import read_examples

    assert finetune_data.IMAGE_EXTENSIONS == IMAGE_EXTENSIONS  # repeated there to keep torch out of the checks

    for k in range(3):
        pattern(8).save(tmp_path / f"{k}.png")
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps({"file_name": f"{k}.png", "text": f"cap {k}"})
                                                       for k in range(3)) + "\n")
    examples, source = read_examples(tmp_path)
    assert source == "metadata.jsonl" and [e.caption for e in examples] == ["cap 0", "cap 1", "cap 2"]
    assert {e.caption for e in read_examples(tmp_path, "one for all")[0]} == {"one for all"}

    (tmp_path / "metadata.jsonl").unlink()
    for k in range(3):
        (tmp_path / f"{k}.txt").write_text(f"text {k}\n")
    examples, source = read_examples(tmp_path)
    assert source == ".txt files" and examples[2].caption == "text 2"
    (tmp_path / "1.txt").unlink()
    with pytest.raises(DataError, match=r"1 of 3 images .* no caption .* \(first: 1.png\)"):
        read_examples(tmp_path)
    (tmp_path / "1.txt").write_bytes(b"\xff\xfe not UTF-8")  # a user's file in another encoding: its name, not a traceback
    with pytest.raises(DataError, match=r"cannot read the caption .*1\.txt .*UTF-8"):
        read_examples(tmp_path)


def test_mistakes_are_one_error_line(tiny, images, lora_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    uncaptioned = tmp_path / "uncaptioned"
    uncaptioned.mkdir()
    pattern().save(uncaptioned / "a.png")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bad_meta = tmp_path / "meta"
    bad_meta.mkdir()
    pattern().save(bad_meta / "a.png")
    (bad_meta / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "x"}\n')
    run, _ = lora_run
    new = str(tmp_path / "new")
    ft = ["generate", "finetune", "--model", tiny]
    cases = [
        ([*ft, "--data", empty, "--out", new, "--prompt", PROMPT], "no image files"),
        ([*ft, "--data", tmp_path / "nowhere", "--out", new, "--prompt", PROMPT], "no such folder"),
        ([*ft, "--data", uncaptioned, "--out", new], "no captions"),
        ([*ft, "--data", bad_meta, "--out", new], "names gone.png"),
        ([*ft, "--data", broken, "--out", new, "--prompt", PROMPT, "--steps", "1"], "bad.png"),
        (["generate", "finetune", "--model", "nobody-here/no-model", "--data", images, "--out", new,
          "--prompt", PROMPT],
         "not in the Hugging Face cache"),
        ([*ft, "--data", images, "--out", run, "--prompt", PROMPT], "add --resume"),
        (["generate", "finetune", "--out", tmp_path / "none", "--resume"], "holds no fine-tuning run"),
        (["generate", "finetune", "--out", run, "--resume", "--rank", "8"], "started with --rank 4"),
        (["generate", "finetune", "--out", run, "--resume", "--steps", "5"], "at step 40 already"),
        (["generate", "finetune", "--data", images, "--out", new], "--model is needed"),
        ([*ft, "--data", images, "--out", new, "--method", "full", "--rank", "8"], "--method lora only"),
        ([*ft, "--data", images, "--out", new, "--method", "full", "--dtype", "bf16"], "fp32"),
        ([*ft, "--data", images, "--out", new, "--prompt", PROMPT, "--size", "30"], "multiples of 8"),
        ([*ft, "--data", images, "--out", new, "--prompt", PROMPT, "--steps", "0"], "--steps must be"),
        ([*ft, "--data", images, "--out", new, "--prompt", PROMPT, "--lr", "2"], "--lr must be"),
        (["generate", "text2img", "--model", tiny, "--prompt", PROMPT, "--lora", tmp_path / "nope", "--out", "o.png"],
         "no such file or folder"),
        (["generate", "text2img", "--model", tiny, "--prompt", PROMPT, "--lora", empty, "--out", "o.png"],
         "no pytorch_lora_weights.safetensors"),
        (["generate", "text2img", "--model", tiny, "--prompt", PROMPT, "--lora-scale", "0.5", "--out", "o.png"],
         "--lora-scale 0.5 needs --lora"),
    ]
    for args, message in cases:
        rc, _, err = main_in_process(capsys, *args)
        assert_one_line(rc, err, message)
    assert not Path(new).exists()


def test_a_missing_model_fails_fast_offline_before_torch(images, tmp_path):
    import os
    import subprocess
    import sys

    code = ("import sys, time; from recogen.cli import main; t = time.perf_counter(); "
            f"rc = main(['generate', 'finetune', '--model', 'nobody-here/no-model', '--data', {str(images)!r}, "
            f"'--prompt', 'x', '--out', {str(tmp_path / 'run')!r}]); "
            "print(rc, time.perf_counter() - t, 'torch' in sys.modules or 'diffusers' in sys.modules)")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    rc, seconds, heavy = r.stdout.split()
    assert_one_line(int(rc), r.stderr, "nobody-here/no-model", "--local-dir DIR")
    assert float(seconds) < 1.0 and heavy == "False"  # options, folder, captions and model checked without torch
    assert not (tmp_path / "run").exists()
