"""Detection or segmentation with the defaults on real-digit scenes: whole-command wall time and test metrics.

    python benchmarks/dense_defaults.py --task segment [--data digit-scenes] [--seeds 0 1 2] \
        [--json OUT.json] [--extra-args "--epochs 40"]
    python benchmarks/dense_defaults.py --task detect  [--data digit-scenes] [--seeds 0 1 2]

Issue 10's targets: (b) `recogen segment train --data digit-scenes --out DIR` (no other option): test mIoU
>= 0.60 with every class's IoU > 0.3, within 8.5 minutes for the whole command; (c) `recogen detect
train --data digit-scenes --out DIR`: test mAP50-95 >= 0.55 within 8.5 minutes.

Per seed S, ``python -m recogen TASK train --data D --seed S --out DIR --no-progress`` [+ --extra-args]
is timed as a subprocess from start to exit (data generation, imports, training, test evaluation and
plots included); the children's user+system CPU seconds are recorded too. Test metrics come from the
run's ``metrics.json`` (``metrics_val.json`` when the data has no test split; the JSON says which):
detect: ``map`` (mAP50-95), ``map_50``, ``map_75``, ``mar_100`` and per-class AP; segment: ``miou``,
``miou_all_classes``, ``pixel_accuracy``, ``mean_dice`` and per-class IoU (a class absent from both the
targets and the predictions has IoU None; it is listed, not counted as a pass). The epochs actually
trained are read from ``history.json``. Runs are sequential: timings are only valid on an otherwise
idle machine.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import bench_common

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 8.5 * 60
TARGETS = {"segment": {"miou": 0.60, "class_iou": 0.3}, "detect": {"map": 0.55}}


def run_seed(task: str, data: str, seed: int, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "recogen", task, "train", "--data", data, "--seed", str(seed), "--out", str(out),
           "--no-progress", *extra]
    r, wall, cpu = bench_common.run_timed(cmd, ROOT)
    mfile = out / "metrics.json" if (out / "metrics.json").is_file() else out / "metrics_val.json"
    m = json.loads(mfile.read_text())
    hist = out / "history.json"
    epochs = len(json.loads(hist.read_text())) if hist.is_file() else None
    row = {"seed": seed, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
           "epochs_trained": epochs, "split": m.get("split"), "num_images": m.get("num_images"),
           "auto": next((ln for ln in r.stdout.splitlines() if ln.startswith("auto:")), "")}
    if task == "detect":
        row.update({k: m[k] for k in ("map", "map_50", "map_75", "mar_100")}, num_boxes=m.get("num_boxes"),
                   per_class={c: v.get("ap") for c, v in m["per_class"].items()})
    else:
        row.update({k: m[k] for k in ("miou", "miou_all_classes", "pixel_accuracy", "mean_dice")},
                   per_class={c: v.get("iou") for c, v in m["per_class"].items()})
        defined = [v for v in row["per_class"].values() if v is not None]
        row["min_class_iou"] = min(defined) if defined else None
        row["classes_without_iou"] = [c for c, v in row["per_class"].items() if v is None]
    return row


def describe(task: str, r: dict) -> str:
    head = f"seed {r['seed']}: {r['wall_s']:.1f} s wall ({r['cpu_s']:.0f} s CPU), {r['epochs_trained']} epochs, {r['split']} "
    if task == "detect":
        return head + f"mAP50-95 {r['map']:.4f}, mAP50 {r['map_50']:.4f}, mAP75 {r['map_75']:.4f}, AR100 {r['mar_100']:.4f}"
    worst = min(((c, v) for c, v in r["per_class"].items() if v is not None), key=lambda cv: cv[1], default=("-", float("nan")))
    return head + (f"mIoU {r['miou']:.4f} (all classes {r['miou_all_classes']:.4f}), pixel acc {r['pixel_accuracy']:.4f}, "
                   f"worst class {worst[0]} {worst[1]:.3f}" + (f"; no IoU: {r['classes_without_iou']}" if r["classes_without_iou"] else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", required=True, choices=["detect", "segment"])
    ap.add_argument("--data", default="digit-scenes", help="data set (default digit-scenes)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    ap.add_argument("--extra-args", default="", help='extra recogen options, one string, e.g. "--epochs 40"')
    ap.add_argument("--json", type=Path, metavar="OUT", help="write every number to this JSON file")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="keep the run folders here (default: a temp folder)")
    a = ap.parse_args()
    extra = shlex.split(a.extra_args)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = a.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for s in a.seeds:
            rows.append(run_seed(a.task, a.data, s, work / f"{a.task}_seed{s}", extra))
            print(describe(a.task, rows[-1]), flush=True)

    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    keys = ("map", "map_50", "map_75", "mar_100") if a.task == "detect" else ("miou", "miou_all_classes", "pixel_accuracy", "mean_dice")
    summary = {"median_wall_s": med("wall_s"), "max_wall_s": max(r["wall_s"] for r in rows), "median_cpu_s": med("cpu_s"),
               **{f"median_{k}": med(k) for k in keys}}
    classes = list(rows[0]["per_class"])
    per_class = {c: [r["per_class"].get(c) for r in rows] for c in classes}
    summary["per_class_median"] = {c: (statistics.median(v for v in vs if v is not None) if any(v is not None for v in vs) else None)
                                   for c, vs in per_class.items()}
    opts = " ".join(extra) or "defaults"
    print(f"\n{a.task} {a.data} ({opts}), seeds {a.seeds}: wall median {summary['median_wall_s']:.1f} s "
          f"(max {summary['max_wall_s']:.1f} s; budget {BUDGET_S:.0f} s), CPU median {summary['median_cpu_s']:.0f} s")
    print("medians: " + ", ".join(f"{k} {summary[f'median_{k}']:.4f}" for k in keys))
    name = "AP" if a.task == "detect" else "IoU"
    print(f"per-class {name} (median over seeds; per seed):")
    for c, vs in per_class.items():
        mc = summary["per_class_median"][c]
        print(f"  {c:14s} {'-' if mc is None else f'{mc:.3f}'}   ({', '.join('-' if v is None else f'{v:.3f}' for v in vs)})")
    in_time = summary["median_wall_s"] <= BUDGET_S
    if a.task == "segment":
        t = TARGETS["segment"]
        worst = min((v for v in summary["per_class_median"].values() if v is not None), default=None)
        worst_any = min((r["min_class_iou"] for r in rows if r["min_class_iou"] is not None), default=None)
        summary["worst_class_iou_median"], summary["worst_class_iou_any_seed"] = worst, worst_any
        missing = [c for c, v in summary["per_class_median"].items() if v is None]
        ok = summary["median_miou"] >= t["miou"] and worst is not None and worst > t["class_iou"] and not missing
        print(f"target (b): mIoU >= {t['miou']} and every class IoU > {t['class_iou']} (worst class median "
              f"{'-' if worst is None else f'{worst:.3f}'}, worst in any seed {'-' if worst_any is None else f'{worst_any:.3f}'}"
              f"{', classes without IoU: ' + ', '.join(missing) if missing else ''}): {'met' if ok else 'NOT met'}; "
              f"time <= {BUDGET_S:.0f} s: {'met' if in_time else 'NOT met'}")
    else:
        ok = summary["median_map"] >= TARGETS["detect"]["map"]
        print(f"target (c): mAP50-95 >= {TARGETS['detect']['map']}: {'met' if ok else 'NOT met'}; "
              f"time <= {BUDGET_S:.0f} s: {'met' if in_time else 'NOT met'}")
    summary["target_met"], summary["time_met"] = ok, in_time
    if a.json:
        bench_common.write_result(a.json, "dense_defaults", task=a.task, data=a.data, seeds=a.seeds,
                                  recogen_options=opts, runs=rows, summary=summary)


if __name__ == "__main__":
    main()
