"""Library model sources: ``tv:NAME`` (every torchvision classifier, and torchvision's detection and
segmentation builders for ``detect``/``segment``), ``timm:NAME`` (every timm model, classifiers) and
``hf:ID_OR_DIR`` (any Hugging Face image classifier through transformers, models/hf_source.py).

A source is one :class:`Source` in :data:`SOURCES` (a table, not an if-chain): how to list its names, which
task each one is for, build one for our classes and channels, find its classifier head and first conv,
read its published weights' preprocessing (mean, std, input size) and name the cache file its library
looks for. torchvision's detectors and segmenters are built by the same code as recogen's registered
ones (models/detectors/torchvision_detectors.py, models/segmenters/torchvision_seg.py).

>>> m = create_model("tv:resnet18", num_classes=10, in_chans=1, image_size=32)   # recogen.models
>>> list_source_models("timm", "*convnext*")[:2]
['convnext_atto', 'convnext_atto_ols']
"""
from __future__ import annotations

import fnmatch
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ModelError

from .parts import HEAD_ATTR, SOURCE_ATTR, STEM_ATTR


@dataclass(frozen=True)
class Source:
    """One model library: its prefix (``tv``), a description and the functions that use it."""

    prefix: str
    description: str
    names: Callable[[str | None, bool, str | None], list[str]]  # (filter, only_with_weights, task) -> sorted names
    task_of: Callable[[str], str | None]  # arch -> the task it trains for (classify, detect, segment); None: unknown
    build: Callable[..., Any]  # (arch, *, num_classes, in_chans, image_size, pretrained) -> nn.Module
    preprocessing: Callable[[str], dict[str, Any]]  # arch -> {"mean", "std", "input_size"} of its weights
    cache_file: Callable[[str], Path]  # arch -> where the library looks for its published weights
    canonical: Callable[[str], str] = str  # arch -> the form a run's card keeps (hf: a local folder made absolute)
    portable: Callable[[Any], dict[str, Any]] | None = None  # built model -> extra kwargs that rebuild it anywhere


SOURCES: dict[str, Source] = {}


def split_name(name: str) -> tuple[Source, str] | None:
    """``"tv:resnet18"`` -> (the tv source, "resnet18"); None for a name of our own registry."""
    prefix, sep, arch = name.partition(":")
    if not sep or prefix not in SOURCES:
        return None
    if not arch:
        raise ModelError(f"model {name!r} names no architecture; e.g. {prefix}:resnet18 (see `recogen models --source {prefix}`)")
    return SOURCES[prefix], arch


def get_source(prefix: str) -> Source:
    """The source ``prefix`` (tv or timm), or a ModelError naming the known ones."""
    if prefix not in SOURCES:
        raise ModelError(f"unknown model source {prefix!r}; choose one of {', '.join(SOURCES)}")
    return SOURCES[prefix]


def list_source_models(prefix: str, pattern: str | None = None, pretrained: bool = False,
                       task: str | None = None) -> list[str]:
    """Architectures of a library, filtered by a shell pattern (``*convnext*``); ``pretrained``: only
    those with published weights; ``task``: only those of one task (classify, detect, segment)."""
    return get_source(prefix).names(pattern, pretrained, task)


TASK_WORDS = {"classify": "classification", "detect": "detection", "segment": "segmentation"}


def source_task(name: str) -> str:
    """The task a ``tv:NAME``/``timm:NAME`` model trains for; an unknown (or refused) one is a ModelError."""
    source, arch = split_name(name)  # type: ignore[misc]
    task = source.task_of(arch)
    if task is None:
        raise ModelError(f"{source.prefix} has no model {arch!r}; list them with "
                         f"`recogen models --source {source.prefix} --filter '*{arch[:6]}*'`")
    return task


