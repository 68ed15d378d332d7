"""The training loop of ``recogen generate finetune``: noise-prediction MSE on a diffusers pipeline's UNet.

The objective is the one the pipeline was trained with (as in diffusers' ``train_text_to_image_lora``):
an image's latent ``z0`` (the VAE's encoding times ``vae.config.scaling_factor``) is noised to
``z_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps`` at a random timestep ``t`` by a DDPM scheduler built from
the pipeline's own scheduler config, and the UNet, given ``z_t``, ``t`` and the caption's text
embedding, is trained to predict ``eps`` (or the velocity, for ``v_prediction`` models) under MSE.

A plain loop, not Lightning (which the recogen tasks use): the run is counted in steps over a handful
of images, the VAE and text encoder are frozen so each image and caption is encoded once and cached,
a checkpoint holds only the trained tensors (the LoRA matrices) and the optimiser, and the result must
be written in diffusers' own formats; Lightning's epoch loop, model cards and whole-module checkpoints
would all be worked around, and its import alone is 4 s of a CPU test budget. diffusers' own training
examples are plain loops too.

Every step's randomness (which images, noise, timesteps) comes from a generator seeded by (seed,
step), so a run resumed from a checkpoint continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import RunError

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the attention projections, as diffusers' LoRA examples
ENCODE_BATCH = 8  # images per VAE encoding pass (memory at 512 px), captions per text-encoder pass x 8
FIXED_IMAGES, FIXED_TIMESTEPS = 8, 4  # the fixed-noise loss: up to 8 images x 4 timesteps, same noise every time


@dataclass
class Encoded:
    """The frozen encoders' outputs, computed once: each image's latent distribution (mean, std; a
    fresh latent is sampled from it every step, as ``latent_dist.sample()`` would) and each distinct
    caption's text embedding (``caption_of[i]``: the row of image i's caption)."""

    mean: torch.Tensor
    std: torch.Tensor
    embeds: torch.Tensor
    caption_of: torch.Tensor


def encode(pipe, pixels: torch.Tensor, captions: list[str], device: str, dtype: torch.dtype) -> Encoded:
    """VAE latents (mean, std, fp32) of ``pixels`` and text embeddings of ``captions``, with the
    pipeline's own ``encode_prompt`` (the conditioning its sampler uses)."""
    means, stds = [], []
    with torch.inference_mode():
        for k in range(0, len(pixels), ENCODE_BATCH):
            dist = pipe.vae.encode(pixels[k : k + ENCODE_BATCH].to(device, dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        distinct = list(dict.fromkeys(captions))
        embeds = torch.cat([pipe.encode_prompt(distinct[k : k + 8 * ENCODE_BATCH], device, 1, False)[0]
                            for k in range(0, len(distinct), 8 * ENCODE_BATCH)])
    row = {c: i for i, c in enumerate(distinct)}
    # inference tensors cannot enter autograd graphs: clone them into ordinary ones
    return Encoded(torch.cat(means).clone(), torch.cat(stds).clone(), embeds.clone(),
                   torch.tensor([row[c] for c in captions], device=device))


def add_trainable(unet, method: str, rank: int, seed: int = 0) -> list[tuple[str, torch.nn.Parameter]]:
    """Make ``unet`` trainable as ``method`` says and return its trained ``(name, parameter)`` pairs.

    ``lora``: peft adapters of rank ``rank`` (alpha = rank, so their scale is 1 wherever they are
    loaded) on the attention projections, base weights frozen; B starts at zero, so the adapted UNet
    starts as the base one, and A's random start comes from ``seed``. ``full``: every UNet weight.
    """
    if method == "lora":
        from peft import LoraConfig

        unet.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):  # seeded (same seed, same run) without moving the caller's RNG
            torch.manual_seed(seed)
            unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                        target_modules=LORA_TARGETS))
        from diffusers.training_utils import cast_training_params

        cast_training_params(unet, dtype=torch.float32)  # adapters train in fp32 even on fp16 base weights
    else:
        unet.requires_grad_(True)
    return [(n, p) for n, p in unet.named_parameters() if p.requires_grad]


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one step's randomness: a function of (seed, step) only (exact resumes)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)


def batch_indices(n: int, batch: int, step: int, seed: int) -> list[int]:
    """Image indices of ``step``: the images in a fresh seeded order each pass over the folder (an
    epoch), taken ``batch`` at a time, as a shuffled DataLoader would; a function of its arguments."""
    out, perms = [], {}
    for pos in range(step * batch, (step + 1) * batch):
        epoch, k = divmod(pos, n)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919 * (epoch + 1)))
        out.append(int(perms[epoch][k]))
    return out


