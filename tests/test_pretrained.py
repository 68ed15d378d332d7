"""Library models (tv:NAME, timm:NAME), their published weights offline, strict --weights loading, and
fine-tuning (--freeze-backbone, --unfreeze-at, backbone learning rate). Tiny models, 32 px, offline."""
from __future__ import annotations

import time

import pytest
import torch

from recogen.errors import ModelError, OfflineError
from recogen.models import create_model


# ------------------------------------------------------------------------------- (1) build and list
@pytest.mark.parametrize("name,head", [("tv:resnet18", "fc"), ("tv:mobilenet_v3_small", "classifier.3"),
                                       ("timm:test_resnet", "fc"), ("timm:test_efficientnet", "classifier")])
def test_library_names_build_for_our_classes_and_channels(name, head):
    m = create_model(name, num_classes=7, in_chans=1, image_size=32).eval()
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    assert m.recogen_head == (head,)


def test_library_names_list_with_a_filter():
    from recogen.models.sources import list_source_models

    tv = list_source_models("tv", "resnet*")
    assert "resnet18" in tv and "mobilenet_v3_small" not in tv
    assert "convnext_atto" in list_source_models("timm", "*convnext*")
    with pytest.raises(ModelError, match="unknown model source"):
        list_source_models("keras")


def test_unknown_library_architecture_is_one_clear_error():
    with pytest.raises(ModelError, match="recogen models --source tv"):
        create_model("tv:resnet19", num_classes=3, in_chans=3, image_size=32)


def test_models_source_listing_prints_prefixed_names(capsys):
    import argparse

    from recogen.cli_weights import print_source_models

    print_source_models(argparse.Namespace(source="timm", filter="test_res*", pretrained=False, json=False))
    assert capsys.readouterr().out.split() == ["timm:test_resnet"]


# ------------------------------------------------------------------ (2) a "pretrained" file, offline
def _published_like(tmp_path, arch="test_resnet", seed=0, fmt="pth", steps=3):
    """A timm model's state dict saved as timm publishes it (1000-class head), after a few training
    steps on shapes so that it is not its initialisation."""
    import timm

    from recogen.data import DataOptions, create_dataset

    torch.manual_seed(seed)
    net = timm.create_model(arch, num_classes=1000)
    ds = create_dataset(f"shapes:{max(128, steps * 4)}", DataOptions(image_size=32, channels=3, seed=seed)).train
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3 if steps <= 3 else 3e-3)
    x, y = ds.images.float().div(255).sub(0.5).div(0.25), ds.labels
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=g) if steps > 3 else slice(None)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    path = tmp_path / f"{arch}.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(net.state_dict(), str(path))
    else:
        torch.save(net.state_dict(), path)
    return path, net.state_dict()


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_weights_file_loads_strictly_with_a_new_head(tmp_path, fmt):
    path, sd = _published_like(tmp_path, fmt=fmt)
    m = create_model("timm:test_resnet", num_classes=10, in_chans=1, image_size=32, weights=path)
    own = m.state_dict()
    assert torch.equal(own["layer1.0.conv1.weight"], sd["layer1.0.conv1.weight"])
    assert torch.equal(own["bn1.running_mean"], sd["bn1.running_mean"])
    # grayscale: the RGB filters of the first conv are summed onto one channel
    assert torch.allclose(own["conv1.0.weight"], sd["conv1.0.weight"].sum(1, keepdim=True))
    assert own["fc.weight"].shape == (10, sd["fc.weight"].shape[1])  # the head is ours, re-initialised


def test_weights_of_another_architecture_are_refused_in_one_line(tmp_path, capsys):
    from conftest import assert_one_line, main_in_process

    path, _ = _published_like(tmp_path, arch="test_efficientnet")
    with pytest.raises(ModelError, match=r"missing keys \(.*\), \d+ unexpected keys \(") as e:
        create_model("timm:test_resnet", num_classes=10, in_chans=3, image_size=32, weights=path)
    assert "\n" not in str(e.value)
    rc, _, err = main_in_process(capsys, "classify", "train", "--data", "digits", "--limit", "64", "--image-size", "32",
                                 "--model", "timm:test_resnet", "--weights", path, "--epochs", "1",
                                 "--out", tmp_path / "run", "--no-progress")
    assert_one_line(rc, err, "missing keys", "unexpected keys")


