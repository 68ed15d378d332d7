"""Per-image latency of every `recogen explain` method, per model family (issue 13).

    python benchmarks/explain_latency.py [--models cnn-s resnet18 vit-tiny fcos-s unet] [--methods ...]
        [--images 10] [--rounds 3] [--run NAME=RUN_DIR ...] [--json OUT.json] [--quick]

What is timed is ``recogen.explain(predictor, paths, method=M)`` (what ``recogen explain RUN IMAGES
--method M`` runs after loading the run), the model loaded once per run with ``recogen.load(RUN)``:
per call, a copy of the model for the hooks, every image decoded, then per image a forward pass (top
classes, the target), the method's map, its resize to the input and the overlay at the image's own
size; no files written (``out=None``). Per (model, method): one warm-up call on 2 images, then
``--rounds`` calls over the same ``--images`` PNG files; a round's per-image latency is its wall time /
images, and the row gives the median round (and the range). Batch 1 inside each method (as recogen
runs them: Score-CAM scores 32 masked copies per forward pass, integrated gradients 50 steps in
batches of 25).

Runs (trained here unless ``--run NAME=DIR`` gives one; accuracy does not change the cost of a method,
so a short training is enough): ``recogen classify train --data mnist-5k --model M --epochs E
--limit L`` (real digits at their own 28 px) for the classifiers (cnn-s is recogen's default
classifier at that size; resnet18 is recogen's ResNet-18 with the 3x3 stem below 64 px; vit-tiny the
timm ViT, patch 4); ``recogen detect|segment train --data shapes:N --image-size 64`` for fcos-s / unet,
timed only when ``recogen.explain`` accepts that task (checked at run time; otherwise the row says so).

Output: one markdown row per (model, method) with the machine; ``--json`` writes every round.
``--quick``: a seconds-long smoke run (cnn-s, 2 images, one round; figures mean nothing). Timings are
only valid on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bench_common

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


METHODS = ("gradcam", "gradcam++", "eigencam", "scorecam", "integrated-gradients")
# model -> (task, training options); classifiers on real digits at their own size, dense models on shapes.
MODELS = {
    "cnn-s": ("classify", ["--data", "mnist-5k", "--limit", "600", "--epochs", "2"]),
    "resnet18": ("classify", ["--data", "mnist-5k", "--limit", "600", "--epochs", "2"]),
    "vit-tiny": ("classify", ["--data", "mnist-5k", "--limit", "600", "--epochs", "2"]),
    "fcos-s": ("detect", ["--data", "shapes:200", "--image-size", "64", "--epochs", "6"]),
    "unet": ("segment", ["--data", "shapes:200", "--image-size", "64", "--epochs", "6"]),
}


def explain_tasks() -> set[str]:
    """The tasks ``recogen.explain`` accepts in this checkout."""
    from recogen.saliency.targets import EXPLAINERS

    return set(EXPLAINERS)


def train_run(model: str, folder: Path, quick: bool) -> Path:
    """A short training of ``model`` (in this process, as the CLI does it); returns the run folder."""
    from recogen.cli import main

    task, opts = MODELS[model]
    if quick:
        opts = [o if o not in ("600",) else "64" for o in opts]
        opts = [*opts[:opts.index("--epochs")], "--epochs", "1"]
    rc = main([task, "train", *opts, "--model", model, "--seed", "0", "--out", str(folder), "--no-progress"])
    if rc not in (0, None):
        sys.exit(f"training {model} failed ({rc})")
    return folder


def test_images(task: str, folder: Path, n: int) -> list[Path]:
    """``n`` PNG files the run's task reads: test digits of mnist-5k (classify), shapes scenes (dense)."""
    from recogen.data.images import write_png

    folder.mkdir(parents=True, exist_ok=True)
    if task == "classify":
        from recogen.data import DataOptions, create_dataset

        imgs = create_dataset("mnist-5k", DataOptions(seed=0)).test.images[:n]
    else:
        from recogen.data.shapes_scenes import make_scenes

        imgs = make_scenes(n, 64, 1).images
    return [write_png(imgs[i], folder / f"img_{i:03d}.png") for i in range(n)]


