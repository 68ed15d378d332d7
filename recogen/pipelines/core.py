"""Loading a diffusers pipeline for one capability, running it with seeded generators, and writing
its PNGs with a JSON record of everything that made them.

The capability modules (:mod:`.text_to_image`, :mod:`.image_to_image`, :mod:`.inpainting`) only check their inputs
and call :func:`generate`; loading, device placement, memory options, error translation and output
files are here, once.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError, ModelError, OfflineError
from . import device as dev
from . import hub

# capability -> the diffusers AutoPipeline class that picks the right pipeline for a model's family
AUTO_CLASSES = {"text2img": "AutoPipelineForText2Image", "img2img": "AutoPipelineForImage2Image",
                "inpaint": "AutoPipelineForInpainting"}
MAX_IMAGES = 16  # per call: each image is a full diffusion run

_LOADED: dict[tuple, Any] = {}  # the last loaded pipeline (one: these models are large), by how it was loaded
# A pipeline a long-lived caller keeps loaded (``recogen serve --pipeline``), per thread: see held_pipeline.
_HELD = threading.local()


@dataclass
class PipelineResult:
    """What a pipeline made: PIL ``images``, the PNG ``paths`` written (empty without ``out``), the
    ``record`` written beside them (``record_path``) and returned by ``--json``."""

    images: list
    paths: list[Path] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    record_path: Path | None = None


# ------------------------------------------------------------------------------------------- loading
def load_pipeline(kind: str, model: str, device: str = "auto", dtype: str = "auto", attention_slicing: bool = False,
                  cpu_offload: bool = False, lora: Any = None, lora_scale: float = 1.0):
    """The diffusers pipeline of ``model`` (folder or Hub id) for ``kind``; returns ``(pipeline, facts)``.

    Checks come first, cheapest first (where the files are, offline; device and dtype; whether the
    weights fit), so a mistake is reported before diffusers is imported. The last pipeline stays
    loaded: another capability of the same model is made from it with ``from_pipe`` (shared weights).
    Inside :func:`held_pipeline` the held pipeline is used instead, and nothing is loaded.
    ``lora``: adapters (:mod:`.lora`: a finetune run folder or a .safetensors file) loaded at ``lora_scale``.
    """
    held = getattr(_HELD, "pipeline", None)
    if held is not None:
        if lora is not None:
            raise ConfigError("--lora cannot be added to a pipeline the service holds loaded")
        return _from_held(kind, *held)
    source = hub.resolve(model)
    from . import lora as lora_mod

    if lora is None and lora_scale != 1.0:  # a scale with nothing to scale is a mistake, not a no-op
        raise ConfigError(f"--lora-scale {lora_scale:g} needs --lora RUN (the adapters it scales)")
    lora_file = lora_mod.lora_file(lora) if lora is not None else None
    lora_scale = lora_mod.check_scale(lora_scale)
    device = dev.pick_device(device)
    dtype = dev.pick_dtype(dtype, device)
    dev.check_offload(cpu_offload, device)
    facts = {"model": source.ref, "device": device, "dtype": dtype, "attention_slicing": bool(attention_slicing),
             "cpu_offload": bool(cpu_offload), **dev.check_fits(source.folder, device, dtype, cpu_offload, source.ref)}
    if lora_file is not None:
        facts.update(lora=str(lora_file), lora_scale=lora_scale)
    import diffusers
    import torch

    cls = getattr(diffusers, AUTO_CLASSES[kind])
    key = (source.location, device, dtype, bool(attention_slicing), bool(cpu_offload),
           # adapters change the weights: a pipeline with others (or retrained ones) is not this one
           (str(lora_file), lora_file.stat().st_mtime_ns, lora_scale) if lora_file else None)
    base = _LOADED.get(key)
    t0 = time.perf_counter()
    if base is None:
        _LOADED.clear()  # free the previous model before loading the next
        with _quiet(), _load_errors(source, kind):
            pipe = cls.from_pretrained(source.location, torch_dtype=getattr(torch, dtype),
                                       local_files_only=source.local_only)
        if lora_file is not None:  # before offload hooks and device moves, which wrap the loaded layers
            with _quiet():  # "no LoRA keys for the text encoder": a finetune run trains the UNet only
                lora_mod.apply_lora(pipe, lora_file, lora_scale, source.ref)
        if attention_slicing:
            pipe.enable_attention_slicing()
        if cpu_offload:  # accelerate hooks move each part to the GPU while it runs
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        if not cpu_offload:  # offload hooks are tied to one pipeline object: not shared with from_pipe
            _LOADED[key] = pipe
    else:
        with _quiet(), _load_errors(source, kind):
            pipe = cls.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    facts.update(pipeline=type(pipe).__name__, load_seconds=round(time.perf_counter() - t0, 3))
    return pipe, facts


@contextlib.contextmanager
def held_pipeline(pipe: Any, facts: dict[str, Any], made: dict[str, Any] | None = None):
    """Within this block (in this thread), every capability runs on ``pipe``, loaded earlier by
    :func:`load_pipeline` with ``facts``, whatever model it is given. ``made``: a dict the caller keeps
    with ``pipe``, where the pipeline made for each capability is kept for the next call.

    The service keeps one pipeline per served model for its lifetime, while the one-slot cache of
    :func:`load_pipeline` would swap models on every request when several are served. Per thread: the
    service runs requests for different models in parallel worker threads, each under its model's lock.

    >>> pipe, facts = load_pipeline("text2img", "models/sd15")
    >>> with held_pipeline(pipe, facts):
    ...     res = text2img("models/sd15", "a red fox")
    """
    before = getattr(_HELD, "pipeline", None)
    _HELD.pipeline = (pipe, facts, made)
    try:
        yield
    finally:
        _HELD.pipeline = before


def _from_held(kind: str, base: Any, facts: dict[str, Any], made: dict[str, Any] | None):
    """``(pipeline for kind, facts)`` made from a held pipeline with ``from_pipe`` (shared weights,
    milliseconds), or the one ``made`` keeps from an earlier call."""
    import diffusers

    t0 = time.perf_counter()
    pipe = made.get(kind) if made is not None else None
    if pipe is None:
        with _quiet():
            try:
                pipe = getattr(diffusers, AUTO_CLASSES[kind]).from_pipe(base)
            except ValueError as e:  # the model's family has no pipeline of this kind
                raise ModelError(f"{facts['model']} cannot do {kind}: {_first_line(e)}") from None
        pipe.set_progress_bar_config(disable=True)
        if made is not None:
            made[kind] = pipe
    return pipe, {**facts, "pipeline": type(pipe).__name__, "load_seconds": round(time.perf_counter() - t0, 3)}


@contextlib.contextmanager
def _quiet():
    """Load without diffusers' and transformers' progress bars and info chatter (--json stays clean)."""
    import warnings

    import diffusers.utils.logging as dlog

    logs = [dlog]
    try:  # the text encoders and tokenizers of most pipelines load through transformers
        import transformers.utils.logging as tlog

        logs.append(tlog)
    except ImportError:
        pass
    levels = [log.get_verbosity() for log in logs]
    for log in logs:
        log.set_verbosity_error()
        log.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            # diffusers 0.36+ renames torch_dtype to dtype; torch_dtype is what every supported version reads
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            yield
    finally:
        for log, level in zip(logs, levels):
            log.set_verbosity(level)
            log.enable_progress_bar()


@contextlib.contextmanager
def _load_errors(source: hub.Source, kind: str):
    """The library's load failures as one-line user errors."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as e:  # online: no such repository, a gated model without a token, a server error
        raise ModelError(f"cannot load {source.ref} from the Hub: {_first_line(e)}") from None
    except OSError as e:  # missing files: a partly cached model, an incomplete folder
        if source.local_only or hub.hub_offline():
            raise OfflineError(f"cannot load {source.ref} without the network ({_first_line(e)}); "
                               f"{hub.offline_hint(source)}") from None
        raise ModelError(f"cannot load {source.ref}: {_first_line(e)}") from None
    except ValueError as e:  # the AutoPipeline has no pipeline of this kind for the model's family
        raise ModelError(f"{source.ref} cannot do {kind}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# ---------------------------------------------------------------------------------------- running
def check_common(prompt: Any, steps: int, guidance: float, n: int, seed: int) -> None:
    """The options every capability shares, checked before anything loads."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("--prompt must be a non-empty text")
    if not isinstance(steps, int) or not 1 <= steps <= 1000:
        raise ConfigError(f"--steps must be a whole number from 1 to 1000, got {steps!r}")
    if not isinstance(guidance, (int, float)) or not 0 <= guidance <= 50:
        raise ConfigError(f"--guidance must be from 0 to 50, got {guidance!r}")
    if not isinstance(n, int) or not 1 <= n <= MAX_IMAGES:
        raise ConfigError(f"--n must be a whole number from 1 to {MAX_IMAGES}, got {n!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed must be a whole number >= 0, got {seed!r}")


def check_size(size: Any) -> tuple[int, int] | None:
    """``size`` as (width, height): an int (square), "W", "WxH" or a pair; each a multiple of 8 (the
    autoencoder of Stable Diffusion halves the side three times)."""
    if size is None:
        return None
    try:
        if isinstance(size, str):
            parts = [int(p) for p in size.lower().split("x")]
        elif isinstance(size, int):
            parts = [size]
        else:
            parts = [int(p) for p in size]
        w, h = (parts * 2)[:2] if len(parts) in (1, 2) else (None, None)
    except (TypeError, ValueError):
        w = h = None
    if w is None or h is None:
        raise ConfigError(f"--size must be N or WxH (e.g. 512 or 768x512), got {size!r}")
    if w < 8 or h < 8 or w % 8 or h % 8 or max(w, h) > 4096:
        raise ConfigError(f"--size must be multiples of 8 from 8 to 4096, got {w}x{h}")
    return w, h


def generate(kind: str, model: str, prompt: str, *, negative_prompt: str | None, steps: int, guidance: float,
             seed: int, n: int, size: tuple[int, int] | None, out: Any, device: str, dtype: str,
             attention_slicing: bool, cpu_offload: bool, inputs: dict[str, Any] | None = None,
             call: dict[str, Any] | None = None, post=None, lora: Any = None,
             lora_scale: float = 1.0) -> PipelineResult:
    """Load ``model`` for ``kind`` and run it ``n`` times (image k from seed ``seed + k``, one CPU
    ``torch.Generator`` each, so the same seed gives the same images on any run of this machine).

    ``call``: the capability's own pipeline arguments (image, mask, strength); ``inputs``: what the
    record says about them (file names); ``post(images)``: a last step on the PIL images (inpaint pastes
    the kept pixels back). ``lora``, ``lora_scale``: adapters loaded onto the model (:func:`load_pipeline`).
    Writes the PNGs and the record when ``out`` is given.
    """
    out_paths = _out_paths(out, n) if out is not None else []
    pipe, facts = load_pipeline(kind, model, device, dtype, attention_slicing, cpu_offload, lora, lora_scale)
    import torch

    generators = [torch.Generator("cpu").manual_seed(seed + k) for k in range(n)]
    kwargs = dict(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=steps, guidance_scale=guidance,
                  num_images_per_prompt=n, generator=generators, **(call or {}))
    if size is not None and kind != "img2img":  # img2img takes the size of its (resized) input image
        kwargs.update(width=size[0], height=size[1])
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            result = pipe(**kwargs)
    except ValueError as e:  # diffusers' own input checks (e.g. too few steps left at a small strength)
        raise ConfigError(f"{kind}: {_first_line(e)}") from None
    except (RuntimeError, MemoryError) as e:
        if dev.is_out_of_memory(e):
            raise ModelError(f"{facts['model']} ran out of memory on {facts['device']} ({_first_line(e)}); "
                             f"{dev.MEMORY_HINT}") from None
        raise
    images = post(result.images) if post else list(result.images)
    seconds = time.perf_counter() - t0
    import diffusers

    from .._version import __version__

    record = {"task": kind, **facts, "prompt": prompt, "negative_prompt": negative_prompt, "seed": seed,
              "seeds": [seed + k for k in range(n)], "n": n, "steps": steps, "guidance": guidance,
              "width": images[0].width, "height": images[0].height, **(inputs or {}),
              "seconds": round(seconds, 3), "nsfw": _nsfw(result), "recogen": __version__,
              "diffusers": diffusers.__version__, "torch": torch.__version__}
    res = PipelineResult(images, record=record)
    if out_paths:
        res.paths, res.record_path = _write(images, out_paths, record, out)
    return res


def _nsfw(result) -> list | None:
    """The safety checker's verdict per image, where the pipeline has one (flagged images come back black)."""
    flags = getattr(result, "nsfw_content_detected", None)
    return None if flags is None else [bool(f) for f in flags]


def _out_paths(out: Any, n: int) -> list[Path]:
    """``out``: ``NAME.png`` (n > 1: ``NAME_0.png``...) or a folder (``0000.png``...). Checked before loading."""
    out = Path(out)
    if out.suffix.lower() == ".png":
        paths = [out] if n == 1 else [out.with_name(f"{out.stem}_{k}.png") for k in range(n)]
    elif out.suffix:
        raise ConfigError(f"--out must be NAME.png or a folder, got {out}")
    else:
        paths = [out / f"{k:04d}.png" for k in range(n)]
    parent = paths[0].parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"--out: {parent} is a file, not a folder")
    return paths


