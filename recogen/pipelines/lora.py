"""LoRA adapters loaded onto a pipeline (``--lora RUN``): a ``recogen generate finetune`` run folder, any
folder holding diffusers' ``pytorch_lora_weights.safetensors``, or one ``.safetensors`` file.
:func:`lora_file` checks the path without importing anything heavy; :func:`apply_lora` loads it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelError

LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' save_lora_weights writes and looks for
ADAPTER = "lora"


def lora_file(ref: Any) -> Path:
    """The LoRA weights file that ``ref`` (a folder or a ``.safetensors`` file) names."""
    path = Path(ref).expanduser()
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ConfigError(f"--lora {ref}: expected a .safetensors file or a folder holding {LORA_FILE}")
        return path
    if path.is_dir():
        if (path / LORA_FILE).is_file():
            return path / LORA_FILE
        if (path / "pipeline" / "model_index.json").is_file():
            raise ConfigError(f"--lora {ref} is a full fine-tuning run (no adapters): pass --model {path / 'pipeline'} "
                              "instead")
        raise ConfigError(f"--lora {ref}: no {LORA_FILE} in this folder; pass a `recogen generate finetune` run "
                          "(--method lora) or the adapters' .safetensors file")
    raise ConfigError(f"--lora {ref}: no such file or folder")


def check_scale(scale: Any) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not -10 <= scale <= 10:
        raise ConfigError(f"--lora-scale must be a number from -10 to 10, got {scale!r}")
    return float(scale)


def apply_lora(pipe, file: Path, scale: float, model: str) -> None:
    """Load the adapters in ``file`` onto ``pipe`` at strength ``scale``; weights made for another
    model family (other layer names or shapes) are a ModelError, not a traceback."""
    try:
        pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=ADAPTER)
        if scale != 1.0:
            pipe.set_adapters([ADAPTER], adapter_weights=[scale])
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"cannot load the LoRA weights {file} onto {model} ({first}); adapters fit only the model "
                         "family they were trained on") from None