def build_source_model(name: str, *, num_classes: int, in_chans: int, image_size: int, pretrained: bool,
                       weights: str | Path | None = None, **kw: Any):
    """Build ``tv:NAME``/``timm:NAME`` for our classes and channels; ``weights``: a local state dict of
    the same architecture, loaded strictly except the classifier head."""
    source, arch = split_name(name)  # type: ignore[misc]
    task = source_task(name)
    build = {"detect": _tv_detector, "segment": _tv_segmenter}.get(task, source.build)
    model = build(arch, num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                  pretrained=pretrained and weights is None, **kw)
    setattr(model, SOURCE_ATTR, name)
    if weights is not None:
        from .weights import load_backbone_strict, read_state_dict

        sd = read_state_dict(weights)
        if task == "segment":  # torchvision's layout is the wrapped network's
            from .segmenters.torchvision_seg import load_published_layout

            load_published_layout(model, sd, str(weights))
        else:
            load_backbone_strict(model, sd, str(weights))
    return model


def _tv_detector(arch: str, **kw: Any):
    from .detectors.torchvision_detectors import build_tv_detector

    return build_tv_detector(arch, **kw)


def _tv_segmenter(arch: str, **kw: Any):
    from .segmenters.torchvision_seg import build_tv_segmenter

    return build_tv_segmenter(arch, **kw)


def canonical_name(name: str) -> str:
    """``name`` as a run's card keeps it: ``hf:./folder`` becomes ``hf:/abs/folder``; others unchanged."""
    found = split_name(name)
    return name if found is None else f"{found[0].prefix}:{found[0].canonical(found[1])}"


def portable_kwargs(name: str, model: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments a run's card keeps for ``name``: ``kwargs``, plus what the source needs to
    rebuild the architecture without the files it was built from (``hf:``: the model's config, so a run
    keeps working when the model folder moves or the run is copied to another machine)."""
    found = split_name(name)
    extra = found[0].portable(model) if found is not None and found[0].portable is not None else None
    return {**kwargs, **extra} if extra else dict(kwargs)


def preprocessing(name: str) -> dict[str, Any] | None:
    """Mean, std and input size of ``tv:``/``timm:`` published weights; None for our own models."""
    found = split_name(name)
    return None if found is None else found[0].preprocessing(found[1])


def cache_file(name: str) -> Path:
    """The file ``--pretrained`` reads for ``name`` (``tv:``/``timm:``), in its library's own cache."""
    found = split_name(name)
    if found is None:
        raise ModelError(f"{name!r} is not a library model; weights are cached for tv:NAME and timm:NAME models")
    return found[0].cache_file(found[1])


def _match(names: list[str], pattern: str | None) -> list[str]:
    return sorted(n for n in names if not pattern or fnmatch.fnmatchcase(n, pattern))


# ------------------------------------------------------------------------------------- torchvision
@functools.lru_cache(maxsize=1)
def _tv_by_task() -> dict[str, list[str]]:
    """torchvision's builders recogen trains, by task (detection: those that train on boxes and labels)."""
    import torchvision.models as tvm

    from .detectors.torchvision_detectors import trainable_detectors
    from .segmenters.torchvision_seg import trainable_segmenters

    # Classification builders are the top-level ones; detection/segmentation live in submodules.
    return {"classify": tvm.list_models(module=tvm), "detect": trainable_detectors(), "segment": trainable_segmenters()}


def _tv_names(pattern: str | None, pretrained: bool, task: str | None = None) -> list[str]:
    import torchvision.models as tvm

    names = [n for t, ns in _tv_by_task().items() if task in (None, t) for n in ns]
    if pretrained:
        names = [n for n in names if list(tvm.get_model_weights(n))]
    return _match(names, pattern)


def _tv_task(arch: str) -> str | None:
    """classify, detect or segment; Mask/Keypoint R-CNN are refused in one line saying why and what to use."""
    from .detectors.torchvision_detectors import refusal

    why = refusal(arch)
    if why:
        import torchvision.models as tvm

        if arch in tvm.list_models(module=tvm.detection):
            raise ModelError(f"tv:{arch} {why}")
    return next((t for t, ns in _tv_by_task().items() if arch in ns), None)


def _tv_weights(arch: str):
    import torchvision.models as tvm

    try:
        return tvm.get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError):
        raise ModelError(f"torchvision publishes no weights for {arch}; drop --pretrained or pass --weights PATH") from None


def _tv_cache_file(arch: str) -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(_tv_weights(arch).url).name


