"""Device, precision and memory for diffusers pipelines.

* ``device``: ``auto`` is the first GPU (CUDA, else Apple MPS), else the CPU.
* ``dtype``: ``auto`` is fp16 on a GPU (what Stable Diffusion checkpoints are published and run in)
  and fp32 on the CPU (fp16 matrix products are slow or missing there; bf16 is allowed when asked for).
* Before loading, the weights' size (read from the safetensors headers, no tensor is read) is compared
  with the memory the device has free, so a model too large for the machine is refused with the
  options that would make it fit instead of ending in an out-of-memory crash half-way.
* ``attention_slicing`` and ``cpu_offload`` are diffusers' own memory savers; offload needs accelerate.
"""
from __future__ import annotations

import importlib.util
import json
import os
import struct
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelError

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# safetensors dtype names -> bytes per value (to count parameters from a file's header)
ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
HEADROOM = 1.25  # weights are not all of it: activations, the scheduler and the VAE decode need room too
MEMORY_HINT = "try --dtype fp16 (GPU) or bf16 (CPU), --attention-slicing, --cpu-offload, a smaller --size or --n"


def pick_device(device: str = "auto") -> str:
    """``auto`` -> cuda, mps or cpu; anything else is checked against what torch can use."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    kind = device.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA GPU is visible to torch here; use --device cpu (or auto)")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {device}: Apple MPS is not available here; use --device cpu (or auto)")
    if kind not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    return device


def pick_dtype(dtype: str, device: str) -> str:
    """The torch dtype name for ``dtype`` (auto|fp32|fp16|bf16) on ``device``."""
    if dtype == "auto":
        return "float32" if device == "cpu" else "float16"
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be auto, fp32, fp16 or bf16, got {dtype!r}")
    if dtype == "fp16" and device == "cpu":
        raise ConfigError("--dtype fp16 needs a GPU (half-precision kernels are missing or slow on the CPU); "
                          "use --dtype bf16 or fp32 on the CPU")
    return DTYPES[dtype]


def check_offload(cpu_offload: bool, device: str) -> None:
    """``--cpu-offload`` keeps weights in CPU memory and moves each part to the GPU when it runs."""
    if not cpu_offload:
        return
    if device == "cpu":
        raise ConfigError("--cpu-offload moves the model's parts to a GPU as they run; with --device cpu there is "
                          "nothing to offload to (drop --cpu-offload)")
    if importlib.util.find_spec("accelerate") is None:
        raise ConfigError("--cpu-offload needs the accelerate package: pip install accelerate "
                          "(or pip install 'recogen[large]')")


# ------------------------------------------------------------------------------------------ memory
def weight_params(folder: Path) -> dict[str, int]:
    """Parameters per component folder (``unet``, ``vae``...) counted from the safetensors headers.
    Variant files (``*.fp16.safetensors``) are used only when a component has no plain file."""
    out: dict[str, int] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(sub.glob("*.safetensors"))
        plain = [f for f in files if len(f.name.split(".")) == 2]
        n = sum(_safetensors_params(f) for f in (plain or files[:1]))
        if n:
            out[sub.name] = n
    return out


def _safetensors_params(path: Path) -> int:
    """Number of values in a safetensors file, from its JSON header (the first 8 bytes give its length)."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return 0
    total = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = t["data_offsets"]
        total += (end - start) // ST_BYTES.get(t["dtype"], 4)
    return total


def free_memory(device: str) -> int | None:
    """Bytes free on ``device`` (GPU memory, or the CPU's available RAM); None if unknown."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(folder: Path | None, device: str, dtype: str, cpu_offload: bool, ref: str) -> dict[str, Any]:
    """Refuse a model whose weights (at ``dtype``) plus headroom exceed the free memory of ``device``.
    With offload only the largest part has to fit on the GPU. Returns the estimate (for the JSON record)."""
    if folder is None or not folder.is_dir():
        return {}
    params = weight_params(folder)
    if not params:
        return {}
    per = BYTES[dtype]
    need_all = sum(params.values()) * per
    need = max(params.values()) * per if cpu_offload else need_all
    free = free_memory(device)
    est = {"weights_bytes": need_all}
    if free is not None and need * HEADROOM > free:
        where = "GPU memory" if device.startswith("cuda") else "free memory"
        raise ModelError(f"{ref} needs about {need * HEADROOM / 2**30:.1f} GiB at {dtype} ({need_all / 2**30:.1f} GiB of "
                         f"weights) and this machine has {free / 2**30:.1f} GiB of {where}; {MEMORY_HINT}")
    return est


def is_out_of_memory(e: BaseException) -> bool:
    """An allocation failure of torch (GPU or CPU), whatever its exception class."""
    import torch

    if isinstance(e, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(e)
    return isinstance(e, (RuntimeError, MemoryError)) and (
        isinstance(e, MemoryError) or "out of memory" in text or "can't allocate memory" in text)
