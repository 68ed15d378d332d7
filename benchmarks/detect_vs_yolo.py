"""recogen's detection defaults against Ultralytics YOLO11n from scratch, same data, same CPU time.

    python benchmarks/detect_vs_yolo.py [--data shapes:600|digit-scenes] [--budget-min 8.5] [--threads 2]
                                        [--only recogen|yolo] [--yolo-python /tmp/yolovenv/bin/python] [--out DIR]

``--data digit-scenes`` (issue 10: "beat YOLO11n by more" on real-digit scenes) builds that data set's
seed-0 splits at 128 px exactly as ``recogen detect train --data digit-scenes`` does; the rest is the same.

The target of issue 3 ("Defaults matter"): ``recogen detect train --data shapes:600 --image-size 128
--out DIR`` with no other option must beat YOLO11n trained from scratch on the same images for the
same CPU time (8.5 minutes wall on both cores).

* Data: the seeded ``shapes:600`` splits at 128 px, built exactly as the recogen run builds them
  (``create_dense_dataset("shapes:600", DataOptions(image_size=128, channels=3))``: 420 train / 90 val /
  90 test), written pixel for pixel as PNGs in the Ultralytics layout (``write_yolo``) with a
  ``data.yaml`` whose ``path:`` is absolute.
* YOLO11n: ``YOLO("yolo11n.yaml")`` (architecture only, no weights), ``pretrained=False, amp=False,
  plots=False, imgsz=128, device=cpu``, Ultralytics' own hyper-parameters otherwise (batch 16, SGD/auto,
  mosaic, val every epoch, images read from disk), dataloader workers 0 (all CPU work in the training process,
  as recogen's). The budget is Ultralytics' ``time=`` (hours): after every epoch it re-estimates the
  number of epochs that fit (``ceil(time / mean epoch time)``), rebuilds the LR schedule so that it
  decays to ``lrf`` at that estimate (close_mosaic follows it too) and stops once the time is spent
  (checked after every optimiser step). The clock starts after its setup (data caching, model build)
  and excludes the final validation of best.pt, so its whole-process wall is a little longer than the
  budget (both are reported). Ultralytics pins torch to ``os.cpu_count() - 1`` threads
  (``ultralytics.utils.NUM_THREADS``, applied by ``select_device`` through ``torch.set_num_threads``);
  the worker below overrides that constant so that it uses ``--threads`` like recogen. It runs in its own
  venv (``--yolo-python``), offline: ``YOLO_OFFLINE=1``, the Arial.ttf font download
  (``check_font`` in ``check_det_dataset``) is stubbed out, and a socket guard refuses and counts every
  network connection attempt (reported; it must be 0).
* YOLO's test score: best.pt predicts the TEST images with COCO-eval settings (conf 0.001, class-wise
  NMS IoU 0.7, 100 detections per image), the boxes go through JSON to recogen's venv and are scored
  by the SAME code recogen scores itself with (``recogen.metrics.detection.detection_metrics``,
  torchmetrics' COCO mAP). Ultralytics' own ``val`` on the test split is reported beside it as a
  cross-check of the conversion (its mAP differs slightly: multi-label NMS, 300 detections, its own
  AP interpolation).
* recogen: the command above as a subprocess (its defaults fix the schedule; no budget is passed);
  its test-split ``metrics.json`` is read. Wall time is start to exit of the process.

The last line reads ``mAP50 recogen X yolo Y; mAP50-95 recogen X yolo Y; wall recogen A s yolo B s``.
``result.json`` in ``--out`` holds everything. Timings are only valid on an otherwise idle machine.

This file also runs INSIDE the YOLO venv (``_yolo-train`` / ``_yolo-predict`` sub-commands), so it
imports only the standard library at module level.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_YOLO_PYTHON = "/tmp/yolovenv/bin/python"
DATA = "shapes:600"
IMAGE_SIZE = 128
# COCO evaluation convention for the peer's predictions (recogen evaluates at score 0.001, 100 per image).
EVAL_CONF, EVAL_IOU, EVAL_MAX_DET = 0.001, 0.7, 100


# =====================================================================================================
# Inside the YOLO venv (standard library + ultralytics only)
# =====================================================================================================
def _guard_network(log: list[str]) -> None:
    """Refuse and record every outgoing connection / name lookup: the peer must run offline."""
    import socket

    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            log.append(f"connect {address}")
            print(f"[guard] refused network connection to {address}", file=sys.stderr, flush=True)
            raise OSError("network disabled by detect_vs_yolo.py")
        return real_connect(self, address)

    def getaddrinfo(host, *a, **k):
        if host not in (None, "localhost", "127.0.0.1", "::1"):
            log.append(f"lookup {host}")
            print(f"[guard] refused name lookup of {host}", file=sys.stderr, flush=True)
            raise socket.gaierror("network disabled by detect_vs_yolo.py")
        return real_getaddrinfo(host, *a, **k)

    socket.socket.connect = connect
    socket.getaddrinfo = getaddrinfo


def _yolo_setup(threads: int) -> list[str]:
    """Offline guard, all ``threads`` for torch (not Ultralytics' cores-1), no font download."""
    os.environ["YOLO_OFFLINE"] = "1"
    net: list[str] = []
    _guard_network(net)
    import torch

    import ultralytics.data.utils as data_utils
    import ultralytics.utils as yutils
    import ultralytics.utils.torch_utils as torch_utils

    # select_device() calls torch.set_num_threads(NUM_THREADS) with NUM_THREADS = cpu_count - 1.
    yutils.NUM_THREADS = torch_utils.NUM_THREADS = threads
    # check_det_dataset() always checks for Arial.ttf and downloads it when missing; only plots use it.
    data_utils.check_font = lambda *a, **k: None
    torch.set_num_threads(threads)
    return net


def yolo_train_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="detect_vs_yolo.py _yolo-train")
    ap.add_argument("--data", required=True)
    ap.add_argument("--project", required=True)
    ap.add_argument("--hours", type=float, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--result", required=True)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    net = _yolo_setup(a.threads)
    import torch
    import ultralytics
    from ultralytics import YOLO

    model = YOLO("yolo11n.yaml")  # the architecture from the package's own yaml: no weights, no download
    t_train = time.perf_counter()
    model.train(data=a.data, time=a.hours, epochs=1000, imgsz=IMAGE_SIZE, batch=a.batch, device="cpu",
                workers=a.workers, pretrained=False, amp=False, plots=False, seed=a.seed,
                project=a.project, name="train", exist_ok=True, verbose=True)
    t_end = time.perf_counter()
    tr = model.trainer
    csv = Path(tr.save_dir) / "results.csv"
    epochs = max(0, len(csv.read_text().strip().splitlines()) - 1) if csv.is_file() else None
    rd = {k: float(v) for k, v in (tr.metrics or {}).items() if isinstance(v, (int, float))}
    out = {"best": str(tr.best), "last": str(tr.last), "save_dir": str(tr.save_dir), "epochs_completed": epochs,
           "train_call_s": round(t_end - t_train, 2), "process_s_to_end": round(t_end - t0, 2),
           "torch_threads_during_training": torch.get_num_threads(), "ultralytics": ultralytics.__version__,
           "torch": torch.__version__, "val_metrics_ultralytics": rd, "network_attempts": net}
    Path(a.result).write_text(json.dumps(out, indent=2))


def yolo_predict_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="detect_vs_yolo.py _yolo-predict")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--result", required=True)
    a = ap.parse_args(argv)
    net = _yolo_setup(a.threads)
    from ultralytics import YOLO

    model = YOLO(a.weights)
    files = sorted(Path(a.images).glob("*.png"))
    preds = {}
    for r in model.predict(source=[str(f) for f in files], imgsz=IMAGE_SIZE, conf=EVAL_CONF, iou=EVAL_IOU,
                           max_det=EVAL_MAX_DET, device="cpu", stream=True, verbose=False, save=False):
        b = r.boxes
        preds[Path(r.path).name] = {"boxes": b.xyxy.tolist(), "scores": b.conf.tolist(),
                                    "labels": [int(c) for c in b.cls.tolist()]}
    # Ultralytics' own metric on the same split: a cross-check that boxes and class ids were carried right.
    v = model.val(data=a.data, split="test", imgsz=IMAGE_SIZE, batch=16, device="cpu", plots=False, workers=0,
                  verbose=False, save_json=False)
    own = {"map50": float(v.box.map50), "map50_95": float(v.box.map)}
    out = {"names": {int(k): n for k, n in model.names.items()}, "images": preds, "ultralytics_test_metrics": own,
           "network_attempts": net, "settings": {"conf": EVAL_CONF, "iou": EVAL_IOU, "max_det": EVAL_MAX_DET}}
    Path(a.result).write_text(json.dumps(out))


