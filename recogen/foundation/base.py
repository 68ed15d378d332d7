"""What the three foundation predictors share: loading through :mod:`.hf` (kept loaded for the next
call), and the :class:`~recogen.tasks.predictor.Predictor` conventions (one image -> a dict, a list ->
a list; a result of an image given as a path starts with its ``"path"``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Iterable

from ..errors import RunError
from ..tasks.predictor import Predictor
from . import hf

_LOADED: dict[tuple, "FoundationPredictor"] = {}  # the last loaded model (one: these can be large)


class FoundationPredictor(Predictor):
    """A published model ready to predict without training; subclasses name their transformers classes.

    ``model`` is the transformers model, ``processor`` its processor, ``card`` a small record of where
    it came from (``task``, ``model``, ``prefix``, ``device``; ``classes`` is empty: labels are given
    per call).
    """

    prefix: ClassVar[str] = ""
    what: ClassVar[str] = ""  # the capability, in messages ("zero-shot classification")
    model_class: ClassVar[str] = ""  # a transformers class name (an Auto class or the family's own)
    processor_class: ClassVar[str] = "AutoProcessor"

    def __init__(self, model: Any, processor: Any, card: dict[str, Any]):
        super().__init__(model, card, None)
        self.processor = processor
        self.device = card["device"]

    @classmethod
    def load(cls, ref: "str | Path | hf.Source", device: str = "auto", backend: str = "torch",
             card: dict[str, Any] | None = None):
        """Load ``ref`` (a Hub id or a local folder, without the ``prefix:``; or a resolved
        :class:`~.hf.Source`). Offline, a model that is neither a folder nor in the Hub cache fails at
        once with the command that fetches it."""
        if backend != "torch":
            raise RunError(f"{cls.prefix}: models run with torch only (no --backend {backend})")
        source = ref if isinstance(ref, hf.Source) else hf.resolve(str(ref), cls.prefix)
        device = hf.pick_device(device)
        key = (cls, source.location, device)
        if key not in _LOADED:
            import transformers

            _LOADED.clear()  # free the previous model before loading the next
            model, processor = hf.load(source, getattr(transformers, cls.model_class),
                                       getattr(transformers, cls.processor_class), device, cls.what)
            card = {"task": cls.task, "model": f"{cls.prefix}:{source.ref}", "prefix": cls.prefix,
                    "model_type": getattr(model.config, "model_type", None), "device": device, "classes": []}
            _LOADED[key] = cls(model, processor, card)
        return _LOADED[key]

    def predict_files(self, files: Iterable[str | Path], out_dir: str | Path | None = None,
                      **options: Any) -> list[dict]:
        """The CLI's ``predict``: JSON-able results for image files; ``out_dir`` where drawn results go."""
        return self.predict([str(f) for f in files], **options)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RunError(f"{self.prefix}: models are not evaluated this way; see `recogen {self.task} eval --help`")

    def inputs(self, **encoded: Any) -> dict[str, Any]:
        """A processor's output moved to the model's device."""
        return {k: v.to(self.device) if hasattr(v, "to") else v for k, v in encoded.items()}


def unique_stems(paths: Iterable[str | Path]) -> list[str]:
    """File stems for results written into one folder: a stem seen before gets _2, _3..."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = Path(p).stem
        k = seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if k == 1 else f"{stem}_{k}")
    return out
