"""``recogen demo``: the whole loop offline in about a minute — train on real handwritten digits
(``mnist-5k``, as the tutorial recogen grew from uses MNIST), evaluate, predict a few images and
write ``report.html``."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

log = logging.getLogger("recogen.demo")  # the CLI shows its INFO lines
DEMO_MARKER = ".recogen-demo"  # written first into a demo's folder: only such a folder is ever replaced


def is_demo_run(folder: Path) -> bool:
    """Whether ``folder`` was written by ``recogen demo`` (its marker, or the report of an older demo)."""
    if (folder / DEMO_MARKER).is_file():
        return True
    report = folder / "report.html"
    try:
        return report.is_file() and "recogen demo" in report.read_text(errors="replace")[:5000]
    except OSError:
        return False


def run_demo(out: str | Path = "runs/demo", progress: bool = True) -> Path:
    """Train the default classifier on ``mnist-5k``, then evaluate, predict and report. Returns the run folder."""
    from .data.images import write_png

    from .data import create_dataset
    from .plots import plot_image_grid
    from .report import write_report
    from .tasks import classify

    from .errors import RunError
    from .utils import check_writable_folder

    t0 = time.perf_counter()
    out = Path(out)
    check_writable_folder(out)
    if out.exists() and any(out.iterdir()):
        if not is_demo_run(out):
            raise RunError(f"{out} is not empty and is not a previous demo run; the demo replaces its folder, so "
                           "give --out a new or empty folder (or one a previous `recogen demo` wrote)")
        shutil.rmtree(out)  # the demo always starts fresh
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("written by `recogen demo`: the next demo into this folder replaces it\n")
    run = classify.train(data="mnist-5k", out=str(out), progress=progress)

    # Predict a few test images exactly as a user would: from PNG files on disk.
    from .tasks.runs import data_options, load_run_config

    cfg = load_run_config(classify.ClassifyConfig, run)
    test = create_dataset(cfg.data, data_options(cfg)).split("test")
    samples = run / "samples"
    samples.mkdir(exist_ok=True)
    files = []
    for i in range(16):
        f = samples / f"test_{i:02d}_true_{test.labels[i].item()}.png"
        write_png(test.images[i], f)
        files.append(f)
    clf = classify.load(run)
    preds = clf.predict([str(f) for f in files], topk=3)
    titles, colors = [], []
    for r, y in zip(preds, test.labels[:16].tolist()):
        titles.append(f"{r['label']} ({r['prob']:.2f}) / {clf.classes[y]}")
        colors.append("green" if r["index"] == y else "red")
    plot_image_grid(test.images[:16], titles, run / "sample_predictions.png", colors=colors)
    report = write_report(run, title="recogen demo: handwritten digits classifier (mnist-5k)")
    right = sum(c == "green" for c in colors)
    log.info(f"predicted {len(files)} sample images from {samples}: {right}/{len(files)} right")
    log.info(f"demo finished in {time.perf_counter() - t0:.0f} s; open {report}")
    return run
