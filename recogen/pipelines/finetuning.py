"""Fine-tune a published diffusers pipeline on a folder of images: ``recogen generate finetune``.

``lora`` (default) trains low-rank adapters (peft) on the UNet's attention projections and leaves the
base weights as they are; the run keeps only the adapters, in diffusers' own file
(``RUN/pytorch_lora_weights.safetensors``), so ``pipe.load_lora_weights(RUN)`` and ``recogen generate
text2img --model BASE --lora RUN`` use them. ``full`` trains every UNet weight (for small models: its
checkpoint holds the UNet and twice its size of optimiser state) and writes a whole pipeline folder,
``RUN/pipeline``, usable as ``--model RUN/pipeline``. The VAE and the text encoder stay frozen.

The run folder: ``config.yaml`` (the resolved options), ``checkpoints/last.pt`` (written atomically
every ``checkpoint_every`` steps; ``--resume`` continues from it), ``history.json`` (the loss of every
step), ``samples/before.png`` and ``samples/after.png`` (the sample prompt, same seed, before and
after training) and ``finetune.json`` (the record: losses, times, outputs, versions).

>>> import recogen
>>> res = recogen.finetune_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", "dog_photos/", "runs/sks-dog",
...                                 prompt="a photo of sks dog", steps=500)
>>> res.lora, res.record["fixed_loss_after"]
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelError, RunError, TrainingInterrupted
from . import device as dev
from . import hub
from .finetune_data import Example, read_examples

log = logging.getLogger("recogen.finetune")

METHODS = ("lora", "full")
DEFAULTS: dict[str, Any] = dict(prompt=None, method="lora", rank=4, steps=500, lr=None, batch_size=1, size=None, seed=0,
                                checkpoint_every=100, sample_prompt=None, sample_steps=25, device="auto", dtype="auto")
DEFAULT_LR = {"lora": 1e-4, "full": 1e-5}  # diffusers' text-to-image examples (LoRA; full fine-tuning)
MAX_GRAD_NORM = 1.0
CHECKPOINT = Path("checkpoints") / "last.pt"
# What a resumed run must share with the run it continues; the rest (steps, device, samples) may change.
IDENTITY = ("model", "data", "prompt", "method", "rank", "lr", "batch_size", "size", "seed")


@dataclass
class FinetuneResult:
    """A finished fine-tuning run: its folder, the record written there (``finetune.json``), the LoRA
    file (``lora`` method) or pipeline folder (``full``), and the sample images written."""

    run: Path
    record: dict[str, Any]
    lora: Path | None = None
    pipeline: Path | None = None
    samples: list[Path] = field(default_factory=list)


def finetune_pipeline(model: str | None = None, data: Any = None, out: Any = None, *, prompt: str | None = None,
                      method: str | None = None, rank: int | None = None, steps: int | None = None,
                      lr: float | None = None, batch_size: int | None = None, size: Any = None, seed: int | None = None,
                      checkpoint_every: int | None = None, sample_prompt: str | None = None,
                      sample_steps: int | None = None, device: str | None = None, dtype: str | None = None,
                      resume: bool = False) -> FinetuneResult:
    """Fine-tune the diffusers pipeline ``model`` (Hub id or folder) on the images in ``data``, into the run ``out``.

    Captions: ``prompt`` for every image, else ``data/metadata.jsonl``, else a same-name ``.txt`` per image.
    ``method``: ``lora`` (default; ``rank`` 4) or ``full``. ``steps`` (500) batches of ``batch_size`` (1)
    images at ``size`` (N or WxH; default the model's own) with AdamW at ``lr`` (1e-4 LoRA, 1e-5 full).
    ``sample_prompt`` (default: the first caption) is drawn with ``sample_steps`` (25; 0: none) before
    and after training. ``resume=True`` continues the run in ``out`` from its last checkpoint (``model``
    and ``data`` may then be left out; ``steps`` may be raised to train on).

    >>> res = finetune_pipeline("models/sd15", "dog/", "runs/dog", prompt="a photo of sks dog", steps=400)
    >>> text2img("models/sd15", "a photo of sks dog in a bucket", lora=res.run)
    """
    given = {k: v for k, v in dict(model=model, data=data, prompt=prompt, method=method, rank=rank, steps=steps, lr=lr,
                                   batch_size=batch_size, size=size, seed=seed, checkpoint_every=checkpoint_every,
                                   sample_prompt=sample_prompt, sample_steps=sample_steps, device=device,
                                   dtype=dtype).items() if v is not None}
    # 1. everything checkable without torch: options, run folder, images and captions, where the model is
    run, cfg = _plan(out, given, resume)
    # The model first: where it is (or that it cannot be had offline) is known in well under a second,
    # while listing and fingerprinting a large image folder can take many.
    source = hub.resolve(cfg["model"])
    examples, captions = read_examples(cfg["data"], cfg["prompt"])
    fingerprint = _fingerprint(examples, cfg["data"])
    if resume and cfg.get("data_fingerprint") not in (None, fingerprint):
        raise RunError(f"the images or captions in {cfg['data']} changed since the run in {run} began "
                       f"({cfg.get('images')} images then, {len(examples)} now); --resume needs the same data: "
                       "start a new run (another --out) to train on the new set")
    device = dev.pick_device(cfg["device"])
    wdtype = "float32" if cfg["method"] == "full" else dev.pick_dtype(cfg["dtype"], device)
    dev.check_fits(source.folder, device, wdtype, False, source.ref)
    t_load = time.perf_counter()
    # 2. the pipeline, the size it trains at, the images decoded at that size (a corrupt one stops here)
    pipe = _load(source, device, wdtype)
    load_seconds = time.perf_counter() - t_load
    w, h = _train_size(pipe, cfg["size"], source.ref)
    from .finetune_data import load_pixels

    pixels = load_pixels(examples, (w, h))
    cfg.update(size=f"{w}x{h}", sample_prompt=cfg["sample_prompt"] or examples[0].caption, images=len(examples),
               captions=captions, data_fingerprint=fingerprint)
    try:
        return _train(pipe, cfg, run, examples, pixels, device, wdtype, source.ref, load_seconds, resume)
    except (RuntimeError, MemoryError) as e:
        if dev.is_out_of_memory(e):
            raise ModelError(f"{source.ref} ran out of memory on {device} while training ({str(e).splitlines()[0]}); "
                             "try --batch-size 1, a smaller --size, --method lora, or --dtype fp16 (GPU)") from None
        raise


# ------------------------------------------------------------------------------------------ planning
def _plan(out: Any, given: dict[str, Any], resume: bool) -> tuple[Path, dict[str, Any]]:
    """The run folder and the run's config: a new run's (defaults + ``given``) or, with ``resume``, the
    saved one, which ``given`` may only extend (more steps, another device), not contradict."""
    from ..config import load_yaml
    from ..utils import check_writable_folder

    if out is None:
        raise ConfigError("--out RUN is needed: the folder the run is written to")
    run = Path(out).expanduser()
    check_writable_folder(run)
    saved_file = run / "config.yaml"
    if resume:
        if not saved_file.is_file():
            raise RunError(f"--resume: {run} holds no fine-tuning run (no config.yaml); leave out --resume to "
                           "start one")
        saved = load_yaml(saved_file)
        if saved.get("task") != "finetune":
            raise RunError(f"--resume: {run} is not a `generate finetune` run (its config.yaml is of task "
                           f"{saved.get('task')!r})")
        for key in IDENTITY:
            if key in given and not _same(key, given[key], saved.get(key)):
                was = "(not given)" if saved.get(key) is None else saved[key]
                raise ConfigError(f"--resume: the run in {run} was started with --{key.replace('_', '-')} {was}, "
                                  f"not {given[key]}; a resumed run keeps its settings (leave the option out, or "
                                  "start a new run with another --out)")
        cfg = {**saved, **given}
    else:
        if run.is_dir() and any(run.iterdir()):
            if saved_file.is_file():
                raise ConfigError(f"--out {run} holds a fine-tuning run already: add --resume to continue it, or "
                                  "choose another --out")
            raise ConfigError(f"--out {run} is a folder with files in it; choose a new folder for the run")
        missing = [f"--{k}" for k in ("model", "data") if k not in given]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} needed: the pipeline to "
                              "fine-tune (Hub id or folder) and the folder of training images")
        cfg = {"task": "finetune", "model": None, "data": None, **DEFAULTS, **given}
        if "rank" in given and cfg["method"] != "lora":
            raise ConfigError("--rank is the LoRA adapters' rank: it applies to --method lora only")
    _check_options(cfg)
    cfg["lr"] = float(cfg["lr"] if cfg["lr"] is not None else DEFAULT_LR[cfg["method"]])
    for key in ("model", "data"):  # local paths saved absolute: a resume may run from another directory
        path = Path(str(cfg[key])).expanduser()
        cfg[key] = str(path.resolve()) if path.exists() else str(cfg[key])
    return run, cfg


def _check_options(cfg: dict[str, Any]) -> None:
    """Each option's type and range, before anything is loaded."""
    from .core import check_size

    def whole(key: str, low: int, high: int = 10**9) -> None:
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise ConfigError(f"--{key.replace('_', '-')} must be a whole number from {low} to {high}, got {v!r}")

    if cfg["method"] not in METHODS:
        raise ConfigError(f"--method must be lora or full, got {cfg['method']!r}")
    whole("rank", 1, 1024)
    whole("steps", 1)
    whole("batch_size", 1, 4096)
    whole("seed", 0, 2**32 - 1)
    whole("checkpoint_every", 1)
    whole("sample_steps", 0, 1000)
    lr = cfg["lr"]
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1):
        raise ConfigError(f"--lr must be a number above 0 and below 1, got {lr!r}")
    for key in ("prompt", "sample_prompt"):
        if cfg[key] is not None and (not isinstance(cfg[key], str) or not cfg[key].strip()):
            raise ConfigError(f"--{key.replace('_', '-')} must be a non-empty text")
    check_size(cfg["size"])
    if cfg["method"] == "full" and cfg["dtype"] not in ("auto", "fp32"):
        raise ConfigError(f"--method full trains every UNet weight in fp32; --dtype {cfg['dtype']} applies to "
                          "--method lora (frozen base weights at lower precision)")