def _tv_preprocessing(arch: str) -> dict[str, Any] | None:
    """The published weights' normalisation (and classifiers' input size); None for a detector: torchvision's
    detectors normalise inside the model (their ``transform``), which the detect task's card records."""
    if _tv_task(arch) == "detect":
        return None
    t = _tv_weights(arch).transforms()
    pre: dict[str, Any] = {"mean": [float(v) for v in t.mean], "std": [float(v) for v in t.std]}
    if hasattr(t, "crop_size"):  # classification (segmentation weights have a resize size, not an input size)
        pre["input_size"] = int(t.crop_size[0])
    return pre


def _tv_head(net) -> str:
    """The qualified name of a torchvision classifier's output layer: the last Linear (or, as in
    SqueezeNet, 1x1 Conv2d) whose outputs are the classes (``fc``, ``classifier.3``, ``heads.head``)."""
    from torch import nn

    last = None
    for qual, mod in net.named_modules():
        if isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and qual.startswith("classifier")):
            last = qual
    if last is None:
        raise ModelError(f"cannot find the classifier layer of {type(net).__name__}")
    return last


def _tv_stem(net) -> str:
    from torch import nn

    return next(q for q, m in net.named_modules() if isinstance(m, nn.Conv2d))


def _set_module(root, qual: str, new) -> None:
    parent, _, leaf = qual.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def _tv_build(arch: str, *, num_classes: int, in_chans: int, image_size: int, pretrained: bool, **kw):
    import torchvision.models as tvm
    from torch import nn

    # Inception/GoogLeNet's auxiliary heads only train; without them the forward returns plain logits.
    if arch in ("googlenet", "inception_v3"):
        kw.setdefault("aux_logits", False)
        kw.setdefault("init_weights", True)
    # The weights first: offline, the error comes before any time is spent building the network.
    published = fetch_tv_state_dict(arch) if pretrained else None
    net = tvm.get_model(arch, weights=None, **kw)
    head, stem = _tv_head(net), _tv_stem(net)
    setattr(net, HEAD_ATTR, (head,))
    setattr(net, STEM_ATTR, stem)
    # Our classes: a fresh output layer (re-initialised: the published one knows other classes).
    out = net.get_submodule(head)
    if isinstance(out, nn.Linear):
        _set_module(net, head, nn.Linear(out.in_features, num_classes, bias=out.bias is not None))
    else:
        _set_module(net, head, nn.Conv2d(out.in_channels, num_classes, out.kernel_size, out.stride, bias=out.bias is not None))
    if in_chans != 3:
        c = net.get_submodule(stem)
        _set_module(net, stem, nn.Conv2d(in_chans, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation,
                                         c.groups, bias=c.bias is not None))
    if published is not None:
        from .weights import load_backbone_strict

        load_backbone_strict(net, published, f"torchvision's {arch} weights")
    return net


def fetch_tv_state_dict(arch: str):
    """torchvision's published state dict of ``arch`` through torch.hub's cache; offline and not cached:
    an OfflineError naming the file and the folder, within about a second."""
    from .weights import fetch_pretrained

    w = _tv_weights(arch)
    path = _tv_cache_file(arch)

    def fetch():
        if not path.is_file():  # torchvision reads a cached file without touching the network
            probe(w.url)
        return w.get_state_dict(progress=False, check_hash=not path.is_file())

    return fetch_pretrained(f"tv:{arch} ({w})", fetch, f"{path.parent} as {path.name}")


# -------------------------------------------------------------------------------------------- timm
def _timm_names(pattern: str | None, pretrained: bool, task: str | None = None) -> list[str]:
    import timm

    if task not in (None, "classify"):
        return []
    # Published weights come as tagged names ("convnext_atto.d2_in1k"); --pretrained takes the default tag.
    return _match(list({n.split(".")[0] for n in timm.list_models(pretrained=pretrained)}), pattern)


def _timm_cfg(arch: str):
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        raise ModelError(f"timm publishes no weights for {arch}; drop --pretrained or pass --weights PATH")
    return cfg


