"""Adding a task is one spec: a toy task defined here in a few lines (its config, LightningModule and
predictor) trains, evaluates, predicts and is served through the CLI and the service, without any other
file of recogen knowing about it (issue 11)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from recogen.config import TrainConfig
from recogen.models import MODELS, register_model
from recogen.tasks import TASKS, Task, register_task
from recogen.tasks.predictor import Predictor
from recogen.tasks.skeleton import write_metrics
from recogen.tasks.trainer import configure_optimizers

from conftest import main_in_process


# ------------------------------------------------------------------------------ the toy task: all of it
@dataclass
class BrightConfig(TrainConfig):
    """Which of K classes of digits, by a linear model on 4x4 pooled pixels (a deliberately tiny task)."""

    data: str = "digits"


if "bright-linear" not in MODELS:
    @register_model("bright-linear", task="bright", description="linear model on 4x4 average-pooled pixels")
    def bright_linear(*, num_classes: int, in_chans: int = 1, image_size: int = 32, pretrained: bool = False) -> nn.Module:
        return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(in_chans * 16, num_classes))


class BrightModule(pl.LightningModule):
    def __init__(self, model: nn.Module, cfg: BrightConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.model(x.float() / 255), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self.model(x.float() / 255).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return configure_optimizers(self.cfg, self.model.parameters(), int(self.trainer.estimated_stepping_batches))


class BrightPredictor(Predictor):
    task = "bright"

    def predict(self, images):
        from recogen.data.images import fit_to_card, open_image
        from torchvision.transforms.v2.functional import pil_to_tensor

        def batch(srcs):
            x = torch.cat([fit_to_card(pil_to_tensor(open_image(s).convert("L"))[None], self.card) for s in srcs])
            with torch.no_grad():
                idx = self.model(x.float() / 255).argmax(1).tolist()
            return [{"label": self.classes[i]} for i in idx]

        return self.each(images, batch)


class BrightTask(Task):
    name, help, noun, config, monitor, headline = "bright", "toy task", "toy model", BrightConfig, "val_acc", "accuracy"
    predictor = BrightPredictor

    def resolve_defaults(self, cfg, splits):
        return BrightConfig(**{**vars(cfg), "model": "bright-linear", "epochs": cfg.epochs or 2, "batch_size": 64,
                               "lr": 0.05, "precision": "32-true", "channels_last": False, "budget": "none",
                               "image_size": splits.image_size[0], "channels": splits.channels}), ["toy defaults"]

    def build_module(self, model, cfg, splits, train_batches):
        return BrightModule(model, cfg)

    def evaluate_model(self, model, card, ds, run, split, data, has_test=None):
        pred = model(ds.images.float() / 255).argmax(1)
        m = {"task": self.name, "data": data, "split": split, "accuracy": float((pred == ds.labels).float().mean())}
        if run is not None:
            write_metrics(run, split, m)
        return m

    def params_model(self):
        from recogen.tasks.params import Params

        return Params

    def serve_response(self, predictor, image, params):
        return predictor.predict(image)


# ------------------------------------------------------------------------------------------- the proof
@pytest.fixture(scope="module")
def bright(tmp_path_factory):
    register_task(BrightTask)
    yield tmp_path_factory.mktemp("bright")
    TASKS.pop("bright", None)


def test_a_registered_toy_task_trains_evaluates_predicts_and_is_served(bright, capsys):
    run = bright / "run"
    rc, out, err = main_in_process(capsys, "bright", "train", "--out", run, "--epochs", "3", "--no-progress")
    assert rc == 0, err
    assert "auto: toy defaults" in out and "test accuracy" in out
    for f in ("config.yaml", "model.json", "model.safetensors", "metrics.json", "history.json", "report.html"):
        assert (run / f).is_file(), f
    acc = json.loads((run / "metrics.json").read_text())["accuracy"]
    assert acc > 0.5, acc  # 10 classes: chance is 0.1; a linear model on 4x4 pooled digits gets ~0.8

    rc, out, err = main_in_process(capsys, "bright", "eval", run, "--json", "--no-write")
    assert rc == 0 and json.loads(out)["accuracy"] == pytest.approx(acc), err

    img = bright / "seven.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(img)
    rc, out, err = main_in_process(capsys, "bright", "predict", run, img, "--json")
    assert rc == 0, err
    (res,) = json.loads(out)
    assert res["path"] == str(img) and res["label"] in [str(i) for i in range(10)]

    import recogen

    assert isinstance(recogen.load(run), BrightPredictor)
    assert recogen.evaluate(run, write=False)["accuracy"] == pytest.approx(acc)

    from fastapi.testclient import TestClient

    from recogen.serve.app import create_app

    with TestClient(create_app([str(run)])) as client:
        models = client.get("/v1/models").json()
        assert [m["task"] for m in models["models"]] == ["bright"]
        r = client.post("/v1/bright", files={"file": ("seven.png", img.read_bytes(), "image/png")})
        assert r.status_code == 200, r.text
        assert r.json()["label"] == res["label"]


def _readme_block(after: str) -> str:
    """The first python code block of the README after the text ``after``."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    start = text.index("```python", text.index(after)) + len("```python")
    return text[start : text.index("```", start)]


def test_the_readme_examples_of_a_new_model_and_data_source_work(tmp_path, capsys):
    from recogen.data import DATASETS

    for name, after in (("mlp", "**Add a model.**"), ("npz", "A classification source is one registered builder")):
        registry = MODELS if name == "mlp" else DATASETS
        if name not in registry:
            exec(compile(_readme_block(after), f"README:{name}", "exec"), {})
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "my.npz", images=rng.integers(0, 255, (60, 1, 16, 16), dtype=np.uint8),
             labels=np.arange(60) % 3, classes=np.array(["a", "b", "c"]))
    run = tmp_path / "run"
    rc, out, err = main_in_process(capsys, "classify", "train", "--data", f"npz:{tmp_path / 'my.npz'}", "--model", "mlp",
                                   "--model-kwargs", '{"hidden": 8}', "--epochs", "1", "--out", run, "--no-progress")
    assert rc == 0, err
    assert "model mlp" in out and "42 train / 9 val / 9 test" in out
    card = json.loads((run / "model.json").read_text())
    assert card["model"] == "mlp" and card["model_kwargs"] == {"hidden": 8} and card["classes"] == ["a", "b", "c"]
