"""Write BENCHMARKS.md from the benchmarks' result files; with ``--run``, run the benchmarks first (``make bench``).

Every benchmark is one entry of :data:`BENCHMARKS`: its command, the JSON it writes under
``benchmarks/results/``, how that JSON becomes a table, and whether it needs a GPU. BENCHMARKS.md is
generated: a header naming this machine and the versions, then per benchmark its latest result (date,
machine, code, runs, summary, table) or, where there is none, a line saying it was not measured and why
— never an older number dressed as current. The analysis written by hand when a benchmark was studied
lives in ``benchmarks/notes/NAME.md`` and is appended under its benchmark, dated.

    python benchmarks/report.py              # rewrite BENCHMARKS.md from the result files
    python benchmarks/report.py --run        # run every CPU benchmark (hours on 2 cores), then rewrite
    python benchmarks/report.py --run --only ddp_scaling data_loading
    python benchmarks/report.py --run --gpu  # on a GPU machine: the GPU rows too
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
NOTES = HERE / "notes"
PY = sys.executable


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _f(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else str(v)


# ------------------------------------------------------------------------------------------ renderers
# Each takes a result JSON and returns (summary markdown, table markdown). New benchmarks write "summary"
# and "table" themselves (generic); the older ones' JSON is turned into a table here.
def render_generic(d: dict[str, Any]) -> tuple[str, str]:
    t = d.get("table") or {}
    return d.get("summary", ""), _table(t["columns"], t["rows"]) if t else ""


def render_classify_defaults(d: dict[str, Any]) -> tuple[str, str]:
    rows = []
    for r in d["runs"]:
        rec, ker = r.get("recogen", r), r.get("keras", {})
        rows.append([r.get("seed"), _f(rec.get("wall_s"), 1) + " s", _f(rec.get("test_accuracy")),
                     _f(ker.get("wall_s"), 1) + " s" if ker else "-", _f(ker.get("test_accuracy")) if ker else "-"])
    s = d["summary"]
    keras = (f"(Keras {_f(s['keras']['median_test_accuracy'])}), whole-process time ratio recogen/Keras "
             f"**{_f(s['median_of_ratios'], 2)}** (median of per-seed ratios)" if s.get("keras")
             else "(the Keras reference was not run: no KERAS_PYTHON)")
    summ = (f"`recogen classify train --data {d['data']}` with its defaults against the Keras tutorial CNN on the same "
            f"split, seeds {d['seeds']}: median test accuracy **{_f(s['recogen']['median_test_accuracy'])}** "
            f"{keras}. Target (issue 10): >= 0.990 in <= 1.0x.")
    return summ, _table(["seed", "recogen wall", "recogen test acc.", "Keras wall", "Keras test acc."], rows)


def render_dense_defaults(d: dict[str, Any]) -> tuple[str, str]:
    s, task = d["summary"], d["task"]
    if task == "detect":
        cols = ["seed", "wall", "epochs", "test mAP50-95", "mAP50", "mAP75"]
        rows = [[r["seed"], _f(r["wall_s"], 1) + " s", r.get("epochs_trained"), _f(r.get("map")), _f(r.get("map_50")),
                 _f(r.get("map_75"))] for r in d["runs"]]
        head = f"median test mAP50-95 **{_f(s['median_map'])}** in {_f(s['median_wall_s'], 1)} s (target >= 0.55 within 8.5 min)"
    else:
        cols = ["seed", "wall", "epochs", "test mIoU", "pixel acc.", "mean Dice"]
        rows = [[r["seed"], _f(r["wall_s"], 1) + " s", r.get("epochs_trained"), _f(r.get("miou")),
                 _f(r.get("pixel_accuracy")), _f(r.get("mean_dice"))] for r in d["runs"]]
        head = (f"median test mIoU **{_f(s['median_miou'])}**, worst class {_f(s.get('worst_class_iou_median'))}, "
                f"in {_f(s['median_wall_s'], 1)} s")
    return (f"`recogen {task} train --data {d['data']}` with its defaults, seeds {d['seeds']}, whole command timed: "
            f"{head}."), _table(cols, rows)


def render_generate_judge(d: dict[str, Any]) -> tuple[str, str]:
    rows = []
    for fam, s in d["summary"].items():
        seeds = s.get("seeds", d["seeds"])
        rows.append([fam, ", ".join(map(str, seeds)), _f(s["median_fid"], 2), _f(s["median_ratio"], 2) + "x",
                     ", ".join(_f(r, 2) for r in s.get("ratios", [])), _f(s["median_wall_s"], 1) + " s",
                     _f(s.get("median_sample_s"), 1) + " s"])
    floors = ", ".join(_f(f["fid"], 3) for f in d["floors"].values())
    return (f"Each family trained with `recogen generate train --data {d['data']} --model FAMILY` (defaults), {d['n']} "
            f"samples scored by an independent judge ({d['judge_recipe']['version']}) against held-out real images; "
            f"the real-vs-real floor FID per seed {floors}. Ratio = FID / floor, median over the family's seeds "
            "(issue 10's targets: best <= 1.5x, vae <= 5x, ddpm <= 3x)."), _table(
        ["family", "seeds", "FID (median)", "FID / floor (median)", "per seed", "train wall (median)", "1,000 samples"], rows)


def render_finetune(d: dict[str, Any]) -> tuple[str, str]:
    rows = [[arm, _f(v["test_accuracy"]), _f(v["val_accuracy"]), _f(v["wall_s"], 1) + " s", v["epochs"]]
            for arm, v in d["summary"].items() if isinstance(v, dict) and "test_accuracy" in v]
    verdicts = "; ".join(f"{k.replace('_minus_', ' - ')}: median {_f(v['median'])} ({v['verdict']})"
                         for k, v in d["summary"].items() if "_minus_" in k)
    return (f"{d['arch']} fine-tuned on {d['target']} (limit {d['limit']} per class, {d['image_size']} px, "
            f"{d['budget']}) from {d['start']}, against the same network from scratch and recogen's default, equal "
            f"time, seeds {d['seeds']}. {verdicts}."), _table(["arm", "test acc. (median)", "val acc.", "wall", "epochs"], rows)


def render_explain_latency(d: dict[str, Any]) -> tuple[str, str]:
    rows = [[r["model"], r["task"], r["image_size"], r["method"], _f(r["median_ms"], 1)] for r in d["rows"]]
    return (f"Time of `recogen explain` per image (in-process, after {d['warmup_images']} warm-up images), "
            f"{d['images']} images x {d['rounds']} rounds, median."), _table(["model", "task", "px", "method", "ms / image"], rows)


def render_serve_load(d: dict[str, Any]) -> tuple[str, str]:
    rows = [[r.get("backend"), "yes" if r.get("flood") else "no", r["clients"], r["requests"], _f(r["rps"], 1), _f(r["p50_ms"], 1), _f(r["p95_ms"], 1),
             r["failures"], _f(r["healthz"]["p95_ms"], 1)] for r in d["rows"]]
    return (f"`recogen serve` of a {d['model']} run ({d['image_size']} px) under {d['seconds']:.0f} s of load per row "
            "(concurrent clients posting images), `/healthz` probed throughout."), \
        _table(["backend", "flood", "clients", "requests", "requests/s", "p50 ms", "p95 ms", "failures", "healthz p95 ms"], rows)


def render_train_throughput(d: dict[str, Any]) -> tuple[str, str]:
    rows, per = [], []
    for r in d["results"]:
        st = r["settings"]
        rows.append([r["task"], f"{st['model']}, {st['data']}, batch {st['batch_size']}", _f(r["plain_img_s"], 0),
                     _f(r["recogen_img_s"], 0), f"**{_f(r['ratio'], 2)}**", _f(r["cpu_ratio"], 2),
                     ", ".join(_f(x["ratio"], 2) for x in r["rounds"])])
        per.append(f"{r['task']} {_f(r['ratio'], 2)}")
    return (f"recogen's training loop against a plain hand-written PyTorch loop of the same model, data, batch, optimiser "
            f"and precision ({d.get('precision', 'fp32')}), torch {d.get('torch', '?')}, {d.get('threads', '?')} threads; "
            "images/s from the wall time between epoch starts (validation, logging and checkpoints inside), median of "
            f"the epochs after the first, rounds interleaved. recogen's optimiser: "
            f"{'fused kernels (the plain loop: torch default)' if d.get('optimizer') == 'fused' else 'torch default (both)'}. "
            f"Median ratio recogen/plain: {', '.join(per)} "
            f"(target: >= 1.0 for every task). {d.get('remark', '')}").strip(), \
        _table(["task", "setting", "plain img/s", "recogen img/s", "ratio (median)", "CPU-time ratio", "per round"], rows)


def render_data_loading(d: dict[str, Any]) -> tuple[str, str]:
    rows = [[name, f"{a['images']:,}", _f(a["images_per_s"], 0), _f(a["vs_torchvision"], 2),
             _f(a["vs_torchvision_per_cpu_s"], 2), ", ".join(_f(x, 1) for x in a["load_average"])]
            for name, a in d["arms"].items()]
    return (f"{d['n']:,} JPEG images of 224 px in a class-folder tree, {d['workers']} workers, batch {d['batch_size']}, "
            f"{d['rounds']} interleaved round(s); each arm's images/s and its ratio to torchvision's ImageFolder + "
            "DataLoader in the same round (median over rounds). The machine's load average during each arm is shown: "
            "figures taken under load are noisy."), \
        _table(["arm", "images", "images/s", "vs torchvision", "vs torchvision (per CPU s)", "load average"], rows)


@dataclass
class Bench:
    """One benchmark: what ``--run`` executes and how its result file becomes a section."""

    name: str
    title: str
    command: list[str]
    render: Callable[[dict[str, Any]], tuple[str, str]] = render_generic
    gpu: bool = False
    cost: str = ""  # how long it takes here, for --run's plan
    result: str = ""  # the JSON under results/ (default NAME.json)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return RESULTS / (self.result or f"{self.name}.json")


def _b(script: str, *args: str) -> list[str]:
    return [PY, str(HERE / script), *args]


def _keras() -> list[str]:
    """The Keras reference runs where its own venv exists (``KERAS_PYTHON``, see the Makefile)."""
    k = os.environ.get("KERAS_PYTHON", "/tmp/kerasvenv/bin/python")
    return ["--keras-python", k] if Path(k).is_file() else []


# The order of BENCHMARKS.md. Commands write the JSON the entry reads.
BENCHMARKS: list[Bench] = [
    Bench("train_throughput", "Framework overhead: recogen against a plain PyTorch loop, every task",
          _b("train_throughput.py", "--task", "all", "--json", str(RESULTS / "train_throughput.json")),
          render_train_throughput, cost="~20 min"),
    Bench("ddp_scaling", "DDP scaling: 1 process against 2", _b("ddp_scaling.py"), cost="~6 min"),
    Bench("data_loading", "Folder data loading: recogen against ImageFolder + DataLoader",
          _b("data_loading.py", "--json", str(RESULTS / "data_loading.json")), render_data_loading,
          cost="~15 min at 20,000 images"),
    Bench("predict_stream", "Streaming predict: memory on a large folder",
          _b("predict_stream.py", "--json", str(RESULTS / "predict_stream.json")), cost="~15 min"),
    Bench("speed_recipe", "`--recipe speed`: training throughput on CIFAR-shaped data",
          _b("speed_recipe.py", "--accuracy", "--json", str(RESULTS / "speed_recipe.json")), cost="~20 min"),
    Bench("onnx_latency", "ONNX against eager latency (detection)",
          _b("detect_latency.py", "--json", str(RESULTS / "onnx_latency.json")), cost="~5 min"),
    Bench("serve_load", "Serving throughput (`benchmarks/serve_load.py`)",
          _b("serve_load.py", "--json", str(RESULTS / "serve_load.json")), render_serve_load, cost="~5 min"),
    Bench("synthetic_data", "Synthetic training data: a classifier with and without generated images",
          _b("synthetic_data.py"), cost="~1 h"),
    Bench("explain_latency", "Explain latency (`benchmarks/explain_latency.py`)",
          _b("explain_latency.py", "--images", "5", "--json", str(RESULTS / "explain_latency.json")),
          render_explain_latency, cost="~15 min"),
    Bench("classify_defaults", "Classification defaults on `mnist-5k` against the Keras tutorial CNN",
          _b("classify_defaults.py", "--data", "mnist-5k", "--seeds", "0", "1", "2", *_keras(), "--json",
             str(RESULTS / "classify_defaults.json")),
          render_classify_defaults, cost="~5 min (+ Keras with --keras-python)"),
    Bench("detect_defaults", "Detection defaults on `digit-scenes`",
          _b("dense_defaults.py", "--task", "detect", "--data", "digit-scenes", "--seeds", "0", "1", "2", "--json",
             str(RESULTS / "detect_defaults.json")), render_dense_defaults, cost="~25 min"),
    Bench("segment_defaults", "Segmentation defaults on `digit-scenes`",
          _b("dense_defaults.py", "--task", "segment", "--data", "digit-scenes", "--seeds", "0", "1", "2", "--json",
             str(RESULTS / "segment_defaults.json")), render_dense_defaults, cost="~25 min"),
    Bench("generate_judge", "Generation quality at equal time on `mnist-5k` (independent judge)",
          _b("generate_judge.py", "--seeds", "0", "1", "2", "--json", str(RESULTS / "generate_judge.json")),
          render_generate_judge, cost="~1.5 h"),
    Bench("finetune_vs_scratch", "Fine-tuned against from scratch at equal time (textures -> mnist-5k)",
          _b("finetune_vs_scratch.py", "--seeds", "0", "1", "2", "--json", str(RESULTS / "finetune_vs_scratch.json")),
          render_finetune, cost="~20 min"),
    Bench("finetune_vs_scratch_reverse", "Fine-tuned against from scratch at equal time (mnist-5k -> textures)",
          _b("finetune_vs_scratch.py", "--source", "mnist-5k", "--target", "textures", "--seeds", "0", "1", "2", "--json",
             str(RESULTS / "finetune_vs_scratch_reverse.json")), render_finetune, cost="~20 min"),
    # GPU rows: measured only on a machine with a CUDA device (one prepared run: --run --gpu).
    Bench("gpu_train_throughput", "GPU: framework overhead, every task",
          _b("train_throughput.py", "--task", "all", "--accelerator", "gpu", "--json", str(RESULTS / "gpu_train_throughput.json")),
          render_train_throughput,
          gpu=True),
    Bench("gpu_speed_recipe", "GPU: `--recipe speed` throughput on 50,000 CIFAR-shaped images against a plain loop and ResNet-18",
          _b("speed_recipe.py", "--n", "50000", "--json", str(RESULTS / "gpu_speed_recipe.json")), gpu=True),
    # Needs the model's files on the GPU machine (it has no network): --model DIR of a copied `hf download`.
    Bench("gpu_text2img", "GPU: text-to-image latency and memory of Stable Diffusion 1.5 (`recogen.text2img`)",
          _b("text2img_latency.py", "--json", str(RESULTS / "gpu_text2img.json")), gpu=True, cost="~5 min"),
]


def machine() -> str:
    """This machine and the versions the benchmarks run with."""
    import importlib.metadata as md

    def v(p: str) -> str:
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return "not installed"

    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return (f"{bench_common.cpu_name()}, {os.cpu_count()} cores; GPU: {gpu}; Python {platform.python_version()}, "
            f"torch {v('torch')}, torchvision {v('torchvision')}, lightning {v('lightning')}, timm {v('timm')}, "
            f"onnxruntime {v('onnxruntime')}")


def section(b: Bench, have_gpu: bool) -> str:
    """One benchmark's part of BENCHMARKS.md."""
    out = [f"## {b.title}", ""]
    cmd = " ".join(Path(c).relative_to(ROOT).as_posix() if c.startswith(str(ROOT)) else c for c in b.command[1:])
    out += [f"Command: `python {cmd}`" + (f" ({b.cost} here)" if b.cost else ""), ""]
    if not b.path.is_file():
        why = ("no GPU machine was lent to the session that wrote this file" if b.gpu and not have_gpu
               else "no result file yet (run the command above)")
        out += [f"**Not measured**: {why}.", ""]
    else:
        d = json.loads(b.path.read_text())
        try:
            summary, table = b.render(d)
        except (KeyError, TypeError, ValueError) as e:  # a result file of an older format: say so, show nothing old
            summary, table = f"**Not rendered**: {b.path.name} does not have the fields this report reads ({e!r}).", ""
        code = d.get("code") or (d.get("versions") or {}).get("code", "")
        runs = d.get("runs") if isinstance(d.get("runs"), int) else (len(d["runs"]) if isinstance(d.get("runs"), list) else None)
        meta = [f"measured {d.get('date', '?')}", f"on {d.get('machine', '?')}"]
        if code:
            meta.append(f"code {code}")
        if runs is not None:
            meta.append(f"{runs} run(s)/round(s)")
        out += [f"*{'; '.join(meta)}; raw numbers: `benchmarks/results/{b.path.name}`.*", ""]
        if summary:
            out += [summary, ""]
        if table:
            out += [table, ""]
    note = NOTES / f"{b.name}.md"
    if note.is_file():
        out += ["### Notes", "", "*Written by hand when the benchmark was studied; figures in them are from then.*", "",
                note.read_text().strip(), ""]
    return "\n".join(out)


