"""Model registry and builders: shapes, feature/head split, input-size checks, weights, offline errors."""
from __future__ import annotations


import pytest
import torch

from recogen.errors import ModelError, OfflineError
from recogen.models import create_model, list_models
from recogen.registry import Registry

CLASSIFIERS = [n for n, _ in list_models("classify")]


def test_all_required_classifiers_are_registered():
    assert {"seed-cnn", "resnet18", "resnet34", "resnet50", "vit-tiny", "vit-small", "cnn-rnn"} <= set(CLASSIFIERS)


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("chans,size", [(1, 28), (3, 32), (3, 64)])
def test_builds_and_splits_into_features_and_head(name, chans, size):
    torch.manual_seed(0)
    m = create_model(name, num_classes=7, in_chans=chans, image_size=size).eval()
    x = torch.randn(2, chans, size, size)
    with torch.no_grad():
        out = m(x)
        assert out.shape == (2, 7)
        assert torch.allclose(out, m.forward_head(m.forward_features(x)), atol=1e-5)


def test_resnet_uses_a_small_stem_below_64_px():
    small = create_model("resnet18", num_classes=10, in_chans=1, image_size=32)
    big = create_model("resnet18", num_classes=10, in_chans=1, image_size=64)
    assert small.net.conv1.kernel_size == (3, 3) and isinstance(small.net.maxpool, torch.nn.Identity)
    assert big.net.conv1.kernel_size == (7, 7) and big.net.conv1.in_channels == 1


def test_vit_patch_size_follows_the_input():
    assert create_model("vit-tiny", num_classes=3, in_chans=3, image_size=32).patch_embed.patch_size == (4, 4)
    assert create_model("vit-tiny", num_classes=3, in_chans=3, image_size=64).patch_embed.patch_size == (8, 8)


@pytest.mark.parametrize("name,size,msg", [("seed-cnn", 4, "at least 8 px"), ("vit-tiny", 30, "divisible by 4"),
                                           ("cnn-rnn", 2, "at least 4 px")])
def test_impossible_input_sizes_are_clear_errors(name, size, msg):
    with pytest.raises(ModelError, match=msg):
        create_model(name, num_classes=10, in_chans=1, image_size=size)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ModelError, match="Did you mean resnet18"):
        create_model("resnet19", num_classes=10)


def test_duplicate_registration_is_an_error():
    reg = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="duplicate"):
        reg.register("a")(lambda: 2)


@pytest.mark.parametrize("name", ["resnet18", "vit-tiny"])
def test_pretrained_offline_fails_with_where_to_put_the_file(offline, name):
    with pytest.raises(OfflineError, match="--weights PATH"):
        create_model(name, num_classes=10, in_chans=3, image_size=64, pretrained=True)


def test_models_without_published_weights_say_so():
    with pytest.raises(ModelError, match="no published pretrained weights"):
        create_model("seed-cnn", num_classes=10, in_chans=1, image_size=28, pretrained=True)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_local_weights_load_exactly(tmp_path, fmt):
    torch.manual_seed(0)
    src = create_model("cnn-s", num_classes=10, in_chans=1, image_size=28).eval()
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(src.state_dict(), str(path))
    else:
        torch.save(src.state_dict(), path)
    torch.manual_seed(1)
    dst = create_model("cnn-s", num_classes=10, in_chans=1, image_size=28, weights=path).eval()
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(src(x), dst(x))


def test_weights_with_another_head_load_the_body_and_warn(tmp_path):
    src = create_model("cnn-s", num_classes=10, in_chans=1, image_size=28)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    with pytest.warns(UserWarning, match="not loaded"):
        dst = create_model("cnn-s", num_classes=4, in_chans=1, image_size=28, weights=tmp_path / "w.pt")
    assert torch.equal(dst.features[0].weight, src.features[0].weight)


def test_bad_weights_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read weights"):
        create_model("cnn-s", num_classes=10, in_chans=1, image_size=28, weights=tmp_path / "junk.pt")
    with pytest.raises(ModelError, match="not found"):
        create_model("cnn-s", num_classes=10, in_chans=1, image_size=28, weights=tmp_path / "none.pt")
    torch.save(create_model("resnet18", num_classes=10).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ModelError, match="another architecture"):
        create_model("cnn-s", num_classes=10, in_chans=1, image_size=28, weights=tmp_path / "other.pt")