def _hf_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)  # what hf_hub_download reads (HF_HUB_CACHE / HF_HOME at import)


def _timm_cache_file(arch: str) -> Path:
    cfg = _timm_cfg(arch)
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id.split("@")[0]  # "timm/resnet10t.c3_in1k"
        # The hub cache's layout: refs/main names a snapshot folder that holds the file.
        return _hf_cache() / f"models--{repo.replace('/', '--')}" / "snapshots" / HF_IMPORT_REVISION / "model.safetensors"
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name


HF_IMPORT_REVISION = "recogen-import"  # the snapshot name `recogen weights import` gives a hand-copied file


def _timm_preprocessing(arch: str) -> dict[str, Any]:
    cfg = _timm_cfg(arch)
    return {"mean": [float(v) for v in cfg.mean], "std": [float(v) for v in cfg.std], "input_size": int(cfg.input_size[-1])}


def _timm_build(arch: str, *, num_classes: int, in_chans: int, image_size: int, pretrained: bool, **kw):
    import timm

    from .weights import fetch_pretrained

    # timm replaces the head for num_classes and folds the first conv's filters onto in_chans itself.
    make = lambda: timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kw)  # noqa: E731
    if pretrained:
        path = _timm_cache_file(arch)
        net = fetch_pretrained(f"timm:{arch}", lambda: hf_fast(make, path), str(path))
    else:
        net = make()
    cfg = net.pretrained_cfg or {}
    head = cfg.get("classifier") or "fc"
    setattr(net, HEAD_ATTR, tuple(head) if isinstance(head, (list, tuple)) else (head,))
    stem = cfg.get("first_conv")
    setattr(net, STEM_ATTR, (stem[0] if isinstance(stem, (list, tuple)) else stem) or _tv_stem(net))
    return net


def hf_fast(make: Callable[[], Any], path: Path):
    """``make()`` through huggingface_hub's cache; with no network (or ``HF_HUB_OFFLINE=1``) it reads
    only the cache, so that a missing file fails at once instead of after the hub client's retries."""
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE
    if not offline:
        try:
            probe(constants.ENDPOINT)
        except OSError:
            offline = True
    repo_dir = path.parents[2]
    if offline and not repo_dir.is_dir():
        raise OSError(f"offline and {repo_dir} is not in the cache")
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline
    try:
        return make()
    finally:
        constants.HF_HUB_OFFLINE = saved


