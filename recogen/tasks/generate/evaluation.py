"""Evaluating a generator: FID, KID and precision/recall of its samples against real images it never trained on."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...config import GenerateConfig
from ...data import ImageSplits
from ...errors import RunError
from ...utils import check_writable_folder, write_json
from ..runs import load_run_config
from .recipe import load_data
from .sampling import Generator

# Below this many real images FID, KID and precision/recall are noisy and biased (FID by ~1/N), so
# `generate eval` says so in its output and metrics.json.
MIN_REAL = 1000


def reference_images(splits: ImageSplits, split: str | None, n: int) -> tuple[torch.Tensor, str, list[str]]:
    """The real images ``generate eval`` compares with: ``(images, split name, notes)``.

    ``split`` given: that split. Otherwise only images the generator never trained on, as many as
    ``n`` asks for where the data has them: the test split, joined by the val split when the test
    split has fewer than ``n`` images (``"test+val"``), or the val split alone when there is no test
    split. A generator's val split is held out too: it is neither trained on nor used to pick a
    checkpoint (the last epoch is kept). The training split is never chosen by default: FID against a
    generator's own training images rewards memorising them.
    """
    notes: list[str] = []
    if split is not None:
        if split == "train":
            notes.append(f"{splits.name} train: the generator trained on these images, so these figures reward "
                         "memorising them; leave out --split to compare with held-out images")
        return splits.split(split).images, split, notes
    if splits.test is None:
        names = ["val"]
        notes.append(f"{splits.name} has no test split; the real images are its VALIDATION split (held out: not "
                     "trained on, no checkpoint chosen by it)")
    else:
        names = ["test"] if len(splits.test) >= n else ["test", "val"]
    return torch.cat([splits.split(s).images for s in names]), "+".join(names), notes


def evaluate(run: str | Path, features: str, features_weights: str | Path | None = None, n: int = 1000, seed: int = 0,
             split: str | None = None, write: bool = True, device: str = "cpu", **sample_opts: Any) -> dict[str, Any]:
    """FID/KID/precision/recall of ``n`` samples of a run against real images (:func:`reference_images`);
    see :func:`recogen.tasks.generate.evaluate`."""
    from ...metrics.generation import evaluate_generator
    from ...metrics.heldout import add_warnings

    run = Path(run)
    gen = Generator.load(run, device)
    if not (run / "config.yaml").is_file():
        raise RunError(f"{run} has no config.yaml; evaluate a run folder made by `recogen generate train`")
    if write:
        # Before any data is loaded.
        check_writable_folder(run, "run folder", "pass --no-write to only print the metrics, or make it writable")
    cfg = load_run_config(GenerateConfig, run)
    splits = load_data(cfg)
    asked = split
    real, split, notes = reference_images(splits, asked, n)
    m = evaluate_generator(lambda k, s: gen.sample(k, seed=s, **sample_opts), real, features, n=n, seed=seed,
                           weights_path=features_weights, device=device)
    if m["n_real"] < MIN_REAL:
        why = f"--n {n}" if len(real) >= n else f"{cfg.data} {split} holds {len(real)}" + (
            "; its training images are left out, the generator saw them" if asked is None else "")
        notes.append(f"only {m['n_real']} real images ({why}); FID, KID and precision/recall from fewer than "
                     f"{MIN_REAL:,} are noisy and biased: compare runs only at the same n, and against the floor")
    metrics = add_warnings({"task": "generate", "model": gen.card["model"], "data": cfg.data, "split": split,
                            "held_out": split != "train", **m, "sample_options": sample_opts}, notes)
    if write:
        write_json(run / "metrics.json", metrics)
    return metrics
