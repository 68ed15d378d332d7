"""The explanation methods, by name: each turns one :class:`Job` into a raw saliency map.

CAM methods come from the grad-cam library (pytorch-grad-cam), attribution methods from captum; this
module only adapts their calling conventions to one signature. Importing it is instant: the libraries
(and torch) load when a method runs, so the CLI can list the names without them.

A method gets the target as grad-cam's convention has it: a callable from one image's model output to a
scalar (``ClassifierOutputTarget(k)`` for a class; the library's segmentation and detection targets fit
the same slot), so a new task brings a target, not a new method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from torch import nn

# Fixed batch sizes: the same image gives the same map whatever else runs (and memory stays bounded).
SCORECAM_BATCH = 32  # masked copies of the input scored per forward pass
IG_STEPS = 50  # Riemann steps of the path integral (captum's default)
IG_BATCH = 25  # path points per forward pass


@dataclass(frozen=True)
class Job:
    """One image to explain: ``model`` (eval mode), ``x`` the normalised input (1, C, H, W), ``target``
    (one image's output -> scalar), the chosen ``layer`` module (None for input attribution) with its
    ``reshape`` (tokens -> grid, or None) and the ``baseline`` input of attribution methods (same shape
    as ``x``: the normalised black image)."""

    model: "nn.Module"
    x: "torch.Tensor"
    target: Callable[["torch.Tensor"], "torch.Tensor"]
    layer: "nn.Module | None"
    reshape: Callable | None
    baseline: "torch.Tensor"


@dataclass(frozen=True)
class Method:
    """A registered method: ``run(job)`` returns a non-negative map (H', W') as numpy, any scale (the
    caller resizes to the input and scales to [0, 1]); ``uses_layer``: whether ``--layer`` applies."""

    name: str
    run: Callable[[Job], "np.ndarray"]
    uses_layer: bool
    help: str


METHODS: dict[str, Method] = {}


def register_method(name: str, *, uses_layer: bool, help: str) -> Callable:
    """Register ``fn(job) -> map`` as explanation method ``name`` (duplicate names are an error).

    >>> @register_method("my-cam", uses_layer=True, help="...")
    ... def my_cam(job): ...
    """

    def add(fn: Callable[[Job], Any]) -> Callable[[Job], Any]:
        if name in METHODS:
            raise ValueError(f"duplicate explanation method {name!r}")
        METHODS[name] = Method(name, fn, uses_layer, help)
        return fn

    return add


def get_method(name: str) -> Method:
    """The method called ``name``; an unknown name is a ConfigError listing the registered ones."""
    if name not in METHODS:
        raise ConfigError(f"unknown explanation method {name!r}; choose from: {', '.join(METHODS)}")
    return METHODS[name]


# ----------------------------------------------------------------------------------- CAM methods
def _run_cam(cam_class: str, job: Job, **attrs: Any) -> "np.ndarray":
    """Run grad-cam's ``cam_class`` on ``job``; its hooks are removed afterwards (not with ``with``:
    the library's ``__exit__`` prints and swallows IndexErrors)."""
    import pytorch_grad_cam

    cam = getattr(pytorch_grad_cam, cam_class)(job.model, [job.layer], reshape_transform=job.reshape)
    for k, v in attrs.items():
        setattr(cam, k, v)
    try:
        return cam(job.x, [job.target])[0]
    finally:
        cam.activations_and_grads.release()


@register_method("gradcam", uses_layer=True, help="Grad-CAM (Selvaraju et al. 2017): channels weighted by mean gradient")
def gradcam(job: Job) -> "np.ndarray":
    return _run_cam("GradCAM", job)


@register_method("gradcam++", uses_layer=True, help="Grad-CAM++ (Chattopadhyay et al. 2018): higher-order gradient weights")
def gradcam_pp(job: Job) -> "np.ndarray":
    return _run_cam("GradCAMPlusPlus", job)


@register_method("eigencam", uses_layer=True, help="Eigen-CAM (Muhammad & Yeasin 2020): first principal component "
                                                   "of the layer's activations; class-agnostic")
def eigencam(job: Job) -> "np.ndarray":
    _thin_svd_in_eigencam()
    return _run_cam("EigenCAM", job)


def first_component(activation_batch: np.ndarray) -> np.ndarray:
    """Each (C, H, W) activation of a batch projected on its first principal component: (B, H, W)
    float32. The projection grad-cam's EigenCAM computes, from the thin SVD: grad-cam asks numpy for
    the full one, whose (H*W, H*W) factor U is never used and is 1 GiB for a 128x128 map (a U-Net's
    full-resolution decoder stage at 128 px; measured 1.5 s for a 64x64 one)."""
    import numpy as np

    out = []
    for a in np.nan_to_num(np.asarray(activation_batch, dtype=np.float32), nan=0.0):
        flat = a.reshape(a.shape[0], -1).T
        flat = flat - flat.mean(axis=0)
        vt = np.linalg.svd(flat, full_matrices=False)[2]
        out.append((flat @ vt[0]).reshape(a.shape[1:]))
    return np.asarray(out, dtype=np.float32)


def _thin_svd_in_eigencam() -> None:
    """Make grad-cam's EigenCAM module use :func:`first_component` (the same maps; idempotent)."""
    from pytorch_grad_cam import eigen_cam

    if getattr(eigen_cam, "get_2d_projection", None) is not first_component:
        eigen_cam.get_2d_projection = first_component


@register_method("scorecam", uses_layer=True, help="Score-CAM (Wang et al. 2020): channels weighted by the score of "
                                                   "the input masked by each; no gradients, one forward per channel")
def scorecam(job: Job) -> "np.ndarray":
    _quiet_scorecam()
    return _run_cam("ScoreCAM", job, batch_size=SCORECAM_BATCH)


def _quiet_scorecam() -> None:
    """Silence the tqdm bar grad-cam's ScoreCAM draws per batch of masked inputs (it offers no switch).

    Its module's own ``tqdm`` reference is replaced, once, by a stand-in whose bars are disabled: no
    other code's tqdm changes, and nothing process-wide such as ``sys.stderr`` is swapped during a call
    (``contextlib.redirect_stderr`` would, swallowing other threads' output in the service and racing
    with a concurrent call's restore). Idempotent; assigning a module attribute is atomic.
    """
    import functools
    import types

    import tqdm
    from pytorch_grad_cam import score_cam

    bar = getattr(score_cam, "tqdm", None)
    if bar is None or getattr(bar, "recogen_quiet", False):
        return
    quiet = functools.partial(tqdm.tqdm, disable=True)
    if isinstance(bar, types.ModuleType):  # `import tqdm` ... `tqdm.tqdm(range(...))` (grad-cam 1.5)
        score_cam.tqdm = types.SimpleNamespace(tqdm=quiet, recogen_quiet=True)
    else:  # `from tqdm import tqdm`, should a later version import it so
        quiet.recogen_quiet = True  # type: ignore[attr-defined]
        score_cam.tqdm = quiet


# --------------------------------------------------------------------------- attribution methods
@register_method("integrated-gradients", uses_layer=False,
                 help="Integrated Gradients (Sundararajan et al. 2017, captum) from the black image; "
                      "channels summed as absolute values")
def integrated_gradients(job: Job) -> "np.ndarray":
    import torch
    from captum.attr import IntegratedGradients

    def score(inputs: torch.Tensor) -> torch.Tensor:  # the target's scalar for every input of the batch
        return torch.stack([job.target(o) for o in job.model(inputs)])

    attr = IntegratedGradients(score).attribute(job.x, baselines=job.baseline, n_steps=IG_STEPS,
                                                internal_batch_size=IG_BATCH)
    # Attributions are signed per channel; the map shows where they are large (abs, summed over channels).
    return attr[0].detach().abs().sum(0).cpu().numpy()