class Loop:
    """One fine-tuning run's state: the pipeline, its noise scheduler, the cached encodings, the trained
    parameters and their optimiser; :meth:`step` trains one batch, :meth:`save`/:meth:`load` checkpoint."""

    def __init__(self, pipe, enc: Encoded, params: list[tuple[str, torch.nn.Parameter]], *, lr: float,
                 batch_size: int, seed: int, max_grad_norm: float, device: str, dtype: torch.dtype):
        from diffusers import DDPMScheduler

        self.pipe, self.unet, self.enc = pipe, pipe.unet, enc
        # Training noises with the DDPM forward process of the pipeline's own schedule (betas, prediction
        # type), whatever sampler the pipeline uses for inference.
        self.sched = DDPMScheduler.from_config(pipe.scheduler.config)
        self.scaling = pipe.vae.config.scaling_factor
        self.names = [n for n, _ in params]
        self.params = [p for _, p in params]
        # AdamW with the weight decay of diffusers' examples
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=1e-2)
        # fp16 base weights (GPU): loss scaling keeps small gradients from flushing to zero
        self.scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == torch.float16)
        self.batch_size, self.seed, self.max_grad_norm = batch_size, seed, max_grad_norm
        self.device, self.dtype = device, dtype
        self.losses: list[float] = []

    def _loss(self, latents, noise, t, embeds) -> torch.Tensor:
        noisy = self.sched.add_noise(latents, noise, t)
        if self.sched.config.prediction_type == "v_prediction":
            target = self.sched.get_velocity(latents, noise, t)
        else:
            target = noise
        pred = self.unet(noisy.to(self.dtype), t, embeds.to(self.dtype)).sample
        return F.mse_loss(pred.float(), target.float())

    def step(self, step: int) -> float:
        """Train on step ``step``'s batch; returns its loss."""
        e, g = self.enc, step_generator(self.seed, step)
        idx = torch.tensor(batch_indices(len(e.mean), self.batch_size, step, self.seed), device=e.mean.device)
        mean, std = e.mean[idx], e.std[idx]
        latents = (mean + std * torch.randn(mean.shape, generator=g).to(self.device)) * self.scaling
        noise = torch.randn(mean.shape, generator=g).to(self.device)
        t = torch.randint(0, self.sched.config.num_train_timesteps, (len(idx),), generator=g).to(self.device)
        self.unet.train()
        loss = self._loss(latents, noise, t, e.embeds[e.caption_of[idx]])
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.scaler.step(self.opt)
        self.scaler.update()
        value = float(loss.detach())
        self.losses.append(value)
        return value

    def fixed_loss(self) -> float:
        """The loss on the same images, noise and timesteps every time it is asked (latent means, up to
        8 images x 4 timesteps spread over the schedule): a measure of the fit free of the per-step
        sampling noise that makes the training loss jump about."""
        e = self.enc
        n = min(FIXED_IMAGES, len(e.mean))
        steps = self.sched.config.num_train_timesteps
        t = torch.tensor([int((k + 0.5) * steps / FIXED_TIMESTEPS) for k in range(FIXED_TIMESTEPS)]).repeat(n)
        idx = torch.arange(n).repeat_interleave(FIXED_TIMESTEPS)
        g = torch.Generator().manual_seed(self.seed + 12345)
        noise = torch.randn((len(idx), *e.mean.shape[1:]), generator=g)
        self.unet.eval()
        total = 0.0
        with torch.no_grad():
            for k in range(0, len(idx), ENCODE_BATCH):
                i = idx[k : k + ENCODE_BATCH].to(e.mean.device)
                part = self._loss(e.mean[i] * self.scaling, noise[k : k + ENCODE_BATCH].to(self.device),
                                  t[k : k + ENCODE_BATCH].to(self.device), e.embeds[e.caption_of[i]])
                total += float(part) * len(i)
        return total / len(idx)

    # ----------------------------------------------------------------------------------- checkpoints
    def save(self, path: Path, step: int, extra: dict[str, Any]) -> None:
        """Write the trained tensors, optimiser, loss history and ``extra`` after ``step`` steps, atomically
        (a run killed while writing keeps its previous checkpoint)."""
        from ..utils import atomic_write

        state = {"step": step, "weights": {n: p.detach().cpu() for n, p in zip(self.names, self.params)},
                 "optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(),
                 "losses": torch.tensor(self.losses, dtype=torch.float64), **extra}
        atomic_write(path, lambda tmp: torch.save(state, tmp))

    def load(self, path: Path) -> dict[str, Any]:
        """Restore a checkpoint written by :meth:`save` (read with ``weights_only=True``: nothing in the
        file is executed); returns it. One that does not fit this run is a RunError."""
        import pickle

        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            weights = state["weights"]
            if sorted(weights) != sorted(self.names):
                raise KeyError(f"it holds {len(weights)} trained tensors, this run trains {len(self.names)}")
            with torch.no_grad():
                for n, p in zip(self.names, self.params):
                    p.copy_(weights[n])
            self.opt.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
        except (OSError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as e:
            raise RunError(f"cannot resume from {path}: it does not fit this run ({str(e).splitlines()[0]}); delete "
                           f"{path.parent} to start over") from None
        self.losses = [float(v) for v in state["losses"]]
        return state
