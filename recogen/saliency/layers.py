"""Which layer a CAM method looks at: a registry of architecture families, each with its default layer,
the layers worth suggesting, and (for transformers) how token outputs become a spatial grid.

Families are tried in registration order and the first whose ``matches`` accepts the network picks;
the generic "cnn" family (any network with a conv layer) comes last. A layer may be several modules
(``--layer A,B``): the method runs on each and their maps (each scaled to [0, 1] at the input size)
are averaged, as grad-cam does for several target layers. Detectors default to their feature
pyramid's levels that way: each box is predicted from one level. Matching is by structure, not by
class, so any timm ViT or torchvision ResNet wrapped the way recogen wraps them is recognised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


@dataclass(frozen=True)
class Family:
    """An architecture family: ``matches(model)``; ``default_layer(model)`` a module name;
    ``candidates(model)`` names to suggest when a layer name is wrong; ``reshape(model)`` the
    ``reshape_transform`` grad-cam needs for that family's layer outputs (None: they are (B, C, H, W))."""

    name: str
    matches: Callable[["nn.Module"], bool]
    default_layer: Callable[["nn.Module"], str]
    candidates: Callable[["nn.Module"], list[str]]
    reshape: Callable[["nn.Module"], Callable | None] = lambda model: None


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add a family; later registrations are tried after earlier ones (duplicate names are an error)."""
    if family.name in FAMILIES:
        raise ValueError(f"duplicate architecture family {family.name!r}")
    FAMILIES[family.name] = family
    return family


def family_of(model: "nn.Module") -> Family:
    """The first registered family that matches ``model``."""
    for fam in FAMILIES.values():
        if fam.matches(model):
            return fam
    raise ConfigError(f"no explainable layer found in {type(model).__name__} (no conv layer, not a ViT); "
                      "use --method integrated-gradients, which needs no layer")


@dataclass(frozen=True)
class Layer:
    """The resolved layer: its ``name`` in ``model.named_modules()`` (several joined by commas), the
    ``module`` (the first of ``modules``) and the ``reshape`` transform its outputs need."""

    name: str
    module: "nn.Module"
    reshape: Callable | None
    family: str
    modules: tuple = ()

    @property
    def parts(self) -> list[tuple[str, "nn.Module"]]:
        """``(name, module)`` of each module of the layer."""
        return list(zip(self.name.split(","), self.modules or (self.module,)))


def resolve_layer(model: "nn.Module", name: str | None = None) -> Layer:
    """The layer called ``name`` (default: the family's; ``A,B`` names several modules); an unknown name
    is a ConfigError naming a few valid ones."""
    fam = family_of(model)
    chosen = name if name is not None else fam.default_layer(model)
    modules = dict(model.named_modules())
    names = [n.strip() for n in chosen.split(",")] if chosen else [""]
    for n in names:
        if not n or n not in modules:
            few = fam.candidates(model)[-6:]
            raise ConfigError(f"no layer {n!r} in this {fam.name} network; try one of: {', '.join(few)} "
                              f"(default {fam.default_layer(model)})")
    return Layer(",".join(names), modules[names[0]], fam.reshape(model), fam.name, tuple(modules[n] for n in names))


def spatial_check(layer: Layer, output: Any, candidates: list[str], name: str | None = None) -> None:
    """Refuse a layer whose output (after its reshape) is not a (B, C, H, W) map: a CAM needs one
    (``name``: which module of a several-module layer gave ``output``)."""
    import torch

    name = layer.name if name is None else name
    out = output[0] if isinstance(output, (tuple, list)) else output
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape is not None and layer.reshape is not None:
        shape = tuple(layer.reshape(out).shape)  # a wrong token count is its own ConfigError
    if shape is None or len(shape) != 4:
        what = "a dict of maps (a pyramid's levels: name them, comma-separated)" if isinstance(out, dict) else \
            "outputs of shape " + str(shape) if shape else "no tensor"
        raise ConfigError(f"layer {name!r} gives {what}, not a spatial map; pick a conv layer, "
                          f"e.g. {', '.join(candidates[-4:])}")


# ------------------------------------------------------------------------------------ helpers
def conv_names(model: "nn.Module") -> list[str]:
    """Names of the network's 2-D conv layers, in order."""
    from torch import nn

    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def last_conv_stage(model: "nn.Module") -> str:
    """The output of the network's last conv layer after its norm and activation (the same stage, before
    any pooling): the last spatial map, at the best resolution a CAM gets there."""
    from torch import nn

    follow = (nn.BatchNorm2d, nn.GroupNorm, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Mish)
    named = list(model.named_modules())
    convs = [i for i, (_, m) in enumerate(named) if isinstance(m, nn.Conv2d)]
    i = convs[-1]
    while i + 1 < len(named) and isinstance(named[i + 1][1], follow):
        i += 1
    return named[i][0]


def _has_conv(model: "nn.Module") -> bool:
    return bool(conv_names(model))


def _is_cnn_rnn(model: "nn.Module") -> bool:
    from torch import nn

    return isinstance(getattr(model, "rnn", None), nn.RNNBase) and _has_conv(model)


# ------------------------------------------------------------------------------------- families
def _resnet_prefix(model: "nn.Module") -> str:
    """Where the torchvision ResNet sits: recogen wraps it as ``model.net``."""
    return "net." if hasattr(getattr(model, "net", None), "layer4") else ""


def _resnet_default(model: "nn.Module") -> str:
    # The last residual block's output (after the skip sum and ReLU), right before global pooling; its
    # last conv alone would miss the skip path.
    p = _resnet_prefix(model)
    layer4 = model.get_submodule(p + "layer4")
    return f"{p}layer4.{len(layer4) - 1}"


def _resnet_candidates(model: "nn.Module") -> list[str]:
    p = _resnet_prefix(model)
    return [f"{p}layer{k}" for k in (1, 2, 3)] + [_resnet_default(model)]


register_family(Family(
    "resnet",
    matches=lambda m: hasattr(m, "layer4") or hasattr(getattr(m, "net", None), "layer4"),
    default_layer=_resnet_default,
    candidates=_resnet_candidates,
))


def _vit_default(model: "nn.Module") -> str:
    # The last block's first norm (grad-cam's ViT recipe): the final norm after the blocks sees only
    # the class token's gradient, so its patch tokens would get no signal.
    return f"blocks.{len(model.blocks) - 1}.norm1"


def _vit_candidates(model: "nn.Module") -> list[str]:
    n = len(model.blocks)
    return [f"blocks.{k}.norm1" for k in range(max(0, n - 4), n)]


def tokens_to_grid(model: "nn.Module") -> Callable[["torch.Tensor"], "torch.Tensor"]:
    """grad-cam's ``reshape_transform`` for a timm ViT: (B, prefix + H*W, C) tokens -> (B, C, H, W).

    The prefix tokens (class token, register tokens: ``model.num_prefix_tokens``) are dropped and the
    grid is the patch embedding's (image size / patch size), not a fixed 14x14. (B, C, H, W) outputs
    (a conv layer such as ``patch_embed.proj``) pass through.
    """
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    gh, gw = model.patch_embed.grid_size

    def reshape(t: "torch.Tensor") -> "torch.Tensor":
        if t.ndim != 3:
            return t
        if t.shape[1] != prefix + gh * gw:
            raise ConfigError(f"ViT layer output has {t.shape[1]} tokens, not {prefix} prefix + {gh}x{gw} "
                              "patch tokens; pick a transformer block's layer, e.g. blocks.N.norm1")
        return t[:, prefix:].reshape(t.shape[0], gh, gw, t.shape[2]).permute(0, 3, 1, 2)

    return reshape


register_family(Family(
    "vit",
    matches=lambda m: hasattr(m, "blocks") and hasattr(m, "patch_embed"),
    default_layer=_vit_default,
    candidates=_vit_candidates,
    reshape=tokens_to_grid,
))

# CNN + RNN: the GRU reads the last conv stage row by row, so that stage is the last spatial map.
register_family(Family(
    "cnn-rnn",
    matches=_is_cnn_rnn,
    default_layer=last_conv_stage,
    candidates=conv_names,
))



# ------------------------------------------------------------------------- detectors, segmenters
def _is_detector(model: "nn.Module") -> bool:
    """A torchvision detector (FCOS, RetinaNet, Faster R-CNN, SSD; recogen's fcos-s is an FCOS)."""
    return all(hasattr(model, a) for a in ("transform", "backbone")) and (hasattr(model, "head") or hasattr(model, "roi_heads"))


def pyramid_levels(model: "nn.Module") -> list[str]:
    """The modules whose outputs are the feature maps a detector's head reads (its backbone's output
    levels, finest first), found by one forward pass of the backbone on a blank input: for each level,
    the outermost module that returned that very tensor. A level computed outside any module (the
    "pool" level of torchvision's FPN, a max-pool of the level above) is left out."""
    import torch

    size = int(model.transform.min_size[0])
    dev = next(model.parameters()).device
    seen: dict[int, str] = {}
    alive: list[torch.Tensor] = []  # every output kept, so that no id is reused during the pass
    hooks = []

    def hook(n: str, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            alive.append(out)
            seen[id(out)] = n  # the outermost module wins: an enclosing module's hook fires after its parts'

    for n, m in model.backbone.named_modules():
        if n:
            hooks.append(m.register_forward_hook(lambda mod, i, o, n=n: hook(n, o)))
    try:
        was = model.backbone.training
        model.backbone.eval()
        with torch.no_grad():
            levels = model.backbone(torch.zeros(1, 3, size, size, device=dev))
        model.backbone.train(was)
    finally:
        for h in hooks:
            h.remove()
    maps = list(levels.values()) if isinstance(levels, dict) else [levels]
    return [f"backbone.{seen[id(t)]}" for t in maps if id(t) in seen]


def _detector_candidates(model: "nn.Module") -> list[str]:
    return [n for n in conv_names(model) if n.startswith("backbone.")][-4:] + pyramid_levels(model)


def unpadded(model: "nn.Module") -> Callable | None:
    """A detector's ``reshape``: its transform pads the image to a multiple of ``size_divisible``, so a
    level map covers the padding too; crop it to the image (None when nothing is padded)."""
    t = model.transform
    size, div = int(t.min_size[0]), int(getattr(t, "size_divisible", 1) or 1)
    padded = -(-size // div) * div
    if padded == size or getattr(t, "fixed_size", None):
        return None

    def reshape(x: "torch.Tensor") -> "torch.Tensor":
        if not hasattr(x, "ndim") or x.ndim != 4:
            return x
        h, w = (max(1, round(n * size / padded)) for n in x.shape[-2:])
        return x[..., :h, :w]

    return reshape


register_family(Family(
    "detector",
    matches=_is_detector,
    default_layer=lambda m: ",".join(pyramid_levels(m)),
    candidates=_detector_candidates,
    reshape=unpadded,
))


def _is_unet(model: "nn.Module") -> bool:
    return all(hasattr(model, a) for a in ("stem", "down", "up", "head"))


register_family(Family(
    "unet",
    matches=_is_unet,
    # The last decoder stage, at full resolution, before the 1x1 class head; down.N is the bottleneck.
    default_layer=lambda m: f"up.{len(m.up) - 1}",
    candidates=lambda m: ["stem"] + [f"down.{i}" for i in range(len(m.down))] + [f"up.{i}" for i in range(len(m.up))],
))


def _is_tv_segmenter(model: "nn.Module") -> bool:
    net = getattr(model, "net", None)
    return hasattr(net, "backbone") and hasattr(net, "classifier")


def _tv_seg_candidates(model: "nn.Module") -> list[str]:
    return [f"net.backbone.{n}" for n, _ in model.net.backbone.named_children()]


register_family(Family(
    "tv-segmenter",
    matches=_is_tv_segmenter,
    # The backbone's last stage (grad-cam's segmentation tutorial: DeepLabV3's backbone.layer4).
    default_layer=lambda m: _tv_seg_candidates(m)[-1],
    candidates=_tv_seg_candidates,
))

# Any other conv network (seed-cnn, cnn-s...): the last conv stage, before pooling and the dense head.
register_family(Family("cnn", matches=_has_conv, default_layer=last_conv_stage, candidates=conv_names))