def measure(predictor, images: list[Path], method: str, rounds: int) -> dict:
    import recogen

    recogen.explain(predictor, images[:2], method=method)  # warm-up: libraries, hooks, allocator
    per_image, maps = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        ex = recogen.explain(predictor, images, method=method)
        per_image.append((time.perf_counter() - t0) / len(images))
        maps.append(len(ex))  # one per image (classify, segment); one per box explained (detect)
    return {"per_image_ms": [round(1000 * t, 2) for t in per_image], "median_ms": round(1000 * statistics.median(per_image), 2),
            "maps_per_image": round(statistics.median(maps) / len(images), 2), "layer": ex[0].layer}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--images", type=int, default=10, help="images per round (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    ap.add_argument("--run", action="append", default=[], metavar="NAME=DIR", help="time this run folder as NAME instead of training one")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: the usable cores)")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write every number to this JSON file")
    ap.add_argument("--quick", action="store_true", help="a seconds-long smoke run (figures mean nothing)")
    a = ap.parse_args()
    if a.quick:
        a.models, a.images, a.rounds = ["cnn-s"], 2, 1

    import torch

    import recogen
    from recogen.artifact import read_card

    torch.set_num_threads(a.threads)
    given = dict(r.split("=", 1) for r in a.run)
    supported = explain_tasks()
    info = {"cpu": bench_common.cpu_name(), "threads": a.threads, "nice": os.nice(0), "torch": torch.__version__,
            "recogen": recogen.__version__, "code": bench_common.code_state(), "loadavg_start": round(os.getloadavg()[0], 2)}
    print(f"machine: {info}\nexplain tasks in this checkout: {', '.join(sorted(supported))}", flush=True)
    rows, skipped = [], {}
    with tempfile.TemporaryDirectory(prefix="explain_latency_") as tmp:
        work = Path(tmp)
        runs = {}
        for model in a.models:
            task = MODELS[model][0]
            if task not in supported:
                skipped[model] = f"recogen.explain does not accept {task} runs in this checkout"
                continue
            t0 = time.perf_counter()
            runs[model] = Path(given[model]) if model in given else train_run(model, work / model, a.quick)
            print(f"{model}: run {runs[model]} ({time.perf_counter() - t0:.0f} s to train)", flush=True)
        for name, path in given.items():
            if name not in runs:
                runs[name] = Path(path)
        for model, run in runs.items():
            card = read_card(run)
            predictor = recogen.load(run)  # once per run
            images = test_images(card["task"], work / f"img_{card['task']}", a.images)
            params = sum(p.numel() for p in predictor.model.parameters())
            for method in a.methods:
                try:
                    r = measure(predictor, images, method, a.rounds)
                except Exception as e:  # a method a task cannot run yet: one line in the table, the rest goes on
                    rows.append({"model": card["model"], "name": model, "task": card["task"], "method": method,
                                 "image_size": card["image_size"], "params_m": round(params / 1e6, 2),
                                 "error": f"{type(e).__name__}: {str(e)[:200]}"})
                    print(f"{model:9s} {method:21s} failed: {rows[-1]['error']}", flush=True)
                    continue
                row = {"model": card["model"], "name": model, "task": card["task"], "image_size": card["image_size"],
                       "params_m": round(params / 1e6, 2), "method": method, **r}
                rows.append(row)
                print(f"{model:9s} {method:21s} {row['median_ms']:9.1f} ms/image  (rounds: "
                      f"{', '.join(f'{t:.1f}' for t in r['per_image_ms'])}; layer {r['layer']}; "
                      f"{r['maps_per_image']:g} map(s) per image)", flush=True)
    info["loadavg_end"] = round(os.getloadavg()[0], 2)
    date = time.strftime("%Y-%m-%d")
    print(f"\n{a.rounds} rounds x {a.images} images after a 2-image warm-up, model loaded once; {info['cpu']}, "
          f"{a.threads} threads, torch {info['torch']}, {date}\n")
    print("| model | task | size | params | " + " | ".join(a.methods) + " |")
    print("|---|---|---|---|" + "---|" * len(a.methods))
    for name in dict.fromkeys(r["name"] for r in rows):
        rr = {r["method"]: r for r in rows if r["name"] == name}
        first = next(iter(rr.values()))
        cells = " | ".join("failed" if "error" in rr[m] else f"{rr[m]['median_ms']:.1f} ms" + (
            f" ({rr[m]['maps_per_image']:g} maps)" if rr[m]["maps_per_image"] != 1 else "") for m in a.methods)
        print(f"| {first['model']} | {first['task']} | {first['image_size']} px | {first['params_m']}M | {cells} |")
    for model, why in skipped.items():
        print(f"| {model} | {MODELS[model][0]} | | | not timed: {why} |")
    if a.json:
        bench_common.write_result(a.json, "explain_latency", quick=a.quick, images=a.images, rounds=a.rounds,
                                  versions=info, rows=rows, skipped=skipped)


if __name__ == "__main__":
    main()