# ------------------------------------------------------------------------ (5) offline --pretrained
@pytest.mark.parametrize("name,where", [("tv:mobilenet_v3_small", "checkpoints"), ("timm:test_resnet", "models--timm--test_resnet")])
def test_pretrained_offline_fails_fast_naming_the_cache(offline, name, where):
    create_model(name, num_classes=3, in_chans=3, image_size=32)  # imports warm: time only the loading
    t = time.perf_counter()
    with pytest.raises(OfflineError) as e:
        create_model(name, num_classes=3, in_chans=3, image_size=32, pretrained=True)
    assert time.perf_counter() - t < 1.0
    assert where in str(e.value) and str(offline) in str(e.value) and "--weights PATH" in str(e.value)


# ---------------------------------------------------------- (6) import a hand-copied file, then use it
def test_weights_import_makes_pretrained_work_offline(offline, capsys):
    import argparse

    import torchvision

    from recogen.cli_weights import cmd_import, cmd_list

    published = torchvision.models.get_model("mobilenet_v3_small").state_dict()
    path = offline / "copied.pth"
    torch.save(published, path)
    cmd_import(argparse.Namespace(path=str(path), model="tv:mobilenet_v3_small"))
    where = offline / "torch" / "hub" / "checkpoints"
    assert [f.name for f in where.iterdir() if f.suffix == ".pth"] == ["mobilenet_v3_small-047dcff4.pth"]
    m = create_model("tv:mobilenet_v3_small", num_classes=4, in_chans=3, image_size=32, pretrained=True)
    assert torch.equal(m.state_dict()["features.1.block.0.0.weight"], published["features.1.block.0.0.weight"])
    cmd_list(argparse.Namespace(json=False))
    assert "tv:mobilenet_v3_small" in capsys.readouterr().out
    with pytest.raises(ModelError, match="not tv:resnet18's published weights: .* missing keys"):
        cmd_import(argparse.Namespace(path=str(path), model="tv:resnet18"))


def test_timm_import_is_read_from_the_hub_cache_offline(offline):
    from recogen.models.sources import import_weights

    path, sd = _published_like(offline, fmt="safetensors")
    import_weights(path, "timm:test_resnet")
    m = create_model("timm:test_resnet", num_classes=5, in_chans=3, image_size=32, pretrained=True)
    assert torch.equal(m.state_dict()["layer1.0.conv1.weight"], sd["layer1.0.conv1.weight"])


# ------------------------------------------------------------------------------- (4) freezing
def _train(tmp_path, name, weights, **over):
    from recogen.tasks import classify

    opts = dict(data="digits", limit=128, image_size=32, channels=3, model="timm:test_resnet",
                weights=None if weights is None else str(weights),
                epochs=1, batch_size=64, out=str(tmp_path / name), progress=False, seed=0, precision="32-true")
    return classify.train(**{**opts, **over})


def _backbone_and_head(run, sd):
    from recogen.models.weights import read_state_dict

    got = read_state_dict(run / "checkpoints" / "last.ckpt")  # the last epoch's (best.ckpt may be an earlier one)
    same = {k: torch.equal(got[k], sd[k]) for k in sd if not k.startswith("fc.")}
    return same, got


def test_freeze_backbone_keeps_weights_and_bn_stats_until_unfreeze_at(tmp_path):
    path, sd = _published_like(tmp_path)
    frozen = _train(tmp_path, "frozen", path, freeze_backbone=True)
    same, got = _backbone_and_head(frozen, sd)
    assert all(same.values()), [k for k, v in same.items() if not v][:5]  # weights and running stats alike
    assert not torch.equal(got["fc.weight"][:, :4], torch.zeros_like(got["fc.weight"][:, :4]))
    thawed = _train(tmp_path, "thawed", path, freeze_backbone=True, unfreeze_at=1, epochs=2)
    same, _ = _backbone_and_head(thawed, sd)
    assert not same["layer1.0.conv1.weight"] and not same["bn1.running_mean"]


def test_unfreeze_at_needs_freeze_backbone():
    from recogen.config import ClassifyConfig
    from recogen.errors import ConfigError

    with pytest.raises(ConfigError, match="--unfreeze-at 2 needs --freeze-backbone"):
        ClassifyConfig(unfreeze_at=2)
    with pytest.raises(ConfigError, match="backbone-lr-mult"):
        ClassifyConfig(backbone_lr_mult=-1.0)


