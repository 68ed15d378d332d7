"""Prediction latency of `recogen detect predict`: images/s of fasterrcnn-mobilenet at 320 and 640 px on CPU.

    python benchmarks/detect_latency.py [--sizes 320 640] [--backend eager] [--images 20] [--rounds 5]
                                        [--warmup 3] [--threads N] [--run RUN_DIR]

What is timed is the predictor behind `recogen detect predict` (``recogen.tasks.detect.load(run)
.predict(path)``), one image per call (batch 1): decode the PNG, resize to the model's size, the
network with its own post-processing, class-wise NMS and the JSON-able result. Model loading and the
CLI's start-up (imports) are not timed. Each configuration: ``--warmup`` calls, then ``--rounds``
rounds over the same ``--images`` files; a round's images/s is images / round wall time, and the row
gives the median round (and the range) plus the median per-image latency of all timed calls.

Without ``--run``, each size gets a run folder holding an UNTRAINED fasterrcnn-mobilenet (seeded
random weights, 10 classes) saved with ``save_portable`` and the card ``recogen detect train`` writes.
Most of the time goes to the ROI head, which pools and classifies every RPN proposal: at test time the
RPN keeps at most 1,000 proposals with torchvision's 800-px settings, which recogen keeps above 320 px,
and 150 at 320 px and below (torchvision's own fasterrcnn_mobilenet_v3_large_320_fpn recipe). An
untrained RPN fills that cap; a trained one may keep fewer, so untrained figures are an upper bound
for the same network. ``--run`` times a trained run folder instead. Images are generated
``shapes`` scenes, written at each size.

Backends are one function each in ``BACKENDS`` (``run folder -> predict(path)``): ``eager`` (PyTorch)
and ``onnx`` (the run exported with ``recogen export``, run with onnxruntime).

Output: one markdown table row per configuration, with the machine (CPU model, threads, torch).
Timings are only valid on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = "fasterrcnn-mobilenet"
NUM_CLASSES = 10


class BackendUnavailable(Exception):
    """The backend cannot run here (yet); the message says why."""


# ------------------------------------------------------------------------------------------ backends
def eager_backend(run: Path) -> Callable[[Path], dict]:
    """PyTorch eager: the same predictor as ``recogen detect predict``."""
    from recogen.tasks.detect import load

    det = load(run)
    return lambda path: det.predict(path)


def onnx_backend(run: Path) -> Callable[[Path], dict]:
    """ONNX Runtime: ``recogen export RUN --format onnx`` (once), then ``recogen detect predict --backend onnx``.

    The graph holds the network up to the head's raw outputs; decoding, NMS (and Faster R-CNN's RPN
    and RoI heads) run in torchvision's code, as in eager mode (see recogen/export/graphs.py).
    """
    from recogen.export import export_model
    from recogen.tasks.detect import load

    if not (run / "model.onnx").is_file():
        export_model(run, "onnx")
    det = load(run, backend="onnx")
    return lambda path: det.predict(path)


BACKENDS: dict[str, Callable[[Path], Callable[[Path], dict]]] = {"eager": eager_backend, "onnx": onnx_backend}


# ------------------------------------------------------------------------------------------ fixtures
def make_run(folder: Path, size: int, seed: int = 0) -> Path:
    """A run folder with an untrained, seeded fasterrcnn-mobilenet at ``size`` px and a detect card."""
    import torch

    from recogen.artifact import save_portable
    from recogen.models import create_model
    from recogen.tasks.detect import _card

    torch.manual_seed(seed)
    model = create_model(MODEL, num_classes=NUM_CLASSES, in_chans=3, image_size=size, pretrained=False).eval()
    cfg = SimpleNamespace(model=MODEL, model_kwargs={}, image_size=size, channels=3, data="untrained (latency benchmark)")
    classes = SimpleNamespace(classes=[f"class{i}" for i in range(NUM_CLASSES)])
    save_portable(folder, model, _card(cfg, model, classes))  # the card recogen detect train writes
    return folder


def make_images(folder: Path, size: int, n: int, seed: int = 0) -> list[Path]:
    """``n`` generated shapes scenes written as ``size`` x ``size`` PNGs."""
    from recogen.data.images import write_png
    from recogen.data.shapes_scenes import make_scenes

    folder.mkdir(parents=True, exist_ok=True)
    ds = make_scenes(n, size, seed)
    paths = []
    for i in range(n):
        p = folder / f"scene_{i:03d}.png"
        paths.append(write_png(ds.images[i], p))
    return paths


# ------------------------------------------------------------------------------------------ timing
def measure(predict: Callable[[Path], dict], images: list[Path], warmup: int, rounds: int) -> dict:
    """Warm up, then time ``rounds`` passes over ``images`` one call at a time."""
    for i in range(warmup):
        predict(images[i % len(images)])
    per_round, latencies = [], []
    for _ in range(rounds):
        t_round = time.perf_counter()
        for p in images:
            t0 = time.perf_counter()
            predict(p)
            latencies.append(time.perf_counter() - t0)
        per_round.append(len(images) / (time.perf_counter() - t_round))
    return {"images_per_s": statistics.median(per_round), "min": min(per_round), "max": max(per_round),
            "latency_ms": 1000 * statistics.median(latencies)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    ap.add_argument("--backend", nargs="+", default=["eager"], choices=sorted(BACKENDS))
    ap.add_argument("--images", type=int, default=20, help="images per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    ap.add_argument("--run", help="time this trained run folder instead (its own image size; --sizes ignored)")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the rows (and onnx/eager ratios) to this JSON file")
    a = ap.parse_args()
    rows: list[list] = []
    speed: dict[tuple[int, str], float] = {}

    import torch

    torch.set_num_threads(a.threads)
    machine = f"{cpu_model()}, {a.threads} thread(s) ({len(os.sched_getaffinity(0))} usable cores), torch {torch.__version__}"
    print(f"machine: {machine}")
    print(f"predict, batch 1, {a.images} images x {a.rounds} rounds after {a.warmup} warm-up calls\n")
    print("| date | model | size | backend | weights | batch | threads | runs | images/s (median round) "
          "| range | median latency ms | CPU | torch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    date = time.strftime("%Y-%m-%d")
    with tempfile.TemporaryDirectory(prefix="detect_latency_") as tmp:
        if a.run:
            from recogen.artifact import read_card

            card = read_card(a.run)
            configs = [(Path(a.run), card["model"], int(card["image_size"]), "trained")]
        else:
            configs = [(make_run(Path(tmp) / f"run{s}", s), MODEL, s, "untrained") for s in a.sizes]
        for run, model, size, weights in configs:
            images = make_images(Path(tmp) / f"img{size}", size, a.images)
            for backend in a.backend:
                head = f"| {date} | {model} | {size} | {backend} | {weights} | 1 | {a.threads} | {a.rounds} |"
                tail = f" {cpu_model()} | {torch.__version__} |"
                try:
                    predict = BACKENDS[backend](run)
                except BackendUnavailable as e:
                    print(f"{head} n/a: {e} | | |{tail}", flush=True)
                    rows.append([model, size, backend, weights, "not measured: " + str(e), "", ""])
                    continue
                r = measure(predict, images, a.warmup, a.rounds)
                print(f"{head} **{r['images_per_s']:.1f}** | {r['min']:.1f} – {r['max']:.1f} | "
                      f"{r['latency_ms']:.1f} |{tail}", flush=True)
                rows.append([model, size, backend, weights, f"**{r['images_per_s']:.1f}**", f"{r['min']:.1f} – {r['max']:.1f}",
                             f"{r['latency_ms']:.1f}"])
                speed[(size, backend)] = r["images_per_s"]
    if a.json:
        _write_json(a, rows, speed)


def _write_json(a, rows: list[list], speed: dict[tuple[int, str], float]) -> None:
    """The rows in the shape benchmarks/report.py renders, with the onnx/eager ratio per size."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_common

    ratios = {s: speed[(s, "onnx")] / speed[(s, "eager")] for s, b in speed if b == "eager" and (s, "onnx") in speed}
    said = "; ".join(f"{s} px onnx/eager **{r:.2f}**" for s, r in sorted(ratios.items()))
    bench_common.write_result(
        a.json, "detect_latency", title="ONNX against eager latency: detection predict (`benchmarks/detect_latency.py`)",
        command="python benchmarks/detect_latency.py " + " ".join(sys.argv[1:]), runs=a.rounds, code=bench_common.code_state(),
        summary=(f"The predictor behind `recogen detect predict` (decode, resize, network, NMS, result dict), batch 1, "
                 f"{a.threads} thread(s), {a.warmup} warm-up calls then {a.rounds} rounds over {a.images} generated images; "
                 f"images/s of the median round. {said or 'No onnx/eager pair measured.'}"),
        table={"columns": ["model", "size", "backend", "weights", "images/s (median round)", "range", "median latency ms"],
               "rows": rows}, ratios={str(k): v for k, v in ratios.items()})


if __name__ == "__main__":
    main()
