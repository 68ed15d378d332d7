"""Generative models: ``vae``, ``dcgan``, ``ddpm``. Each network is kept apart from its process (the
losses and the sampler live beside it in the same file, as in diffusers), and every model offers the
interface in :mod:`.base`, which ``recogen.tasks.generate`` trains and samples through."""
from . import diffusion, gan, vae  # noqa: F401 - registers the builders
