"""recogen: train, evaluate, explain, export and serve deep vision models.

>>> import recogen
>>> run = recogen.train("classify", data="digits", epochs=3, out="runs/classify/digits")
>>> clf = recogen.load(run)
>>> clf.predict("some_digit.png")
>>> recogen.evaluate(run)["accuracy"]

Heavy libraries (torch, Lightning) are imported on first use, so importing recogen is instant.
"""
from __future__ import annotations

from typing import Any

from ._version import __version__


def train(task: str = "classify", config: Any = None, **options: Any):
    """Train a model for ``task``; ``options`` are config fields (``data``, ``model``, ``epochs``...).

    Returns the run folder (a ``pathlib.Path``).
    """
    from .tasks import get_task

    return get_task(task).train(config, **options)


def load(path: Any, device: str = "cpu", backend: str = "torch"):
    """Load a trained model from a run folder or ``model.json``; returns the task's predictor.

    ``backend="onnx"`` runs the run's ONNX export (``recogen export RUN``) with onnxruntime.
    """
    from .artifact import read_card
    from .tasks import get_task

    card = read_card(path)  # read once, passed down
    return get_task(card["task"]).load(path, device=device, backend=backend, card=card)


def evaluate(run: Any, **options: Any) -> dict[str, Any]:
    """Metrics of a trained run, as ``recogen TASK eval`` gives them; the task comes from the run's model card.

    ``options`` are that task's: ``data``, ``split``, ``write``, ``device`` (generate: ``features``, ``n``,
    ``seed``...). Returns the metrics dict (also written into the run folder unless ``write=False``).
    """
    from .artifact import read_card
    from .tasks import get_task

    return get_task(read_card(run)["task"]).evaluate(run, **options)


def explain(run: Any, images: Any, method: str = "gradcam", target: Any = None, layer: str | None = None,
            out: Any = None, device: str = "cpu") -> list:
    """Saliency maps of a classification run's predictions, as ``recogen explain`` makes them.

    ``method``: gradcam, gradcam++, eigencam, scorecam or integrated-gradients; ``target``: the class
    (name or index; default each image's top class); ``layer``: a module name (default per architecture);
    ``out``: a folder for ``NAME.METHOD.png`` overlays and ``NAME.METHOD.npy`` maps. Returns one
    :class:`recogen.saliency.api.Explanation` per image (``map`` in [0, 1], ``overlay``, ``top`` classes).

    >>> ex = recogen.explain("runs/classify/shapes", ["a.png"], method="gradcam")
    """
    from .saliency.api import explain as _explain

    return _explain(run, images, method=method, target=target, layer=layer, out=out, device=device)


def text2img(model: str, prompt: str, **options: Any):
    """Images from ``prompt`` with a published diffusers pipeline (Hub id or local folder), as
    ``recogen generate text2img`` makes them; ``options``: ``negative_prompt``, ``steps``, ``guidance``,
    ``seed``, ``n``, ``size``, ``out``, ``device``, ``dtype``, ``attention_slicing``, ``cpu_offload``.
    Returns a :class:`recogen.pipelines.PipelineResult` (PIL ``images``, ``paths``, ``record``).

    >>> recogen.text2img("stable-diffusion-v1-5/stable-diffusion-v1-5", "a red fox in snow", seed=1, out="fox.png")
    """
    from .pipelines.text_to_image import text2img as _run

    return _run(model, prompt, **options)


def img2img(model: str, image: Any, prompt: str, **options: Any):
    """``image`` moved towards ``prompt`` by a diffusers pipeline (``recogen edit img2img``); ``options`` as
    :func:`text2img` plus ``strength`` (0, 1]."""
    from .pipelines.image_to_image import img2img as _run

    return _run(model, image, prompt, **options)


def inpaint(model: str, image: Any, mask: Any, prompt: str, **options: Any):
    """The white region of ``mask`` repainted from ``prompt`` by a diffusers pipeline (``recogen edit inpaint
    MODEL IMAGE --mask MASK --prompt ...``); ``options`` as :func:`text2img` plus ``strength`` and
    ``keep_unmasked``. (Inpainting with a recogen run is :func:`recogen.edit.inpaint`.)"""
    from .pipelines.inpainting import inpaint as _run

    return _run(model, image, mask, prompt, **options)


def finetune_pipeline(model: str | None = None, data: Any = None, out: Any = None, **options: Any):
    """Fine-tune a diffusers pipeline (Hub id or folder) on a folder of images, as ``recogen generate finetune``
    does: LoRA adapters on the UNet's attention (``method="lora"``, default) or the whole UNet (``"full"``).
    ``options``: ``prompt``, ``method``, ``rank``, ``steps``, ``lr``, ``batch_size``, ``size``, ``seed``,
    ``checkpoint_every``, ``sample_prompt``, ``sample_steps``, ``device``, ``dtype``, ``resume``. Returns a
    :class:`recogen.pipelines.FinetuneResult` (``run``, ``record``, ``lora`` or ``pipeline``, ``samples``).

    >>> res = recogen.finetune_pipeline("models/sd15", "dog/", "runs/dog", prompt="a photo of sks dog", steps=400)
    >>> recogen.text2img("models/sd15", "a photo of sks dog on a beach", lora=res.run, out="beach.png")
    """
    from .pipelines.finetuning import finetune_pipeline as _run

    return _run(model, data, out, **options)


def zero_shot_classify(model: str, images: Any, labels: Any, **options: Any):
    """Classify ``images`` among ``labels`` with a CLIP-family model (``"clip:ID_OR_DIR"``), as ``recogen
    classify predict --model clip:... --labels ...``; ``options``: ``prompt_template``, ``topk``, ``device``.

    >>> recogen.zero_shot_classify("clip:openai/clip-vit-base-patch32", "cat.jpg", "cat,dog,car")["label"]
    """
    from .foundation import zero_shot_classify as _run

    return _run(model, images, labels, **options)


def zero_shot_detect(model: str, images: Any, labels: Any, **options: Any):
    """Boxes of the objects named by ``labels`` with OWL-ViT/OWLv2 (``"owl:ID_OR_DIR"``), as ``recogen detect
    predict --model owl:...``; ``options``: ``score_threshold``, ``prompt_template``, ``iou``, ``max_det``, ``device``."""
    from .foundation import zero_shot_detect as _run

    return _run(model, images, labels, **options)


def zero_shot_segment(model: str, images: Any, points: Any = None, boxes: Any = None, **options: Any):
    """The mask of what ``points`` (``"x,y;x,y"``) or ``boxes`` point at, with SAM (``"sam:ID_OR_DIR"``), as
    ``recogen segment predict --model sam:...``; ``options``: ``device``. Results hold a uint8 ``mask``."""
    from .foundation import zero_shot_segment as _run

    return _run(model, images, points=points, boxes=boxes, **options)


def create_model(name: str, **kwargs: Any):
    """Build a registered network by name (see :func:`list_models`)."""
    from .models import create_model as _create

    return _create(name, **kwargs)


def list_models(task: str | None = None) -> list[tuple[str, str]]:
    """``(name, description)`` of every registered model."""
    from .models import list_models as _list

    return _list(task)


def list_datasets() -> list[tuple[str, str]]:
    """``(name, description)`` of every registered data set."""
    from .data import list_datasets as _list

    return _list()


__all__ = ["__version__", "train", "load", "evaluate", "explain", "text2img", "img2img", "inpaint", "finetune_pipeline",
           "zero_shot_classify", "zero_shot_detect", "zero_shot_segment", "create_model", "list_models", "list_datasets"]
