"""The LightningModule of detection: the detector's own losses, box-aware augmentation on the device,
validation mAP with the same caps as the evaluation."""
from __future__ import annotations

from torch import nn

from ...config import DetectConfig
from ...metrics.detection import MAX_DETECTIONS, mean_average_precision
from ..base_module import TaskModule
from .outputs import EVAL_SCORE_THRESH, _from_model_outputs, _to_model_targets, postprocess


def _augmenter(name: str, label_offset: int, hflip_ok: bool = True):
    """``DenseAugment`` for preset ``name`` (None for "none"); no flips where ``hflip_ok`` is False."""
    from ...data.dense_transforms import DenseAugment
    from ...data.transforms import get_preset

    preset = get_preset(name)
    return None if preset.is_identity else DenseAugment(preset, hflip_ok=hflip_ok, label_offset=label_offset)


class DetectorModule(TaskModule):
    """Trains ``model`` as ``cfg`` says; logs ``train_loss`` and each of the detector's losses
    (``train_<name>``, per epoch) and the validation ``val_map`` / ``val_map_50``.

    ``label_offset``: the index of box label 0 among the mask classes (box-tight augmentation reads
    the masks); ``hflip_ok`` False: no horizontal flips (the data say a mirror image is another object).
    """

    def __init__(self, model: nn.Module, cfg: DetectConfig, label_offset: int = 1, hflip_ok: bool = True):
        super().__init__(model, cfg)
        self.augment = _augmenter(cfg.augment, label_offset, hflip_ok)
        # Epoch-end val metric only (cheap): the full per-class report comes from the evaluation.
        self.map_metric = mean_average_precision(class_metrics=False)

    def forward(self, images):
        return self.model(list(images))

    def on_after_batch_transfer(self, batch, dataloader_idx):
        images, targets, masks = batch
        if self.trainer.training and self.augment is not None:
            boxes, labels = [t["boxes"] for t in targets], [t["labels"] for t in targets]
            images, boxes, labels, masks = self.augment(images, boxes, labels, masks)
            targets = [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]
        return images.float().div_(255), targets, masks

    def training_step(self, batch, batch_idx):
        images, targets, _ = batch
        losses = self.model(list(images), _to_model_targets(targets))
        loss = sum(losses.values())
        self.log_train_losses({"loss": loss, **losses}, len(images), batch_idx)
        return loss

    def validation_step(self, batch, batch_idx):
        images, targets, _ = batch
        # The same caps as the evaluation, so the val mAP that picks best.ckpt is the number it reports.
        with postprocess(self.model, EVAL_SCORE_THRESH, max_det=MAX_DETECTIONS):
            preds = _from_model_outputs(self.model(list(images)))
        self.map_metric.update([{k: v.float() if k != "labels" else v for k, v in p.items()} for p in preds],
                               [{"boxes": t["boxes"].float(), "labels": t["labels"]} for t in targets])

    def on_validation_epoch_end(self):
        r = self.map_metric.compute()
        self.map_metric.reset()
        # Every process evaluates the whole validation split: sync_dist only keeps Lightning quiet.
        self.log("val_map", float(r["map"]), prog_bar=True, sync_dist=True)
        self.log("val_map_50", float(r["map_50"]), prog_bar=True, sync_dist=True)



def make_module(model: nn.Module, cfg: DetectConfig, classes: list[str], label_offset: int = 1,
                hflip_ok: bool = True) -> DetectorModule:
    """The :class:`DetectorModule` of ``model`` (``classes`` are the card's; the module needs only their offset)."""
    return DetectorModule(model, cfg, label_offset, hflip_ok)