def test_param_groups_give_the_backbone_a_smaller_rate():
    from recogen.tasks.finetune import param_groups

    m = create_model("timm:test_resnet", num_classes=3, in_chans=3, image_size=32)
    groups = {g["name"]: g for g in param_groups(m, 1e-3, 0.1)}
    assert groups["backbone"]["lr"] == pytest.approx(1e-4) and groups["head"]["lr"] == 1e-3
    assert {id(p) for p in groups["head"]["params"]} == {id(m.fc.weight), id(m.fc.bias)}


def test_freeze_state_follows_the_epoch_after_resume(tmp_path):
    import lightning.pytorch as pl

    seen: list[tuple[int, bool, bool]] = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, module, *a):
            if len(seen) == trainer.current_epoch:  # once per epoch: (epoch, conv trains, BN trains)
                m = module.model
                seen.append((trainer.current_epoch, m.layer1[0].conv1.weight.requires_grad, m.bn1.training))

        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 1 and not trainer.ckpt_path:  # epoch 0's checkpoint is saved by now
                raise KeyboardInterrupt

    path, _ = _published_like(tmp_path)
    opts = dict(freeze_backbone=True, unfreeze_at=2, epochs=3, limit=64)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "run", path, **opts, callbacks=[Watch()])
    _train(tmp_path, "run", path, **opts, resume=True, callbacks=[Watch()])
    assert seen == [(0, False, False), (1, False, False), (2, True, True)]


def test_cli_lists_sources_and_imports_weights(offline, capsys):
    import torchvision
    from conftest import assert_one_line, main_in_process

    rc, out, _ = main_in_process(capsys, "models", "--source", "timm", "--filter", "test_res*")
    assert rc == 0 and out.split() == ["timm:test_resnet"]
    path = offline / "sq.pth"
    torch.save(torchvision.models.get_model("squeezenet1_1").state_dict(), path)
    rc, out, _ = main_in_process(capsys, "weights", "import", path, "--model", "tv:squeezenet1_1")
    assert rc == 0 and "squeezenet1_1-b8a52dc0.pth" in out
    rc, out, _ = main_in_process(capsys, "weights", "list")
    assert "tv:squeezenet1_1" in out
    rc, _, err = main_in_process(capsys, "weights", "import", path, "--model", "tv:resnet18")
    assert_one_line(rc, err, "missing keys", "unexpected keys")


# ------------------------------------------------------------------ (3) fine-tuning beats scratch
def test_fine_tuning_from_a_pretrained_file_beats_scratch_at_the_same_budget(tmp_path):
    # A "published" timm test_resnet trained 150 steps on shapes (plain loop), then 5 epochs (20 steps) on
    # 300 digits with recogen's recipe (lr 3e-3; from weights: backbone lr x0.1), test accuracy.
    # Measured twice on this machine (identical, seeded), seeds 0/1/2:
    #   scratch 0.245 / 0.197 / 0.253   fine-tuned 0.320 / 0.401 / 0.320   (gap >= 0.067 every seed)
    # The test runs seeds 0 and 1 and asks for a gap of 0.03 each: well under the smallest measured one.
    import json

    path, _ = _published_like(tmp_path, steps=150)
    for seed in (0, 1):
        acc = {}
        for label, w in (("scratch", None), ("fine-tuned", path)):
            run = _train(tmp_path, f"{label}{seed}", w, limit=300, epochs=5, lr=3e-3, seed=seed)
            acc[label] = json.loads((run / "metrics.json").read_text())["accuracy"]
        assert acc["fine-tuned"] > acc["scratch"] + 0.03, (seed, acc)


def test_pretrained_run_uses_the_weights_normalisation_and_input_size(offline):
    """--pretrained with no --image-size trains at the weights' own size and normalises as they were
    trained; model.json records both, so predict and serve do the same."""
    import json

    from recogen.models.sources import import_weights, preprocessing

    path, _ = _published_like(offline, fmt="safetensors")
    import_weights(path, "timm:test_resnet")
    pre = preprocessing("timm:test_resnet")
    run = _train(offline, "run", None, pretrained=True, channels=1, limit=64, image_size=None, batch_size=32)
    card = json.loads((run / "model.json").read_text())
    assert card["image_size"] == pre["input_size"] == 160
    assert card["normalize"]["mean"] == pytest.approx([sum(pre["mean"]) / 3])  # RGB folded onto gray
    assert card["normalize"]["std"] == pytest.approx([sum(pre["std"]) / 3])
    from PIL import Image

    from recogen.tasks import classify

    top = classify.load(run).predict(Image.new("L", (20, 20), 128), topk=2)  # rebuilt from the card, offline
    assert len(top["topk"]) == 2
