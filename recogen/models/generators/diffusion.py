"""Denoising diffusion (Ho et al. 2020) with diffusers' ``UNet2DModel`` and ``DDPMScheduler`` for
training (noise or v-prediction, optional Min-SNR weighting), and ``DDIMScheduler`` (Song et al. 2021)
or DPM-Solver++ for sampling in few steps.

Class-conditional models get diffusers' class embedding (``num_class_embeds``) with one extra
"no class" index; labels are dropped to it at random while training, which gives classifier-free
guidance at sampling time (Ho & Salimans 2022): eps = eps(no class) + g * (eps(class) - eps(no class)).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..catalog import register_model
from ...errors import ConfigError
from .base import GenerativeModel, maybe_ema, no_pretrained
from .layers import num_stages


def _ddim(config: dict) -> Any:
    from diffusers import DDIMScheduler

    # "trailing" spacing starts at the last training timestep: better images in few steps
    # (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed").
    return DDIMScheduler.from_config(config, timestep_spacing="trailing")


def _dpmpp(config: dict) -> Any:
    from diffusers import DPMSolverMultistepScheduler

    # DPM-Solver++(2M) (Lu et al. 2022): a second-order multistep ODE solver; "lower_order_final" keeps
    # the last steps stable at few-step counts, and thresholding clips x0 as DDIM's clip_sample does
    # (without it the first step, at t = 999 of the cosine schedule, blows up). `generate train`'s
    # default sampler since the v-prediction ddpm: on mnist-5k (seed 0, 15 steps, no guidance) it gave
    # 7.1x the FID floor against DDIM's 15.9x (judged against training images; BENCHMARKS.md).
    return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                   timestep_spacing="trailing", lower_order_final=True,
                                                   thresholding=True, sample_max_value=1.0)


# What the UNet may be trained to predict (DDPMScheduler's prediction_type).
PREDICTIONS = ("epsilon", "v_prediction")

# Sampler name -> scheduler built from the training scheduler's config (same betas).
SAMPLERS = {"ddim": _ddim, "dpm++": _dpmpp}


def _check_sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise ConfigError(f"unknown --sampler {name!r}; choose {' or '.join(SAMPLERS)}")
    return name


class DDPM(GenerativeModel):
    # Sampling is the cost of diffusion: the per-epoch grid is 16 images in 10 DDIM steps.
    preview_n = 16
    preview_opts = {"steps": 10}

    def __init__(self, *, in_chans: int, image_size: int, num_classes: int, width: int = 32, layers_per_block: int = 1,
                 attention: bool = False, timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
                 conditional: bool = False, p_uncond: float = 0.1, ema: float = 0.999, steps: int = 50,
                 guidance: float = 1.0, sampler: str = "ddim", snr_gamma: float = 0.0, prediction: str = "epsilon"):
        super().__init__()
        # Min-SNR-gamma loss weighting (Hang et al. 2023; diffusers' --snr_gamma): 0 is plain MSE.
        self.snr_gamma = float(snr_gamma)
        if prediction not in PREDICTIONS:
            raise ConfigError(f"unknown ddpm prediction {prediction!r}; choose {' or '.join(PREDICTIONS)}")
        from diffusers import DDPMScheduler, UNet2DModel

        self.num_classes, self.conditional, self.p_uncond = num_classes, conditional, p_uncond
        # sampling defaults, saved with the model
        self.steps, self.guidance, self.sampler = steps, guidance, _check_sampler(sampler)
        stages, _ = num_stages(image_size)
        # Full resolution plus at most two 2x stages (28 -> 14 -> 7, 32 -> 16 -> 8): deeper levels
        # cost more CPU time than they give on images this small.
        levels = min(stages, 2) + 1
        chans = tuple(width * min(2**i, 2) for i in range(levels))
        down = ["DownBlock2D"] * levels
        up = ["UpBlock2D"] * levels
        if attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        self.unet = UNet2DModel(
            sample_size=image_size, in_channels=in_chans, out_channels=in_chans, block_out_channels=chans,
            layers_per_block=layers_per_block, down_block_types=tuple(down), up_block_types=tuple(up),
            norm_num_groups=min(8, width), attention_head_dim=min(32, chans[-1]),
            num_class_embeds=num_classes + 1 if conditional else None,
        )
        self.unet_ema = maybe_ema(self.unet, ema)
        # What the UNet predicts: the noise (Ho et al.) or v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho
        # 2022). The samplers and the editors build their schedulers from this config, so they read it.
        self.scheduler = DDPMScheduler(num_train_timesteps=timesteps, beta_schedule=beta_schedule, prediction_type=prediction)
        alphas = self.scheduler.alphas_cumprod.float()
        self.register_buffer("alphas_cumprod", alphas, persistent=False)

    @property
    def prediction(self) -> str:
        return self.scheduler.config.prediction_type

    def _target(self, x0: torch.Tensor, noise: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return noise if self.prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0

    @property
    def null_class(self) -> int:
        return self.num_classes

    def param_groups(self):
        return {"model": list(self.unet.parameters())}

    def phase_loss(self, phase, x, y):
        x0 = x * 2 - 1
        noise = torch.randn_like(x0)
        t = torch.randint(0, len(self.alphas_cumprod), (len(x0),), device=x0.device)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise  # 1. q(x_t | x_0)
        labels = None
        if self.conditional:  # 2. drop labels for classifier-free guidance
            drop = torch.rand(len(y), device=y.device) < self.p_uncond
            labels = torch.where(drop, torch.full_like(y, self.null_class), y)
        target = self._target(x0, noise, a)
        err = F.mse_loss(self.unet(xt, t, class_labels=labels).sample, target, reduction="none").mean((1, 2, 3))
        if self.snr_gamma > 0:  # 3b. min(SNR, gamma) / SNR: the low-noise steps stop dominating the gradient
            snr = a.flatten() / (1 - a.flatten())
            # for v the plain loss already weighs a step by SNR + 1 in x0 terms, hence the other divisor
            err = err * snr.clamp(max=self.snr_gamma) / (snr if self.prediction == "epsilon" else snr + 1)
        loss = err.mean()  # 3. predict the noise (or v)
        return loss, {"loss": loss.detach()}

    def after_step(self, phase):
        if self.unet_ema is not None:
            self.unet_ema.update_parameters(self.unet)

    @torch.no_grad()
    def val_metrics(self, x, y):
        # The same timesteps and noise every epoch (own generator), so the numbers are comparable.
        g = torch.Generator().manual_seed(0)
        x0 = x * 2 - 1
        noise = torch.randn(x0.shape, generator=g).to(x0.device)
        t = torch.randint(0, len(self.alphas_cumprod), (len(x0),), generator=g).to(x0.device)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        net = self.sampler_net
        pred = net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, class_labels=y if self.conditional else None).sample
        return {"val_loss": F.mse_loss(pred, self._target(x0, noise, a))}

    @property
    def sampler_net(self) -> nn.Module:
        return self.unet_ema.module if self.unet_ema is not None else self.unet

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, labels: torch.Tensor | None = None, steps: int | None = None,
               guidance: float | None = None, sampler: str | None = None, **opts: Any) -> torch.Tensor:
        """Deterministic sampling (DDIM, eta 0, or DPM-Solver++) in ``steps`` steps, with classifier-free
        ``guidance`` for conditional models."""
        labels = self.check_labels(labels)
        steps = int(steps or self.steps)
        guidance = self.guidance if guidance is None else float(guidance)
        if steps < 1 or steps > self.scheduler.config.num_train_timesteps:
            raise ConfigError(f"--steps must be 1..{self.scheduler.config.num_train_timesteps}, got {steps}")
        net = self.sampler_net
        dev = next(net.parameters()).device
        solver = SAMPLERS[_check_sampler(sampler or self.sampler)](self.scheduler.config)
        solver.set_timesteps(steps)
        s = self.unet.config.sample_size
        x = torch.randn(n, self.unet.config.in_channels, s, s, generator=generator).to(dev)  # 1. start from noise
        cfg = labels is not None and guidance != 1.0
        cond = None
        if labels is not None:
            labels = labels.to(dev)
            cond = torch.cat([labels, torch.full_like(labels, self.null_class)]) if cfg else labels
        elif self.conditional:  # no class asked of a conditional model: its unconditional mode
            cond = torch.full((n,), self.null_class, dtype=torch.long, device=dev)
        for t in solver.timesteps:
            inp = torch.cat([x, x]) if cfg else x
            eps = net(inp, t.to(dev), class_labels=cond).sample  # 2. predict noise
            if cfg:
                e_c, e_u = eps.chunk(2)
                eps = e_u + guidance * (e_c - e_u)  # 3. classifier-free guidance
            x = solver.step(eps, t, x).prev_sample  # 4. one solver step
        return ((x.clamp(-1, 1) + 1) / 2).float()


@register_model("ddpm", task="generate", family="diffusion", description="diffusion: diffusers UNet2DModel, DDPM training, DDIM sampling, classifier-free guidance")
def ddpm(*, num_classes: int, in_chans: int = 1, image_size: int = 28, pretrained: bool = False, **kw: Any) -> DDPM:
    no_pretrained("ddpm", pretrained)
    return DDPM(in_chans=in_chans, image_size=image_size, num_classes=num_classes, **kw)
