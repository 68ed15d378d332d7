"""The task spec: everything that makes a task, in one object registered in one table (``tasks.TASKS``).

A task is a subclass of :class:`Task` that names its config class, its data kind, the metric that picks
the best checkpoint, its CLI ``predict`` flags, and supplies hooks: default recipe, LightningModule,
model card, evaluator, predictor, printing and service answers. The training skeleton
(``tasks/skeleton.py``), the CLI, ``recogen.train/load``, the service and the web page read everything
from the registered specs, so a new task is one module plus one :func:`~recogen.tasks.register_task`.

A spec module must import fast (no torch at import time): ``recogen --help`` builds its parser from the
specs. Heavy parts live in the task's other modules and are imported inside the hooks.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

from ..config import TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


@dataclass(frozen=True)
class Flag:
    """One ``predict`` option: the argparse flag and its keyword arguments. Its ``dest`` is also the
    keyword of the task's ``predict_files`` (``--save`` is the output folder, ``out_dir``)."""

    flag: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest", self.flag.lstrip("-").replace("-", "_"))


def positive_int(text: str) -> int:
    """argparse type of a whole number >= 1 (``predict`` flags such as ``--topk``)."""
    import argparse

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


class Task:
    """The spec of one task. Subclass it, set the class attributes, override the hooks that differ.

    The skeleton calls the training hooks in this order: :meth:`prepare_config`, :meth:`load_data`, :meth:`resolve_defaults`,
    :meth:`fit_data`, :meth:`describe_data`, :meth:`build_model`, :meth:`batches`, :meth:`build_module`,
    then fits, loads the best checkpoint, writes :meth:`card` with the weights, and :meth:`finish`
    (by default: evaluate on the test split, else val).
    """

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    noun: ClassVar[str] = "model"  # "a classifier": used in messages
    config: ClassVar[type[TrainConfig]] = TrainConfig
    data_kind: ClassVar[str] = "images"  # "images" (ImageSplits) or "dense" (boxes and masks: DenseSplits)
    monitor: ClassVar[str | None] = None  # validation metric that picks best.ckpt (None: the last epoch)
    mode: ClassVar[str] = "max"
    headline: ClassVar[str] = ""  # the metric named in the one-line summary after training
    reserve_s: ClassVar[float] = 2.0  # seconds a budgeted run keeps after training (saving, plots)
    predict_flags: ClassVar[tuple[Flag, ...]] = ()
    # Draws images instead of reading one: served as ``POST /v1/<task>`` with n/seed/class/format
    # parameters (its params_model), answered by its predictor's ``sample(n, seed, class_)`` and ``grid``.
    samples: ClassVar[bool] = False
    predictor: ClassVar[Any] = ""  # the task's Predictor class, or "module:Class" to import it when first used
    parts: ClassVar[tuple[str, ...]] = ()  # the task's heavy modules, searched by :func:`lazy_attr`

    def train(self, config: Any = None, callbacks: Iterable | None = None, **options: Any) -> Path:
        """Train this task (the skeleton, ``tasks/skeleton.py``); returns the run folder."""
        from .skeleton import train

        return train(self, config, callbacks, **options)

    # ------------------------------------------------------------------------------ training hooks
    def prepare_config(self, cfg: TrainConfig) -> TrainConfig:
        """The config before any data is loaded (e.g. a fixed channel count); by default unchanged."""
        return cfg

    def load_data(self, cfg: TrainConfig):
        """The splits to train on (``ImageSplits`` or ``DenseSplits`` as :attr:`data_kind` says)."""
        from .runs import data_options

        return self.create_splits(cfg.data, data_options(cfg))

    def create_splits(self, spec: str, opts):
        """The data set ``spec`` with ``opts``, of this task's data kind (training and evaluation)."""
        if self.data_kind == "dense":
            from ..data.dense import create_dense_dataset

            return create_dense_dataset(spec, opts)
        from ..data import create_dataset

        return create_dataset(spec, opts)

    def resolve_defaults(self, cfg: TrainConfig, splits) -> tuple[TrainConfig, list[str]]:
        """Replace every "auto"/None of ``cfg`` with a choice for the data; returns (config, reasons)."""
        raise NotImplementedError

    def fit_data(self, cfg: TrainConfig, splits):
        """The splits as the resolved config wants them (e.g. resized); by default unchanged."""
        return splits

    def classes(self, splits) -> list[str]:
        """The class names the model predicts (the card's ``classes``)."""
        return list(splits.classes)

    def describe_data(self, cfg: TrainConfig, splits) -> str:
        """The ``data ...`` line logged before training."""
        n_test = len(splits.test) if splits.test is not None else 0
        return (f"data {cfg.data}: {len(splits.train)} train / {len(splits.val)} val / {n_test} test, "
                f"{len(self.classes(splits))} classes, {cfg.image_size}x{cfg.image_size}x{cfg.channels}")

    def build_model(self, cfg: TrainConfig, splits) -> "nn.Module":
        """The configured network (registry name + ``--model-kwargs``), fresh or with given weights."""
        from .runs import create_model

        return create_model(cfg.model, cfg.model_kwargs, num_classes=len(self.classes(splits)), in_chans=cfg.channels,
                            image_size=cfg.image_size, pretrained=cfg.pretrained and not cfg.resume,
                            weights=None if cfg.resume else cfg.weights)

    def batches(self, cfg: TrainConfig, splits) -> tuple[Any, Any]:
        """``(training batches, validation batches)``; training batches re-seed per epoch."""
        from ..data.batches import EpochSeeded, TensorBatches

        train = EpochSeeded(TensorBatches(splits.train, cfg.batch_size, shuffle=True, drop_last=True, seed=cfg.seed))
        return train, TensorBatches(splits.val, max(256, cfg.batch_size))

    def build_module(self, model: "nn.Module", cfg: TrainConfig, splits, train_batches):
        """The LightningModule that trains ``model``."""
        raise NotImplementedError

    def card(self, cfg: TrainConfig, model: "nn.Module", splits) -> dict[str, Any]:
        """The model card (``model.json``) without the format/version fields the artifact adds."""
        card = {"task": self.name, "model": cfg.model, "model_kwargs": cfg.model_kwargs,
                "classes": self.classes(splits), "image_size": cfg.image_size, "in_chans": cfg.channels,
                "data": cfg.data}
        if hasattr(splits, "mean_std"):
            mean, std = splits.mean_std()
            card["normalize"] = {"mean": mean, "std": std}
        return card

    def finalize_model(self, model: "nn.Module", cfg: TrainConfig, splits) -> None:
        """After the best weights are loaded, before they are saved: fit what training does not (a
        VAE's sampling prior). Nothing by default."""

    def reserve(self, splits) -> tuple[float, float]:
        """What a budgeted run keeps for after training: (seconds, multiple of one validation pass)."""
        from .runs import eval_reserve

        return eval_reserve(splits, self.reserve_s)

    def finish(self, model: "nn.Module", card: dict[str, Any], splits, run: Path, cfg: TrainConfig) -> str:
        """After the weights are saved: evaluate on the test split (else val); returns the summary text."""
        split = "test" if splits.test is not None else "val"
        m = self.evaluate_model(model, card, splits.split(split), run, split, cfg.data)
        return self.summary(m)

    # ------------------------------------------------------------------------------------ evaluation
    def evaluate(self, run: str | Path, data: str | None = None, split: str | None = None, write: bool = True,
                 device: str = "cpu") -> dict[str, Any]:
        """Metrics of a trained run on a split of its data (test, else val) or of another data set; written
        into the run folder (``metrics.json``, ``metrics_<split>.json``, plots) when ``write``."""
        from .skeleton import evaluate

        return evaluate(self, run, data=data, split=split, write=write, device=device)

    def eval_channels(self, card: dict[str, Any]) -> int | None:
        """Channels to load another data set with (the model's)."""
        return card.get("in_chans")

    def evaluate_model(self, model, card: dict[str, Any], ds, run: Path | None, split: str, data: str,
                       has_test: bool | None = None) -> dict[str, Any]:
        """Metrics of ``model`` on one split ``ds``; writes them and the plots into ``run`` unless None."""
        raise NotImplementedError

    def summary(self, m: dict[str, Any]) -> str:
        """Short text of the headline metric, e.g. "test accuracy 0.9554"."""
        return f"{m['split']} {self.headline} {m[self.headline]:.4f}"

    def format_metrics(self, m: dict[str, Any]) -> str:
        """The human text ``recogen TASK eval`` prints."""
        return "\n".join(f"{k}: {v}" for k, v in m.items() if isinstance(v, (int, float, str)))

    # ------------------------------------------------------------------------------------ prediction
    def predictor_class(self) -> type:
        """The task's :class:`~recogen.tasks.predictor.Predictor` subclass (imported on first use)."""
        if isinstance(self.predictor, type):
            return self.predictor
        mod, _, attr = self.predictor.partition(":")
        return getattr(importlib.import_module(mod), attr)

    def load(self, path: str | Path, device: str = "cpu", backend: str = "torch", card: dict[str, Any] | None = None):
        """A predictor of a run folder or ``model.json`` (``card``: its card, if already read)."""
        return self.predictor_class().load(path, device=device, backend=backend, card=card)

    def predict_files(self, run: str | Path, files: Iterable[str | Path], out_dir: str | Path | None = None,
                      device: str = "cpu", backend: str = "torch", **kw: Any) -> list[dict[str, Any]]:
        """Predict image files (the CLI's ``predict``): JSON-able results, one per image. ``out_dir``:
        where tasks that draw their results save them (the ``--save`` flag)."""
        return self.load(run, device, backend).predict([str(f) for f in files], **kw)

    def predict_stream(self, run: str | Path, inputs: Iterable[str | Path], out: str | Path, **kw: Any) -> dict[str, Any] | None:
        """Predict image files and folders of any size into the JSON-lines file ``out`` (the CLI's
        ``predict --out``): DataLoader workers decode, Lightning runs the batches (``devices`` processes),
        one line per image is written as it comes, and a stopped run resumes. Needs the predictor's
        ``stream_batch`` hook; see :mod:`recogen.tasks.stream` for the options and the summary it returns."""
        from .stream import predict_stream

        return predict_stream(self, run, inputs, out, **kw)

    def format_lines(self, r: dict[str, Any]) -> list[str]:
        """What ``predict`` prints for one result."""
        return [f"{r.get('path', 'image')}: {r}"]

    # --------------------------------------------------------------------------------------- CLI
    def add_actions(self, actions, parser_class) -> bool:
        """Add this task's own CLI actions besides ``train``; return False to get the usual eval + predict."""
        return False

    # ----------------------------------------------------------------------------------- service
    def params_model(self) -> type | None:
        """The pydantic model of ``POST /v1/<task>``'s parameters, or None: not served that way."""
        return None

    def serve_prepare(self, predictor, image) -> tuple[Any, Any]:
        """Work done outside the model's lock (decode, resize): returns ``(predictor, image)`` for
        :meth:`serve_response`. By default nothing."""
        return predictor, image

    def serve_response(self, predictor, image, params) -> dict[str, Any]:
        """The JSON answer for one image: the CLI's ``predict --json`` result without "path"."""
        raise NotImplementedError

    def model_info(self, card: dict[str, Any]) -> dict[str, Any]:
        """Task-specific fields of ``GET /v1/models``."""
        return {}


def lazy_attr(package: str, parts: Iterable[str], name: str) -> Any:
    """``name`` from the first of ``package``'s submodules ``parts`` that defines it: a task package's
    ``__getattr__``, so its heavy modules load only when one of their names is used."""
    for part in parts:
        mod = importlib.import_module(f"{package}.{part}")
        if name in vars(mod):
            return vars(mod)[name]
    raise AttributeError(f"module {package!r} has no attribute {name!r}")