def write_report(path: Path) -> None:
    have_gpu = any(b.path.is_file() for b in BENCHMARKS if b.gpu)
    head = ["# Benchmarks", "",
            "Generated by `python benchmarks/report.py` (`make bench` runs every benchmark first) on "
            f"{time.strftime('%Y-%m-%d %H:%M')}, code {bench_common.code_state()}. Each section gives its own "
            "date, machine and number of runs: results are kept per benchmark, so a section can be older than this "
            "page. Ratios are measured inside one run (interleaved rounds, medians): machines drift between runs.",
            "", f"This page written on: {machine()}.", "",
            "Contents: " + ", ".join(f"[{b.title.replace('`', '')}](#{b.name})" for b in BENCHMARKS), ""]
    body = [f'<a id="{b.name}"></a>\n\n' + section(b, have_gpu) for b in BENCHMARKS]
    history = NOTES / "history.md"
    if history.is_file():  # measurements of no current benchmark's result file: kept, as history
        body.append("## Earlier measurements\n\n" + history.read_text().strip() + "\n")
    path.write_text("\n".join(head) + "\n" + "\n".join(body))
    print(f"wrote {path}")


def run(benches: list[Bench]) -> None:
    """Run each benchmark's command in turn; a failed one is reported and the others still run."""
    failed = []
    for b in benches:
        print(f"== {b.name} ({b.cost or 'time unknown'}): {' '.join(b.command)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(b.command, cwd=ROOT)
        print(f"== {b.name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(b.name)
    if failed:
        print(f"failed: {', '.join(failed)} (their sections keep their last result file, dated)", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="store_true", help="run the benchmarks before writing")
    ap.add_argument("--gpu", action="store_true", help="with --run: also the GPU rows (needs a CUDA device)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="with --run: only these benchmarks")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    a = ap.parse_args()
    names = {b.name for b in BENCHMARKS}
    if a.only and not set(a.only) <= names:
        sys.exit(f"unknown benchmark(s) {sorted(set(a.only) - names)}; choose from {', '.join(sorted(names))}")
    if a.run:
        run([b for b in BENCHMARKS if (b.name in a.only if a.only else (a.gpu or not b.gpu))])
    write_report(a.out)


if __name__ == "__main__":
    main()