# =====================================================================================================
# The benchmark (recogen's venv)
# =====================================================================================================
def _splits():
    """The seed-0 splits of ``DATA`` at ``IMAGE_SIZE`` px, as the recogen run builds them."""
    sys.path.insert(0, str(ROOT))
    from recogen.data.base import DataOptions
    from recogen.data.dense import create_dense_dataset

    return create_dense_dataset(DATA, DataOptions(image_size=IMAGE_SIZE, channels=3))


def write_yolo_data(splits, root: Path) -> Path:
    """The splits as Ultralytics files; data.yaml gets an absolute ``path:`` (else Ultralytics resolves
    relative folders against its own datasets directory)."""
    from recogen.data.formats import write_yolo

    yaml_path = write_yolo({"train": splits.train, "val": splits.val, "test": splits.test}, splits.classes, root)
    yaml_path.write_text(f"path: {root.resolve()}\n" + yaml_path.read_text())
    return yaml_path


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    return env


def _run_logged(cmd: list[str], log: Path, env: dict[str, str], cwd: Path = ROOT) -> float:
    """Run ``cmd`` with stdout+stderr into ``log``; returns wall seconds; a failure shows the log's tail."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        sys.exit(f"command failed (exit {rc}): {shlex.join(cmd)}\n--- {log} (tail) ---\n{tail}")
    return wall


def run_recogen(out: Path, threads: int, extra: list[str]) -> dict:
    """``recogen detect train --data shapes:600 --image-size 128 --out DIR`` (+ ``extra``, for smoke tests)."""
    exe = ROOT / ".venv" / "bin" / "recogen"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "recogen"]
    cmd += ["detect", "train", "--data", DATA, "--image-size", str(IMAGE_SIZE), "--out", str(out / "recogen_run"), *extra]
    print(f"recogen: {shlex.join(cmd)}", flush=True)
    wall = _run_logged(cmd, out / "recogen.log", _env(threads))
    m = json.loads((out / "recogen_run" / "metrics.json").read_text())
    log = (out / "recogen.log").read_text(errors="replace").splitlines()
    auto = next((line for line in log if line.startswith("auto:")), "")
    return {"cmd": shlex.join(cmd), "wall_s": round(wall, 1), "map_50": m["map_50"], "map": m["map"],
            "map_75": m["map_75"], "mar_100": m["mar_100"], "split": m["split"], "num_images": m["num_images"],
            "num_boxes": m["num_boxes"], "auto": auto, "defaults_overridden": bool(extra)}


def run_yolo(splits, out: Path, a) -> dict:
    yaml_path = write_yolo_data(splits, out / "yolo_data")
    env = {**_env(a.threads), "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(out / "yolo_config")}
    train_json, pred_json = out / "yolo_train.json", out / "yolo_pred.json"
    cmd = [a.yolo_python, str(Path(__file__).resolve()), "_yolo-train", "--data", str(yaml_path),
           "--project", str((out / "yolo_runs").resolve()), "--hours", f"{a.budget_min / 60:.6f}",
           "--threads", str(a.threads), "--workers", str(a.yolo_workers), "--result", str(train_json)]
    print(f"yolo: {shlex.join(cmd)}", flush=True)
    wall = _run_logged(cmd, out / "yolo_train.log", env)
    tr = json.loads(train_json.read_text())
    cmd = [a.yolo_python, str(Path(__file__).resolve()), "_yolo-predict", "--weights", tr["best"],
           "--images", str(out / "yolo_data" / "images" / "test"), "--data", str(yaml_path),
           "--threads", str(a.threads), "--result", str(pred_json)]
    _run_logged(cmd, out / "yolo_predict.log", env)
    pj = json.loads(pred_json.read_text())
    m = score_yolo(pj, splits)
    return {"wall_s": round(wall, 1), "train_call_s": tr["train_call_s"], "budget_s": round(a.budget_min * 60, 1),
            "epochs_completed": tr["epochs_completed"], "torch_threads": tr["torch_threads_during_training"],
            "ultralytics": tr["ultralytics"], "map_50": m["map_50"], "map": m["map"], "map_75": m["map_75"],
            "mar_100": m["mar_100"], "num_images": len(splits.test),
            "num_boxes": sum(len(b) for b in splits.test.boxes),
            "ultralytics_own_test": pj["ultralytics_test_metrics"],
            "ultralytics_own_val_last": {k: v for k, v in tr["val_metrics_ultralytics"].items() if "mAP" in k},
            "network_attempts": tr["network_attempts"] + pj["network_attempts"], "eval_settings": pj["settings"],
            "workers": a.yolo_workers}


def score_yolo(pj: dict, splits) -> dict:
    """COCO metrics of the peer's test predictions with recogen's own metric code."""
    import torch

    from recogen.data.formats.writers import _file_name
    from recogen.metrics.detection import detection_metrics

    ours = {n: i for i, n in enumerate(splits.classes)}
    to_ours = {int(k): ours[n] for k, n in pj["names"].items()}  # by class NAME, not position
    test = splits.test
    preds = []
    for i in range(len(test)):
        p = pj["images"][_file_name(i)]  # write_yolo names the i-th image of a split img_{i:05d}.png
        preds.append({"boxes": torch.tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4),
                      "scores": torch.tensor(p["scores"], dtype=torch.float32),
                      "labels": torch.tensor([to_ours[c] for c in p["labels"]], dtype=torch.int64)})
    targets = [{"boxes": b, "labels": lab} for b, lab in zip(test.boxes, test.labels)]
    return detection_metrics(preds, targets, splits.classes)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
    return f"{cpu}; {len(os.sched_getaffinity(0))} usable cores of {os.cpu_count()}"


def main() -> None:
    global DATA  # --data replaces the default for _splits() and run_recogen()
    if len(sys.argv) > 1 and sys.argv[1] == "_yolo-train":
        return yolo_train_main(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "_yolo-predict":
        return yolo_predict_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DATA, help=f"data set for both (default {DATA}; digit-scenes for issue 10)")
    ap.add_argument("--budget-min", type=float, default=8.5, help="YOLO's training time (Ultralytics time=)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads for both")
    ap.add_argument("--only", choices=("recogen", "yolo"))
    ap.add_argument("--yolo-python", default=DEFAULT_YOLO_PYTHON)
    ap.add_argument("--yolo-workers", type=int, default=0, help="Ultralytics dataloader workers")
    ap.add_argument("--recogen-args", default="",
                    help="extra options for recogen (smoke tests only, e.g. '--epochs 2'; the result is then "
                         "marked as NOT the defaults)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench" / "detect_vs_yolo"))
    a = ap.parse_args()
    DATA = a.data
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} exists and is not empty; pass a new --out")
    out.mkdir(parents=True, exist_ok=True)
    if a.only != "recogen" and not Path(a.yolo_python).is_file():
        sys.exit(f"no Python at {a.yolo_python}; create the YOLO venv: python3 -m venv /tmp/yolovenv && "
                 f"/tmp/yolovenv/bin/pip install -c constraints.txt torch==2.14.1 torchvision==0.29.1 ultralytics")
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "threads": a.threads,
                    "data": DATA, "image_size": IMAGE_SIZE, "budget_min": a.budget_min}
    print(f"machine: {result['machine']}; threads {a.threads}; budget {a.budget_min} min", flush=True)
    splits = _splits()
    print(f"data {DATA} at {IMAGE_SIZE} px: {len(splits.train)} train / {len(splits.val)} val / "
          f"{len(splits.test)} test images, {len(splits.classes)} classes", flush=True)
    if a.only != "yolo":
        result["recogen"] = run_recogen(out, a.threads, shlex.split(a.recogen_args))
        r = result["recogen"]
        print(f"recogen: {r['wall_s']} s, test mAP50 {r['map_50']:.4f}, mAP50-95 {r['map']:.4f}", flush=True)
        if (r["num_images"], r["num_boxes"]) != (len(splits.test), sum(len(b) for b in splits.test.boxes)):
            print("WARNING: recogen's test split differs from the one the peer is scored on", flush=True)
    if a.only != "recogen":
        result["yolo"] = run_yolo(splits, out, a)
        y = result["yolo"]
        print(f"yolo: {y['wall_s']} s ({y['epochs_completed']} epochs), test mAP50 {y['map_50']:.4f}, "
              f"mAP50-95 {y['map']:.4f}", flush=True)
        if y["network_attempts"]:
            print(f"WARNING: the YOLO side tried the network {len(y['network_attempts'])} time(s): "
                  f"{y['network_attempts'][:3]}", flush=True)
    (out / "result.json").write_text(json.dumps(result, indent=2))

    rows = [("", "recogen defaults", f"YOLO11n scratch ({a.budget_min:g} min)")]
    get = lambda side, k, fmt="{:.4f}": fmt.format(result[side][k]) if side in result else "-"  # noqa: E731
    rows += [(name, get("recogen", k), get("yolo", k)) for name, k in
             (("test mAP50", "map_50"), ("test mAP50-95", "map"), ("test mAP75", "map_75"), ("test AR100", "mar_100"))]
    rows.append(("wall s (whole process)", get("recogen", "wall_s", "{:.1f}"), get("yolo", "wall_s", "{:.1f}")))
    if "yolo" in result:
        y = result["yolo"]
        rows.append(("YOLO epochs / threads", "", f"{y['epochs_completed']} / {y['torch_threads']}"))
        rows.append(("YOLO own test mAP50 / 50-95", "",
                     f"{y['ultralytics_own_test']['map50']:.4f} / {y['ultralytics_own_test']['map50_95']:.4f}"))
    if "recogen" in result and result["recogen"]["defaults_overridden"]:
        rows.append(("NOTE", f"NOT the defaults: {a.recogen_args}", ""))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"| {r[0]:<{w[0]}} | {r[1]:>{w[1]}} | {r[2]:>{w[2]}} |")
    print(f"mAP50 recogen {get('recogen', 'map_50')} yolo {get('yolo', 'map_50')}; "
          f"mAP50-95 recogen {get('recogen', 'map')} yolo {get('yolo', 'map')}; "
          f"wall recogen {get('recogen', 'wall_s', '{:.1f}')} s yolo {get('yolo', 'wall_s', '{:.1f}')} s")
    print(f"wrote {out / 'result.json'}")


if __name__ == "__main__":
    main()