def probe(url: str) -> None:
    """An OSError within about a second when ``url``'s host cannot be reached (no DNS, no route):
    the libraries' own clients retry with back-off for a minute before giving up."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    timeout = float(os.environ.get("RECOGEN_PROBE_TIMEOUT", "1"))
    with socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=timeout):
        pass


def _timm_task(arch: str) -> str | None:
    import timm

    return "classify" if timm.is_model(arch) else None


def _hf(fn: str) -> Callable[..., Any]:
    """``hf_source.<fn>``, imported on first call (it loads torch; listing the sources must not)."""
    def call(*args: Any, **kw: Any) -> Any:
        from . import hf_source

        return getattr(hf_source, fn)(*args, **kw)

    return call


# timm names may carry a weights tag ("convnext_atto.d2_in1k"): the architecture is the part before the dot.
SOURCES["tv"] = Source("tv", "every torchvision classification, detection and segmentation model", _tv_names,
                       lambda a: _tv_task(a.split(".")[0]), _tv_build, _tv_preprocessing, _tv_cache_file)
SOURCES["timm"] = Source("timm", "every timm model", _timm_names, lambda a: _timm_task(a.split(".")[0]), _timm_build,
                         _timm_preprocessing, _timm_cache_file)
SOURCES["hf"] = Source("hf", "any Hugging Face image classifier (transformers), by Hub id or local folder", _hf("_names"),
                       _hf("_task"), _hf("_build"), _hf("_preprocessing"), _hf("_cache_file"), _hf("_canonical"),
                       _hf("_portable"))


# ------------------------------------------------------------------- placing hand-copied weight files
def import_weights(path: str | Path, name: str) -> Path:
    """Check that ``path`` (a .pth/.pt/.safetensors state dict) holds the published layout of ``name``
    (``tv:NAME``/``timm:NAME``, 1000-class head and all) and copy it where its library's ``--pretrained``
    looks, so that it then loads offline; returns the file written."""
    import torch

    from ..utils import atomic_write
    from .weights import read_state_dict

    found = split_name(name)
    if found is None:
        raise ModelError(f"--model {name!r}: weights are imported for tv:NAME or timm:NAME models (see `recogen models --source tv`)")
    source, arch = found
    if source.prefix == "hf":  # the Hub's own tool copies whole model folders
        raise ModelError(f"hf: models need no import: copy the folder (`hf download {arch} --local-dir DIR`) and pass "
                         f"--model hf:DIR, or fill the cache with `hf download {arch}`")
    source_task(name)  # an unknown (or refused) architecture is one line here
    sd = read_state_dict(path)
    ref = _published_layout(source.prefix, arch)
    # BatchNorm counters are optional: torchvision saved its detectors from FrozenBatchNorm2d, which has none.
    counter = lambda k: k.endswith("num_batches_tracked")  # noqa: E731
    missing = sorted(k for k in set(ref) - set(sd) if not counter(k))
    unexpected = sorted(k for k in set(sd) - set(ref) if not counter(k))
    wrong = sorted(k for k in set(ref) & set(sd) if tuple(ref[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        raise ModelError(f"{path} is not {name}'s published weights: {len(missing)} missing keys "
                         f"({', '.join(missing[:3]) or '-'}), {len(unexpected)} unexpected keys "
                         f"({', '.join(unexpected[:3]) or '-'}), {len(wrong)} of another shape ({', '.join(wrong[:3]) or '-'})")
    dest = source.cache_file(arch)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.suffix == ".safetensors":
        from safetensors.torch import save_file

        atomic_write(dest, lambda tmp: save_file({k: v.contiguous() for k, v in sd.items()}, tmp))
        repo_dir = dest.parents[2]  # the hub cache resolves the "main" revision through refs/main
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(HF_IMPORT_REVISION)
    else:
        atomic_write(dest, lambda tmp: torch.save(sd, tmp))  # torchvision's own format: a plain state dict
    return dest


def _published_layout(prefix: str, arch: str) -> dict[str, Any]:
    """The state dict (names and shapes) of ``arch`` as its library publishes it, built without weights."""
    if prefix == "tv":
        import torchvision.models as tvm

        _tv_weights(arch)  # an architecture without published weights is an error here
        task = _tv_task(arch)
        if task == "detect":
            from .detectors.torchvision_detectors import published_layout

            return published_layout(arch)
        if task == "segment":
            from .segmenters.torchvision_seg import published_layout as seg_layout

            return seg_layout(arch)
        kw = {"aux_logits": True, "init_weights": False} if arch in ("googlenet", "inception_v3") else {}
        return tvm.get_model(arch, weights=None, **kw).state_dict()
    import timm

    _timm_cfg(arch)
    return timm.create_model(arch, pretrained=False).state_dict()


def list_cached() -> list[dict[str, Any]]:
    """The published weight files in torch.hub's and the Hugging Face hub's caches: model, file, MB."""
    import torch

    rows = []
    tv_dir = Path(torch.hub.get_dir()) / "checkpoints"
    if tv_dir.is_dir():
        by_file = {}
        for arch in _tv_names(None, True, None):
            by_file[Path(_tv_weights(arch).url).name] = f"tv:{arch}"
        for f in sorted(tv_dir.iterdir()):
            if f.is_file():
                rows.append({"model": by_file.get(f.name, "?"), "file": str(f), "mb": round(f.stat().st_size / 2**20, 1)})
    hf = _hf_cache()
    if hf.is_dir():
        for repo in sorted(hf.glob("models--timm--*")):
            for f in sorted(repo.glob("snapshots/*/*")):
                if f.name.endswith((".safetensors", ".bin", ".pth")):
                    arch = repo.name[len("models--timm--"):].split(".")[0]
                    rows.append({"model": f"timm:{arch}", "file": str(f), "mb": round(f.stat().st_size / 2**20, 1)})
    return rows