def _same(key: str, a: Any, b: Any) -> bool:
    """Whether a resumed run's option ``a`` is the saved ``b`` (paths by where they point, sizes parsed)."""
    if key == "size":
        from .core import check_size

        return b is not None and check_size(a) == check_size(b)
    if key in ("model", "data") and isinstance(a, (str, os.PathLike)) and isinstance(b, str):
        pa, pb = Path(a).expanduser(), Path(b).expanduser()
        if pa.exists() and pb.exists():
            return pa.resolve() == pb.resolve()
        return str(a) == b
    if key == "lr":
        return b is not None and float(a) == float(b)
    return a == b


def _fingerprint(examples: list[Example], root: Any) -> str:
    """A digest of the training set (file names, sizes, captions; not times, so a copied folder still
    matches): a resumed run must train on what the run began with."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(f"{ex.path.relative_to(Path(root).expanduser())}\0{ex.path.stat().st_size}\0{ex.caption}\n".encode())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------ loading
def _load(source: hub.Source, device: str, dtype: str):
    """The model's text-to-image pipeline at ``dtype`` on ``device``, frozen encoders, no progress bars."""
    import diffusers
    import torch

    from .core import _load_errors, _quiet

    with _quiet(), _load_errors(source, "finetune"):
        pipe = diffusers.AutoPipelineForText2Image.from_pretrained(
            source.location, torch_dtype=getattr(torch, dtype), local_files_only=source.local_only)
    unet = getattr(pipe, "unet", None)
    if (type(unet).__name__ != "UNet2DConditionModel" or getattr(pipe, "text_encoder_2", None) is not None
            or getattr(pipe, "text_encoder", None) is None or not hasattr(pipe, "save_lora_weights")):
        raise ModelError(f"{source.ref} is a {type(pipe).__name__}; finetune trains Stable Diffusion 1.x/2.x-style "
                         "pipelines (a UNet2DConditionModel conditioned on one CLIP text encoder) and not this "
                         "family yet")
    pipe.to(device)
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _train_size(pipe, size: Any, ref: str) -> tuple[int, int]:
    """(width, height) to train at: ``size``, or the model's own; a multiple of what the UNet's
    down-sampling needs (the VAE's factor times 2 per UNet resolution drop: 64 px for Stable Diffusion)."""
    from .core import check_size

    cfg = pipe.unet.config
    step = pipe.vae_scale_factor * 2 ** (len(cfg.block_out_channels) - 1)
    if size is None:
        s = cfg.sample_size
        lh, lw = (s, s) if isinstance(s, int) else tuple(s)
        return lw * pipe.vae_scale_factor, lh * pipe.vae_scale_factor
    w, h = check_size(size)
    if w % step or h % step:
        raise ConfigError(f"--size {w}x{h}: {ref} needs sides that are multiples of {step} (its autoencoder and "
                          "UNet halve the image that many times)")
    return w, h


