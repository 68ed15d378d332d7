"""Vision Transformers from timm, with the patch size chosen for the input size."""
from __future__ import annotations

from ...errors import ModelError
from ..catalog import register_model
from ..weights import fetch_pretrained


def patch_size_for(image_size: int) -> int:
    """4 px patches up to 32 px, 8 up to 64, else 16: about 8x8 to 14x14 tokens."""
    return 4 if image_size <= 32 else 8 if image_size <= 64 else 16


def _vit(arch: str, label: str, *, num_classes, in_chans, image_size, pretrained, patch_size=None, **kw):
    import timm

    p = patch_size or patch_size_for(image_size)
    if image_size % p:
        raise ModelError(f"{label} with {p} px patches needs an image size divisible by {p}, got {image_size}; use --image-size {image_size // p * p or p}")
    make = lambda: timm.create_model(  # noqa: E731
        arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, img_size=image_size, patch_size=p, **kw
    )
    if not pretrained:
        return make()
    from ..sources import cache_file, hf_fast

    # Through the hub client's cache only when offline: a missing file fails at once, not after its retries.
    path = cache_file(f"timm:{arch}")
    return fetch_pretrained(f"{label} (timm {arch})", lambda: hf_fast(make, path), str(path))


@register_model("vit-tiny", task="classify", description="timm ViT-Tiny (5.7M), patch size chosen for the input")
def vit_tiny(*, num_classes, in_chans, image_size, pretrained=False, **kw):
    return _vit("vit_tiny_patch16_224", "vit-tiny", num_classes=num_classes, in_chans=in_chans, image_size=image_size, pretrained=pretrained, **kw)


@register_model("vit-small", task="classify", description="timm ViT-Small (22M), patch size chosen for the input")
def vit_small(*, num_classes, in_chans, image_size, pretrained=False, **kw):
    return _vit("vit_small_patch16_224", "vit-small", num_classes=num_classes, in_chans=in_chans, image_size=image_size, pretrained=pretrained, **kw)
