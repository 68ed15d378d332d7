"""Fine-tuned vs from scratch at an equal wall-clock budget, on a small real data set (issue 13).

    python benchmarks/finetune_vs_scratch.py [--arch tv:resnet18] [--source textures] [--source-budget 5m]
        [--target mnist-5k] [--limit 100] [--image-size 32] [--budget 60s] [--seeds 0 1 2]
        [--arms finetune finetune-frozen scratch default] [--json OUT.json] [--keep DIR] [--quick]

    # with network (or the file imported by `recogen weights import`): the library's published weights
    python benchmarks/finetune_vs_scratch.py --pretrained --arch tv:resnet18 --image-size 64 --json OUT.json

Protocol. Published ImageNet weights cannot be fetched on the machine these figures come from (no
network), so by default the script makes its own "published" weights, offline and honestly labelled:

1. **Pretrain** ``--arch`` (a ``tv:``/``timm:`` library model) on the SOURCE real data set:
   ``recogen classify train --data SOURCE --model ARCH --image-size S --budget SOURCE_BUDGET --seed 0``.
2. **Save it as the library publishes it**: the run's state dict in the library's own layout (the
   torchvision/timm key names, a 3-channel first conv whose RGB filters are the gray filter / 3, so that
   folding them back onto gray gives the trained filter exactly, and the library's 1000-class head,
   freshly initialised: the source classes are not carried over), checked key by key and shape by shape
   against the library's published layout, written as ``ARCH_source.pth`` (a plain ``torch.save`` state
   dict, torchvision's format). One file, made once, used for every seed, as a published file is.
3. **Target**: a different real data set with few training images (``--limit``, drawn by the seed),
   its own validation split and its fixed test split. Per seed, interleaved (the order rotates from
   seed to seed so that a drift of the machine's speed favours no arm), every arm trains with the SAME
   ``--budget`` (recogen plans the epochs and the LR schedule from the measured epoch time so that the
   run ends within it; data loading counts; a run whose data are worth fewer epochs stops earlier,
   and the table gives each run's wall time):

   * ``finetune``: ``--model ARCH --weights ARCH_source.pth`` (or ``--pretrained``): recogen's fine-tuning
     defaults (new head, backbone learning rate x0.1 = the default ``--backbone-lr-mult``);
   * ``finetune-frozen``: the same with ``--freeze-backbone --unfreeze-at U`` (head only for U epochs);
   * ``scratch``: ``--model ARCH``, the same architecture and size from random initialisation;
   * ``default``: ``recogen classify train`` with no model option (recogen's default, cnn-s here) at
     the data's own size.

   Nothing else is set: every arm uses recogen's defaults (batch, LR, augmentation, label smoothing),
   so no hyper-parameter was chosen on any split; the validation accuracy (best epoch, the checkpoint
   kept) and the test accuracy (that checkpoint on the fixed test split) are both recorded.

Each run is timed as a subprocess, start to exit (interpreter start-up and imports included; the
budget counts from the start of the run inside it). ``--quick``: a tiny smoke run in this process (digits ->
faces, one epoch each, for tests; its figures mean nothing). Printed: one line per run, a markdown table of the medians and the
per-seed fine-tune minus scratch differences. Timings are valid only on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bench_common

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


ARMS = ("finetune", "finetune-frozen", "scratch", "default")


# ------------------------------------------------------------------------------------------ running
def train(args: list[str], out: Path, in_process: bool) -> dict:
    """``recogen classify train ARGS --out OUT``: wall and CPU seconds, epochs, best val and test accuracy."""
    cmd = ["classify", "train", *args, "--out", str(out), "--no-progress"]
    if in_process:
        import resource

        from recogen.cli import main

        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        rc = main(cmd)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        if rc not in (0, None):
            sys.exit(f"recogen {' '.join(cmd)} failed with {rc}")
    else:
        _, wall, cpu = bench_common.run_timed([sys.executable, "-m", "recogen", *cmd], ROOT, "recogen")
    hist = json.loads((out / "history.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    card = json.loads((out / "model.json").read_text())
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "epochs": len(hist),
            "val_accuracy": max(h["val_acc"] for h in hist if "val_acc" in h),
            "test_accuracy": round(metrics["accuracy"], 4), "test_split": metrics.get("split"),
            "test_images": metrics.get("num_images"), "model": card.get("model"), "image_size": card.get("image_size")}


# ------------------------------------------------------------------------------------------ weights
def library_layout(arch: str) -> dict:
    """The state dict (names and shapes, random values) of ``arch`` as its library publishes it."""
    prefix, _, name = arch.partition(":")
    if prefix == "tv":
        import torchvision.models as tvm

        return tvm.get_model(name, weights=None).state_dict()
    if prefix == "timm":
        import timm

        return timm.create_model(name, pretrained=False).state_dict()
    sys.exit(f"--arch {arch!r}: give a library model, tv:NAME or timm:NAME")


def save_published(run: Path, arch: str, dest: Path) -> dict:
    """Write the run's weights in ``arch``'s published layout (see the module docstring, step 2) to
    ``dest``; returns what was done to which keys."""
    import torch
    from safetensors.torch import load_file

    trained = load_file(str(run / "model.safetensors"))
    ref = library_layout(arch)
    out, stem, head = {}, [], []
    for k, r in ref.items():
        v = trained.get(k)
        if v is not None and v.shape == r.shape:
            out[k] = v.clone()
        elif v is not None and v.ndim == 4 and r.ndim == 4 and v.shape[1] == 1 and r.shape[1] == 3 and v.shape[0] == r.shape[0]:
            out[k] = v.repeat(1, 3, 1, 1) / 3  # folded back (summed over RGB) it is the trained gray filter
            stem.append(k)
        elif v is not None and v.shape[0] != r.shape[0] and r.shape[0] == 1000:
            out[k] = r.clone()  # the published 1000-class head, freshly initialised
            head.append(k)
        else:
            sys.exit(f"cannot place {k}: trained {None if v is None else tuple(v.shape)}, published {tuple(r.shape)}")
    extra = sorted(set(trained) - set(ref))
    if extra:
        sys.exit(f"the trained run has keys the published layout lacks: {extra[:5]}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, dest)
    return {"file": str(dest), "keys": len(out), "stem_expanded_to_rgb": stem, "head_reinitialised_1000": head}


# ------------------------------------------------------------------------------------------ main
def machine(threads_note: str) -> dict:
    import lightning
    import timm
    import torch
    import torchvision

    import recogen

    return {"cpu": bench_common.cpu_name(), "cores": len(os.sched_getaffinity(0)), "threads": threads_note,
            "nice": os.nice(0), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "lightning": lightning.__version__, "recogen": recogen.__version__, "code": bench_common.code_state()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="tv:resnet18", help="library model, tv:NAME or timm:NAME (default tv:resnet18)")
    ap.add_argument("--source", default="textures", help="real data set to pretrain on (default textures)")
    ap.add_argument("--source-budget", default="5m", help="pretraining budget (default 5m)")
    ap.add_argument("--source-args", default="", help="extra options of the pretraining run, one string")
    ap.add_argument("--weights", type=Path, help="fine-tune from this state dict instead of pretraining one")
    ap.add_argument("--pretrained", action="store_true",
                    help="fine-tune from the library's published weights (--pretrained: network or an imported file)")
    ap.add_argument("--target", default="mnist-5k", help="real data set to fine-tune on (default mnist-5k)")
    ap.add_argument("--limit", type=int, default=100, help="training images of the target (default 100)")
    ap.add_argument("--image-size", type=int, default=32, help="input size of the ARCH arms (default 32)")
    ap.add_argument("--budget", default="60s", help="the equal wall-clock budget of every target run (default 60s)")
    ap.add_argument("--unfreeze-at", type=int, default=5, help="finetune-frozen: head only before this epoch (default 5)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--json", type=Path, metavar="OUT", help="write every number to this JSON file")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="keep the run folders here (default: a temp folder)")
    ap.add_argument("--quick", action="store_true", help="a seconds-long smoke run in this process (figures mean nothing)")
    a = ap.parse_args()

    in_process = a.quick
    if a.quick:  # small sets with small val/test splits: the evaluations dominate a one-epoch run
        a.source, a.target, a.limit = "digits", "faces", 40
        a.seeds, a.image_size, a.arms = a.seeds[:1], 16, [x for x in a.arms if x in ("finetune", "scratch")]
        budget_args, src_args = ["--epochs", "1"], ["--epochs", "1", "--limit", "64", "--batch-size", "32"]
        a.unfreeze_at = 0
    else:
        budget_args, src_args = ["--budget", a.budget], ["--budget", a.source_budget]
    common_tgt = ["--data", a.target, "--limit", str(a.limit)]
    src_args += a.source_args.split()

    with tempfile.TemporaryDirectory(prefix="finetune_vs_scratch_") as tmp:
        work = a.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t_start = time.strftime("%Y-%m-%d %H:%M")
        load_start = os.getloadavg()
        source = None
        if a.pretrained:
            start = ["--pretrained"]
            weights_note = f"{a.arch}'s published weights (--pretrained)"
        elif a.weights:
            start = ["--weights", str(a.weights)]
            weights_note = f"--weights {a.weights}"
        else:
            src_run = work / "source"
            r = train(["--data", a.source, "--model", a.arch, "--image-size", str(a.image_size), "--seed", "0", *src_args],
                      src_run, in_process)
            saved = save_published(src_run, a.arch, work / f"{a.arch.replace(':', '_')}_source.pth")
            source = {**r, "data": a.source, "options": src_args, "saved": saved}
            print(f"source: {a.arch} on {a.source}, {r['epochs']} epochs in {r['wall_s']:.1f} s, val {r['val_accuracy']:.4f}, "
                  f"its test {r['test_accuracy']:.4f}; saved in the published layout as {saved['file']}", flush=True)
            start = ["--weights", saved["file"]]
            weights_note = f"pretrained here on {a.source} ({r['epochs']} epochs, {r['wall_s']:.0f} s)"
        arm_args = {
            "finetune": ["--model", a.arch, "--image-size", str(a.image_size), *start],
            "finetune-frozen": ["--model", a.arch, "--image-size", str(a.image_size), *start,
                                "--freeze-backbone", "--unfreeze-at", str(a.unfreeze_at)],
            "scratch": ["--model", a.arch, "--image-size", str(a.image_size)],
            "default": [],
        }
        rows = []
        for i, seed in enumerate(a.seeds):
            order = a.arms[i % len(a.arms):] + a.arms[:i % len(a.arms)]  # rotate: no arm always first
            row = {"seed": seed, "order": order}
            for arm in order:
                out = work / f"{arm}_seed{seed}"
                r = row[arm] = train([*common_tgt, "--seed", str(seed), *budget_args, *arm_args[arm]], out, in_process)
                print(f"seed {seed}: {arm:15s} {r['model']:>14s} {r['image_size']} px  {r['epochs']:3d} epochs  "
                      f"{r['wall_s']:6.1f} s  val {r['val_accuracy']:.4f}  test {r['test_accuracy']:.4f}", flush=True)
            for arm in ("finetune", "finetune-frozen"):
                if arm in row and "scratch" in row:
                    row[f"{arm}_minus_scratch"] = round(row[arm]["test_accuracy"] - row["scratch"]["test_accuracy"], 4)
            rows.append(row)

    med = lambda arm, k: statistics.median(r[arm][k] for r in rows)  # noqa: E731
    summary = {arm: {k: med(arm, k) for k in ("test_accuracy", "val_accuracy", "wall_s", "epochs")} for arm in a.arms}
    print(f"\n{a.target}, {a.limit} training images, budget {' '.join(budget_args)} per run, "
          f"{len(rows)} seed(s) ({', '.join(map(str, a.seeds))}); start: {weights_note}")
    print("\n| arm | model | size | test accuracy (median) | per seed | val accuracy (median) | wall s (median) | epochs (median) |")
    print("|---|---|---|---|---|---|---|---|")
    for arm in a.arms:
        s = summary[arm]
        per = " / ".join(f"{r[arm]['test_accuracy']:.3f}" for r in rows)
        print(f"| {arm} | {rows[0][arm]['model']} | {rows[0][arm]['image_size']} | **{s['test_accuracy']:.3f}** | {per} | "
              f"{s['val_accuracy']:.3f} | {s['wall_s']:.1f} | {s['epochs']:g} |")
    for arm in ("finetune", "finetune-frozen"):
        key = f"{arm}_minus_scratch"
        if rows and key in rows[0]:
            diffs = [r[key] for r in rows]
            summary[key] = {"per_seed": diffs, "median": statistics.median(diffs)}
            verdict = ("beats scratch on every seed" if min(diffs) > 0 else "does NOT beat scratch on any seed"
                       if max(diffs) <= 0 else "beats scratch on some seeds only")
            summary[key]["verdict"] = verdict
            print(f"{arm} - scratch, test accuracy per seed: {', '.join(f'{d:+.3f}' for d in diffs)} "
                  f"(median {statistics.median(diffs):+.3f}): {arm} {verdict}")
    info = machine(os.environ.get("OMP_NUM_THREADS", "torch default"))
    info["loadavg_start_end"] = [round(load_start[0], 2), round(os.getloadavg()[0], 2)]
    print(f"machine: {info}")
    if a.json:
        bench_common.write_result(a.json, "finetune_vs_scratch", started=t_start, quick=a.quick, arch=a.arch,
                                  source=source, start=weights_note, target=a.target, limit=a.limit, image_size=a.image_size,
                                  budget=" ".join(budget_args), arms={k: arm_args[k] for k in a.arms}, seeds=a.seeds,
                                  versions=info, runs=rows, summary=summary)


if __name__ == "__main__":
    main()
