"""The CLI action ``recogen generate finetune``: argparse only here (``recogen --help`` stays instant);
the work is :func:`recogen.pipelines.finetuning.finetune_pipeline`, imported when the command runs."""
from __future__ import annotations

import argparse
import json
from typing import Any

# (flag, argparse keyword arguments); defaults None, so that only options given reach the function (a
# resumed run tells given options from its saved ones) and the function's own defaults apply otherwise.
OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--model", dict(metavar="ID_OR_DIR", help="the pipeline to fine-tune: Hub id or folder (Stable Diffusion 1.x/2.x "
                                                "style); taken from the run with --resume")),
    ("--data", dict(metavar="FOLDER", help="folder of training images; taken from the run with --resume")),
    ("--out", dict(metavar="RUN", required=True, help="run folder to write (or to continue with --resume)")),
    ("--prompt", dict(metavar="TEXT", help="one caption for every image (e.g. \"a photo of sks dog\"); without it the "
                                           "captions come from FOLDER/metadata.jsonl or a same-name .txt per image")),
    ("--method", dict(choices=["lora", "full"], help="lora (default): adapters on the UNet's attention; full: every "
                                                     "UNet weight (small models)")),
    ("--rank", dict(type=int, help="LoRA rank (default 4)")),
    ("--steps", dict(type=int, help="training steps, i.e. batches (default 500); with --resume, raise it to train on")),
    ("--lr", dict(type=float, help="learning rate (default 1e-4 for lora, 1e-5 for full)")),
    ("--batch-size", dict(type=int, help="images per step (default 1)")),
    ("--size", dict(metavar="N|WxH", help="training size: images are resized to cover it and centre-cropped "
                                          "(default: the model's own, 512 for Stable Diffusion 1.x)")),
    ("--seed", dict(type=int, help="seed of the image order, noise and timesteps, and of the samples (default 0)")),
    ("--checkpoint-every", dict(type=int, metavar="N",
                                help="write RUN/checkpoints/last.pt every N steps (default 100)")),
    ("--sample-prompt", dict(metavar="TEXT", help="drawn before and after training into RUN/samples (default: the "
                                                  "first caption)")),
    ("--sample-steps", dict(type=int, help="denoising steps of the samples (default 25; 0: no samples)")),
    ("--device", dict(help="auto (default: a GPU if there is one), cpu, cuda, cuda:N or mps")),
    ("--dtype", dict(choices=["auto", "fp32", "fp16", "bf16"],
                     help="precision of the frozen weights with --method lora (default auto: fp16 on a GPU, fp32 on "
                          "the CPU)")),
]


def add_action(actions, cap) -> None:
    """Add ``finetune`` (the capability ``cap``) to the ``generate`` command's subparsers ``actions``."""
    p = actions.add_parser(cap.name, help=cap.help, description=cap.help + ". Writes RUN/pytorch_lora_weights"
                           ".safetensors (lora; use it with `recogen generate text2img --model MODEL --lora RUN`) or "
                           "RUN/pipeline (full; `--model RUN/pipeline`), with checkpoints, loss history and samples.")
    for flag, kw in OPTIONS:
        p.add_argument(flag, **kw)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--json", action="store_true", help="print the run's record (RUN/finetune.json) as JSON")
    p.set_defaults(func=lambda ns: run(cap, ns))


def run(cap, ns: argparse.Namespace) -> int:
    """Fine-tune with the options given, then print the record (``--json``) or a summary."""
    kw = {flag.lstrip("-").replace("-", "_"): getattr(ns, flag.lstrip("-").replace("-", "_")) for flag, _ in OPTIONS}
    import logging

    progress = logging.getLogger("recogen.finetune")
    level = progress.level
    if ns.json:  # the step lines go to stdout, which then holds the JSON record only
        progress.setLevel(logging.WARNING)
    try:
        res = cap.load()(**kw, resume=ns.resume)
    finally:
        progress.setLevel(level)
    r = res.record
    if ns.json:
        print(json.dumps(r, indent=2))
        return 0
    start = r["resumed_from"] or 0
    steps = (f"{r['steps']} steps" if not start else f"steps {start + 1}-{r['steps']}" if start < r["steps"]
             else f"already at step {start}, nothing to train")
    print(f"finetune ({r['method']}) of {r['model']} on {r['images']} image(s) at {r['size']}, captions from "
          f"{r['captions']}: {steps}, loss {r['loss_first']:.4f} -> {r['loss_last']:.4f} (fixed-noise loss "
          f"{r['fixed_loss_before']:.4f} -> {r['fixed_loss_after']:.4f}), {r['train_seconds']:.1f} s training")
    if res.lora:
        print(f"wrote {res.lora}")
        print(f"use it: recogen generate text2img --model {r['model']} --lora {res.run} --prompt \"...\" --out x.png")
    if res.pipeline:
        print(f"wrote {res.pipeline}")
        print(f"use it: recogen generate text2img --model {res.pipeline} --prompt \"...\" --out x.png")
    for p in res.samples:
        print(f"sample: {p}")
    print(f"record: {res.run / 'finetune.json'}")
    return 0