def _write(images: list, paths: list[Path], record: dict, out: Any) -> tuple[list[Path], Path]:
    """The PNGs, and the record beside them (``NAME.json``, or ``params.json`` in a folder)."""
    from ..utils import write_json

    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for img, p in zip(images, paths):
        img.save(p, format="PNG")
    out = Path(out)
    side = out.with_suffix(".json") if out.suffix.lower() == ".png" else out / "params.json"
    record["images"] = [str(p) for p in paths]
    write_json(side, record)
    return paths, side


# ------------------------------------------------------------------------------------------ inputs
def read_rgb(src: Any, what: str = "image"):
    """An input image as RGB PIL (paths, bytes, arrays, PIL images); a missing file is a DataError."""
    from ..data.images import open_image

    if isinstance(src, (str, Path)) and not Path(src).is_file():
        raise DataError(f"no such {what} file: {src}")
    return open_image(src).convert("RGB")


def fit_size(img, size: tuple[int, int] | None):
    """``img`` at ``size``, or at its own size rounded down to multiples of 8 (what the pipelines need)."""
    from PIL import Image

    w, h = size or (img.width // 8 * 8, img.height // 8 * 8)
    if w < 8 or h < 8:
        raise DataError(f"the image is {img.width}x{img.height}; it must be at least 8x8 pixels")
    return img if img.size == (w, h) else img.resize((w, h), Image.Resampling.BICUBIC)


def check_strength_steps(strength: Any, steps: int) -> None:
    """``strength`` in (0, 1], and enough ``steps`` that ``int(steps * strength)`` (what diffusers runs) is >= 1."""
    if not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ConfigError(f"--strength must be above 0 and at most 1, got {strength!r}")
    if int(steps * strength) < 1:
        need = int(-(-1 // strength))
        raise ConfigError(f"--strength {strength:g} with --steps {steps} leaves no denoising step "
                          f"(the pipeline runs int(steps * strength)); use --steps {need} or more, or a larger --strength")


def input_name(src: Any) -> str | None:
    """What the record says about an input image: its path, or None for an in-memory image."""
    return str(src) if isinstance(src, (str, Path)) else None