# ----------------------------------------------------------------------------------------- training
def _train(pipe, cfg: dict[str, Any], run: Path, examples: list[Example], pixels, device: str,
           wdtype: str, ref: str, load_seconds: float, resume: bool) -> FinetuneResult:
    """Checkpoint restored (resume) or fixed-noise loss measured, then the resolved config and the first
    sample written (nothing is written before: a refused resume leaves the run as it was), then the loop."""
    import torch

    from ..config import save_yaml
    from . import finetune_outputs as outputs
    from .finetune_train import Loop, add_trainable, encode

    t0 = time.perf_counter()
    size = (pixels.shape[-1], pixels.shape[-2])
    samples = run / "samples"
    before = samples / "before.png"
    # the base model's drawing, before any adapter is added
    first = outputs.sample(pipe, cfg, size) if cfg["sample_steps"] and not before.exists() else None
    dtype = getattr(torch, wdtype)
    enc = encode(pipe, pixels, [e.caption for e in examples], device, dtype)
    params = add_trainable(pipe.unet, cfg["method"], cfg["rank"], cfg["seed"])
    loop = Loop(pipe, enc, params, lr=cfg["lr"], batch_size=cfg["batch_size"], seed=cfg["seed"],
                max_grad_norm=MAX_GRAD_NORM, device=device, dtype=dtype)
    ckpt = run / CHECKPOINT
    start, fixed_before, trained_seconds = 0, None, 0.0
    if resume and ckpt.is_file():
        state = loop.load(ckpt)
        start, fixed_before, trained_seconds = state["step"], state["fixed_loss_before"], state["seconds"]
        if cfg["steps"] < start:
            raise ConfigError(f"--steps {cfg['steps']}: the run in {run} is at step {start} already; pass --steps "
                              f"{start} or more (more to train on)")
        log.info(f"resuming from step {start} ({ckpt})")
    elif resume:
        log.info(f"no checkpoint in {run} yet: starting from step 0")
    if fixed_before is None:
        fixed_before = loop.fixed_loss()
    run.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, run / "config.yaml")
    if first is not None:
        outputs.save_png(first, before)
    steps, every = cfg["steps"], cfg["checkpoint_every"]
    log_every = max(1, steps // 10)
    t_train = time.perf_counter()

    def extra() -> dict[str, Any]:
        return {"fixed_loss_before": fixed_before, "seconds": trained_seconds + time.perf_counter() - t_train}

    try:
        for step in range(start, steps):
            loss = loop.step(step)
            done = step + 1
            if done % every == 0 and done < steps:
                loop.save(ckpt, done, extra())
                _write_history(run, loop.losses)
            if done % log_every == 0 or done == steps:
                rate = (done - start) / max(1e-9, time.perf_counter() - t_train)
                log.info(f"step {done}/{steps}  loss {loss:.4f}  ({rate:.2f} steps/s)")
    except KeyboardInterrupt:
        raise TrainingInterrupted(_interrupted(run, ckpt)) from None
    loop.save(ckpt, steps, extra())
    seconds = extra()["seconds"]
    _write_history(run, loop.losses)
    fixed_after = loop.fixed_loss()
    result = FinetuneResult(run, {})
    if cfg["method"] == "lora":
        result.lora = outputs.write_lora(pipe, run)
    else:
        result.pipeline = outputs.write_pipeline(pipe, run)
    if cfg["sample_steps"]:
        outputs.save_png(outputs.sample(pipe, cfg, size), samples / "after.png")
        result.samples = [p for p in (before, samples / "after.png") if p.is_file()]
    result.record = outputs.record(cfg, ref, pipe, loop, params, start, fixed_before, fixed_after, seconds,
                               load_seconds, time.perf_counter() - t0, device, wdtype, result, ckpt)
    from ..utils import write_json

    write_json(run / "finetune.json", result.record)
    return result


def _interrupted(run: Path, ckpt: Path) -> str:
    if ckpt.is_file():
        import torch

        try:
            step = torch.load(str(ckpt), map_location="cpu", weights_only=True)["step"]
        except Exception:  # noqa: BLE001 - a damaged file: the message then names no step
            step = None
        what = f"step {step} is saved" if step is not None else "the last checkpoint is saved"
        return f"interrupted; {what} in {ckpt} (continue with: recogen generate finetune --out {run} --resume)"
    return (f"interrupted before the first checkpoint: no training step was saved in {run}; start over with "
            f"`recogen generate finetune --out {run} --resume` (its settings are kept in config.yaml)")


def _write_history(run: Path, losses: list[float]) -> None:
    from ..utils import write_json

    write_json(run / "history.json", [{"step": k + 1, "loss": round(v, 6)} for k, v in enumerate(losses)])
