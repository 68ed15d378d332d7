"""Every ``recogen ...`` command the README shows runs, in the README's order, in one working folder.

tests/test_readme.py checks that each command line of README.md's shell blocks parses; this file runs
each one (its ``readme_commands``/``to_argv``: optional ``[--json]`` parts included, ``a|b`` reduced
to ``a``) with the working directory set to a temporary folder that holds the README's placeholders,
made from the project's own data: real MNIST digits from ``mnist-5k`` (img.png, more_images/, one.png,
six.png, three.png, digit.png and hole.png, a white-square mask of digit.png's size), ``shapes`` scenes
(scene.png, street.jpg, photos/, scan.png), a ``masks:`` folder (my_set) and a YOLO set (my_yolo_set).
The file a ``weights import FILE --model tv:NAME|timm:NAME`` line reads gets the layout (keys, shapes)
of NAME's published weights with untrained values: the real file needs the network. torch.hub's and
the Hugging Face hub's caches point into the temporary folder, so ``weights import`` and
``--pretrained`` never touch the user's. A run folder that a command reads but that no README line
trains (e.g. ``runs/classify/digits``) is trained tiny by the fixture from FIXTURE_RUNS, and exported
to ONNX when a ``serve --backend onnx`` line serves it and no README line exports it. Nothing is
reordered: a command that reads a run only a later line trains fails, naming its line.

Every command runs as written plus these speed options (appended: the last of a repeated option wins):

- ``classify train``: ``--epochs 1 --limit 64 --image-size 32 --no-progress``; with ``--unfreeze-at E``
  the epochs are E + 1 instead, so that the whole network does train from epoch E as the README says
- ``detect train``: ``--epochs 1 --limit 16 --image-size 64 --batch-size 8
  --model-kwargs '{"width": 8, "fpn_channels": 32}' --no-progress`` (a narrow fcos-s, the default model)
- ``segment train``: ``--epochs 1 --limit 16 --image-size 32 --batch-size 8
  --model-kwargs '{"width": 4, "depth": 2}' --no-progress`` (a small unet, the default model)
- ``generate train``: ``--epochs 1 --limit 64 --image-size 16 --width 8 --no-progress``, and for
  ``--model ddpm`` also ``--steps 4`` (its saved sampling steps: later commands sample with 4 DDIM steps)
- ``detect``/``segment train`` of a library model (``--model tv:NAME``): the same without ``--model-kwargs``
- ``serve``: ``--port`` set to a free port (the README's 8000 may be taken); ``"$KEY"`` expanded from
  the environment, as the shell would. It runs as a subprocess; once ``GET /healthz`` answers 200 and
  ``GET /v1/models`` lists the served runs (401 without the key when ``--api-key`` is given) it is sent
  SIGTERM and must shut down cleanly.
- ``demo``: not run a second time: the session's ``demo_run`` fixture (conftest.py) ran
  ``recogen demo --out DIR --no-progress``; its run folder is checked.

Every other command runs in this process (``cli.main``: far cheaper than a fresh interpreter), must exit
0 and leave what it says it writes (``--out``, ``--save``, exports, metrics, reports, sample grids,
edits, heat maps, imported weights), and its output is read back: JSON parsed and counted, PNGs and
maps opened, metrics named. A failure names the README line and shows the command's stderr; a kind of
command with no check in CHECKS fails too, so a new README command gets one.
"""
from __future__ import annotations

import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from conftest import main_in_process
from test_readme import readme_commands, to_argv

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

COMMANDS = readme_commands()

SPEED = {
    "classify": ["--epochs", "1", "--limit", "64", "--image-size", "32", "--no-progress"],
    "detect": ["--epochs", "1", "--limit", "16", "--image-size", "64", "--batch-size", "8",
               "--model-kwargs", '{"width": 8, "fpn_channels": 32}', "--no-progress"],
    "segment": ["--epochs", "1", "--limit", "16", "--image-size", "32", "--batch-size", "8",
                "--model-kwargs", '{"width": 4, "depth": 2}', "--no-progress"],
    "generate": ["--epochs", "1", "--limit", "64", "--image-size", "16", "--width", "8", "--no-progress"],
}
# ddpm only (the other families refuse it): 4 DDIM steps instead of 15 for every later sampling (eval's
# 1,000 samples, --synthetic, sample, edit, serve); the conditional one samples twice per step (guidance).
SPEED_DDPM = ["--steps", "4"]

# Runs the README reads but may not train, by folder: (task, options of recogen.tasks.TASK.train).
# Tiny and seeded; only the ones no README line trains are made (see _fixture_runs).
_TINY_GEN = dict(data="digits", image_size=16, width=8, epochs=1, limit=64, progress=False, seed=0)
FIXTURE_RUNS: dict[str, tuple[str, dict]] = {
    "runs/classify/digits": ("classify", dict(data="digits", model="cnn-s", epochs=1, limit=64, progress=False, seed=0)),
    "runs/detect/shapes": ("detect", dict(data="shapes:40", image_size=64, model="fcos-s", epochs=1, batch_size=8,
                                          model_kwargs={"width": 8, "fpn_channels": 32}, progress=False, seed=0)),
    "runs/segment/shapes": ("segment", dict(data="shapes:40", image_size=32, model="unet", epochs=1, batch_size=8,
                                            model_kwargs={"width": 4, "depth": 2}, progress=False, seed=0)),
    "runs/generate/vae": ("generate", dict(model="vae", **_TINY_GEN)),
    "runs/generate/dcgan": ("generate", dict(model="dcgan", **_TINY_GEN)),
    "runs/generate/ddpm": ("generate", dict(model="ddpm", steps=4, **_TINY_GEN)),
    "runs/generate/ddpm-c": ("generate", dict(model="ddpm", conditional=True, steps=4, **_TINY_GEN)),
}
API_KEY = "readme-test-key"
SERVE_START_S = 240  # a fresh interpreter imports torch and loads every run first; the machine is shared


# ------------------------------------------------------------------------------- reading the lines
@functools.cache
def _parser():
    from recogen import cli

    return cli.build_parser()


def parse(argv: list[str]):
    """The namespace the real parser makes of ``argv`` (what the command will do, without guessing)."""
    return _parser().parse_args(argv)


def command_argv(line: str) -> list[str]:
    """The arguments a README line runs with: as written, plus the speed options of its ``train``."""
    argv = to_argv(line)
    if len(argv) > 1 and argv[1] == "train":
        speed = SPEED[argv[0]]
        if ":" in (getattr(parse(argv), "model", None) or ""):  # tv:NAME / timm:NAME: no fcos-s/unet options
            i = speed.index("--model-kwargs") if "--model-kwargs" in speed else len(speed)
            speed = speed[:i] + speed[i + 2:]
        argv += speed
        ns = parse(argv)
        if argv[0] == "generate" and getattr(ns, "model", None) == "ddpm":
            argv += SPEED_DDPM
        if getattr(ns, "unfreeze_at", None):  # one epoch past it, so the whole network does train
            argv += ["--epochs", str(ns.unfreeze_at + 1)]
    return argv


def _run_path(p: str) -> str:
    return os.path.normpath(p)


def runs_read(argv: list[str]) -> list[str]:
    """Run folders a command reads: RUN arguments, ``--synthetic RUN:N``, ``--features classifier:RUN``."""
    ns = parse(argv)
    refs = [ns.run] if getattr(ns, "run", None) else []
    refs += getattr(ns, "runs", None) or []
    if getattr(ns, "synthetic", None):
        refs.append(ns.synthetic.rsplit(":", 1)[0])
    if (getattr(ns, "features", None) or "").startswith("classifier:"):
        refs.append(ns.features.split(":", 1)[1])
    return [_run_path(r) for r in refs]


def _fixture_runs() -> tuple[list[str], list[str]]:
    """(runs the fixture trains, runs it exports to ONNX): those the README reads and never trains, and
    of those the ones a ``serve --backend onnx`` line serves that no README line exports to ONNX."""
    argvs = [command_argv(c) for c in COMMANDS]
    trained = {_run_path(getattr(parse(a), "out", None) or "?") for a in argvs if len(a) > 1 and a[1] == "train"}
    read = [r for a in argvs for r in runs_read(a)]
    missing = list(dict.fromkeys(r for r in read if r not in trained))
    exported = {_run_path(ns.run) for ns in map(parse, argvs)
                if ns.command == "export" and ns.format == "onnx" and ns.out is None}
    onnx_served = {_run_path(r) for ns in map(parse, argvs) if ns.command == "serve" and ns.backend == "onnx"
                   for r in ns.runs}
    to_export = [r for r in missing if r in onnx_served and r not in exported and FIXTURE_RUNS.get(r, ("",))[0] != "generate"]
    return missing, to_export


# ------------------------------------------------------------------------------------- the folder
def _write_placeholders(ws: Path) -> None:
    """The files the README's commands name, from the project's own data sets."""
    import numpy as np

    from recogen.data import DataOptions, create_dataset
    from recogen.data.formats import write_masks, write_yolo
    from recogen.data.images import write_png
    from recogen.data.shapes import SHAPE_CLASSES
    from recogen.data.shapes_scenes import make_scenes

    test = create_dataset("mnist-5k", DataOptions()).test  # real MNIST digits: 28 px, grey

    def digit(label: int, k: int = 0):
        return test.images[(test.labels == label).nonzero().flatten()[k]]

    write_png(digit(7), ws / "img.png")
    for label in (0, 4):
        write_png(digit(label), ws / "more_images" / f"{label}.png")
    write_png(digit(9), ws / "more_images" / "nested" / "9.png")  # folders are searched recursively
    write_png(digit(1), ws / "one.png")
    write_png(digit(6), ws / "six.png")
    write_png(digit(3), ws / "three.png")
    write_png(digit(2), ws / "digit.png")
    hole = np.zeros((28, 28), dtype=np.uint8)
    hole[9:19, 9:19] = 255  # white = fill
    Image.fromarray(hole).save(ws / "hole.png")

    def rgb(img) -> Image.Image:
        return Image.fromarray(img.permute(1, 2, 0).numpy())

    scenes = make_scenes(5, 64, seed=11).images
    rgb(scenes[0]).save(ws / "scene.png")
    rgb(scenes[1]).resize((96, 80)).save(ws / "street.jpg", quality=92)  # not square: boxes come back in its pixels
    (ws / "photos").mkdir()
    rgb(scenes[2]).save(ws / "photos" / "a.png")
    rgb(scenes[3]).save(ws / "photos" / "b.jpg", quality=92)
    rgb(scenes[4]).save(ws / "scan.png")
    write_masks(make_scenes(40, 32, seed=5), ["background", *SHAPE_CLASSES], ws / "my_set")
    write_yolo({"train": make_scenes(8, 64, seed=6), "val": make_scenes(4, 64, seed=7)}, list(SHAPE_CLASSES),
               ws / "my_yolo_set")
    for c in COMMANDS:
        if to_argv(c)[:2] == ["weights", "import"]:
            ns = parse(to_argv(c))
            _published_layout_file(ns.model, ws / ns.path)


def _published_layout_file(name: str, path: Path) -> None:
    """A state dict with the keys and shapes of ``name``'s published weights (random values: the real file
    needs the network), saved as the library publishes it: .pth for tv:, safetensors for timm:."""
    import torch

    source, arch = name.split(":", 1)
    if source == "tv":
        import torchvision

        torch.manual_seed(0)
        torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), path)
    else:
        import timm
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in timm.create_model(arch, pretrained=False).state_dict().items()}, path)


def _caches(ws: Path) -> Path:
    """Where the test points torch.hub's and the Hugging Face hub's caches (beside the working folder)."""
    return ws.parent / f"{ws.name}-caches"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The README's working folder: placeholders, plus the runs it reads but never trains."""
    from recogen.export import export_model
    from recogen.tasks import get_task

    ws = tmp_path_factory.mktemp("readme")
    _write_placeholders(ws)
    missing, to_export = _fixture_runs()
    unknown = [r for r in missing if r not in FIXTURE_RUNS]
    assert not unknown, f"README commands read {unknown}, which no README line trains; add them to FIXTURE_RUNS"
    for run in missing:
        task, opts = FIXTURE_RUNS[run]
        get_task(task).train(None, out=str(ws / run), **opts)
    for run in to_export:
        export_model(ws / run, "onnx")
    return ws


# ----------------------------------------------------------------------------------- running them
@dataclass
class Outcome:
    """What one README line did: exit code (None: it raised), stdout, stderr, when it started."""

    index: int
    line: str
    argv: list[str]
    rc: int | None
    out: str
    err: str
    started: float
    served: dict | None = None  # serve: (status, body) of GET /healthz, /v1/models (and without the key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# No proxy: an http_proxy of the environment must not see requests to this machine's own server.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, key: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"X-API-Key": key} if key else {})
    try:
        with _LOCAL.open(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Walk:
    """The README's lines run in order, each once: asking for line i runs every line before it first."""

    def __init__(self, ws: Path, logs: Path):
        self.ws, self.logs, self.done = ws, logs, []

    def through(self, i: int, capsys) -> Outcome:
        while len(self.done) <= i:
            k = len(self.done)
            self.done.append(self._run(k, COMMANDS[k], capsys))
        return self.done[i]

    def _run(self, k: int, line: str, capsys) -> Outcome:
        argv, t0 = command_argv(line), time.time()
        if argv[0] == "demo":  # conftest's demo_run already ran it once for the session
            return Outcome(k, line, argv, 0, "", "", t0)
        if argv[0] == "serve":
            return self._serve(k, line, argv, t0)
        try:
            rc, out, err = main_in_process(capsys, *argv)
        except Exception:  # a bug, not a user error: keep the traceback for the report
            out, err = capsys.readouterr()
            rc, err = None, err + traceback.format_exc()
        return Outcome(k, line, argv, rc, out, err, t0)

    def _serve(self, k: int, line: str, argv: list[str], t0: float) -> Outcome:
        """Start the server as a user would, ask it for its health and models, stop it."""
        port = _free_port()
        argv = [os.path.expandvars(a) for a in argv]  # "$KEY", as the shell expands it
        if "--port" in argv:
            argv[argv.index("--port") + 1] = str(port)
        else:
            argv += ["--port", str(port)]
        key = parse(argv).api_key
        out_f, err_f = self.logs / f"serve{k}.out", self.logs / f"serve{k}.err"
        with open(out_f, "w") as out, open(err_f, "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "recogen", *argv], cwd=self.ws, stdout=out, stderr=err)
        served: dict = {}
        try:
            deadline = time.monotonic() + SERVE_START_S
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    served["health"] = _get(f"http://127.0.0.1:{port}/healthz")
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(0.5)
            if "health" in served:
                served["models"] = _get(f"http://127.0.0.1:{port}/v1/models", key)
                served["models_without_key"] = _get(f"http://127.0.0.1:{port}/v1/models") if key else None
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # how a service manager stops it
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        return Outcome(k, line, argv, proc.returncode, out_f.read_text(), err_f.read_text(), t0, served)


@pytest.fixture(scope="module")
def walk(workspace, tmp_path_factory) -> Walk:
    return Walk(workspace, tmp_path_factory.mktemp("readme-logs"))


# --------------------------------------------------------------------------------------- checking
def _why(o: Outcome) -> str:
    return (f"README line: {o.line}\nran: recogen {' '.join(o.argv)}\nexit code: {o.rc}\n"
            f"--- stderr (end) ---\n{o.err[-4000:]}\n--- stdout (end) ---\n{o.out[-1500:]}")


def _png(path: Path, o: Outcome) -> tuple[int, int]:
    """``path`` is a PNG this line wrote (not an older file of the same name); returns its size."""
    assert path.is_file(), f"{path} was not written\n{_why(o)}"
    assert path.stat().st_mtime >= o.started - 0.05, f"{path} is older than the command\n{_why(o)}"
    with Image.open(path) as im:
        assert im.format == "PNG", (path, im.format)
        im.load()
        return im.size


def _fresh(path: Path, o: Outcome) -> None:
    assert path.is_file() and path.stat().st_size > 0, f"{path} was not written\n{_why(o)}"
    assert path.stat().st_mtime >= o.started - 0.05, f"{path} is older than the command\n{_why(o)}"


def _inputs(images: list[str], ws: Path) -> list[Path]:
    """The image files a predict command was given (folders searched recursively, as predict does)."""
    from recogen.data.images import expand_inputs

    return [Path(p) for p in expand_inputs([str(ws / i) for i in images])]


# The line a headline figure of each task's eval prints (format_metrics).
EVAL_WORDS = {"classify": "accuracy", "detect": "mAP", "segment": "mIoU"}


def check_train(ns, o: Outcome, ws: Path) -> None:
    assert getattr(ns, "out", None), f"a README train line without --out: name its run folder\n{_why(o)}"
    run = ws / ns.out
    for f in ("config.yaml", "model.json", "model.safetensors", "history.json", "splits.json", "report.html"):
        _fresh(run / f, o)
    card = json.loads((run / "model.json").read_text())
    assert card["task"] == ns.command, card
    history = json.loads((run / "history.json").read_text())
    assert len(history) == ns.epochs, history  # the speed options' epochs were honoured
    if ns.command == "generate":
        _png(run / "samples.png", o)
        assert card["model"] == getattr(ns, "model", card["model"]), card
        assert bool(card.get("conditional")) == getattr(ns, "conditional", False), card
    else:
        from recogen.tasks import get_task

        metrics = json.loads((run / "metrics.json").read_text())  # train ends with the test-split evaluation
        assert 0 <= metrics[get_task(ns.command).headline] <= 1, metrics
    if getattr(ns, "synthetic", None):  # options not given are absent from the namespace
        cfg = (run / "config.yaml").read_text()
        assert ns.synthetic in cfg, cfg


def check_eval(ns, o: Outcome, ws: Path) -> None:
    run = ws / ns.run
    if ns.command == "generate":
        assert "FID" in o.out and "KID" in o.out, _why(o)
        m = json.loads((run / "metrics.json").read_text())
        assert m["n_fake"] == ns.n and m["fid"] >= 0 and m["fid_floor"] >= 0, m
        assert m["features"].startswith(ns.features.split(":")[0]), m
    else:
        from recogen.tasks import get_task

        assert EVAL_WORDS[ns.command] in o.out and "wrote metrics" in o.out, _why(o)
        m = json.loads((run / "metrics.json").read_text())
        assert 0 <= m[get_task(ns.command).headline] <= 1, m
    _fresh(run / "metrics.json", o)


def check_predict(ns, o: Outcome, ws: Path) -> None:
    files = _inputs(ns.images, ws)
    assert files, ns.images
    if ns.json:
        results = json.loads(o.out)
        assert [Path(r["path"]).resolve() for r in results] == [f.resolve() for f in files], o.out[:2000]
        for r in results:
            if ns.command == "classify":
                assert len(r["topk"]) == ns.topk and r["label"] == r["topk"][0]["label"], r
                assert 0 <= r["prob"] <= 1, r
            elif ns.command == "detect":
                with Image.open(r["path"]) as im:
                    assert r["size"] == [im.height, im.width], r  # boxes in the image's own pixels
                assert len(r["detections"]) <= ns.max_det, r
                assert all(d["score"] >= ns.conf for d in r["detections"]), r
            else:
                assert sum(r["class_pixels"].values()) == r["size"][0] * r["size"][1], r
    else:
        for f in files:
            assert f.name in o.out, f"{f.name} not in the output\n{_why(o)}"
    if getattr(ns, "save", None):
        written = [p.name for p in (ws / ns.save).iterdir()]
        for f in files:  # detect: the image with boxes drawn; segment: NAME_mask.png and NAME_overlay.png
            mine = [n for n in written if n.startswith(f.stem)]
            assert mine, f"nothing for {f.name} in {ns.save}: {written}\n{_why(o)}"
            for n in mine:
                _fresh(ws / ns.save / n, o)


def check_export(ns, o: Outcome, ws: Path) -> None:
    suffix = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}[ns.format]
    if ns.out is None:
        out = ws / ns.run / f"model{suffix}"
    elif ns.out.endswith(suffix):
        out = ws / ns.out
    else:  # a folder
        out = ws / ns.out / f"model{suffix}"
    _fresh(out, o)
    if ns.out is not None:  # the model card is written beside an export outside the run
        _fresh(out.with_suffix(".json"), o)
    if ns.format == "onnx":
        import onnxruntime as ort

        assert [i.name for i in ort.InferenceSession(str(out)).get_inputs()] == ["images"]
        assert "onnxruntime check: max abs difference" in o.out, _why(o)


def check_sample(ns, o: Outcome, ws: Path) -> None:
    out = ws / ns.out
    if out.suffix == ".png":
        w, h = _png(out, o)
    else:
        frames = sorted(out.glob("[0-9]*.png"))
        assert len(frames) == ns.n, [p.name for p in frames]
        for p in frames:
            _png(p, o)
        w, h = _png(out / "grid.png", o)
    card = json.loads((ws / ns.run / "model.json").read_text())
    assert w > card["image_size"] and h >= card["image_size"], (w, h)  # a grid of several samples


def check_edit(ns, o: Outcome, ws: Path) -> None:
    result = re.search(r"^result: (.+)$", o.out, flags=re.M)
    strip = re.search(r"^strip:\s+(.+)$", o.out, flags=re.M)
    assert result and strip, _why(o)
    expected = ws / (ns.out or Path(ns.run) / "edits" / f"{ns.action}.png")
    assert (ws / result.group(1)).resolve() == expected.resolve(), (result.group(1), expected)
    assert (ws / strip.group(1)).resolve() == expected.with_name(f"{expected.stem}_strip.png").resolve()
    rw, _ = _png(expected, o)
    sw, _ = _png(ws / strip.group(1), o)
    assert sw > rw, (sw, rw)  # the strip: the input image(s) beside the result (interpolate: a | frames | b)


def check_convert(ns, o: Outcome, ws: Path) -> None:
    out = ws / ns.out
    jsons = sorted(out.glob("*.json"))
    assert jsons, f"no COCO JSON in {out}\n{_why(o)}"
    n_images = sum(len(json.loads(p.read_text())["images"]) for p in jsons)
    src = sum(1 for p in (ws / ns.src / "images").rglob("*") if p.is_file())
    assert n_images == src, (n_images, src)
    assert "images" in o.out and "objects" in o.out, _why(o)  # per split


def _names(ns, o: Outcome) -> list[str]:
    """The names a listing printed: from --json, else the first word of each line."""
    if getattr(ns, "json", False):
        return [r["name"] for r in json.loads(o.out)]
    return [line.split()[0] for line in o.out.splitlines() if line.strip() and not line.endswith(":")]


def check_models(ns, o: Outcome, ws: Path) -> None:
    names = _names(ns, o)
    assert names, _why(o)
    if getattr(ns, "source", None):  # a library's architectures, as tv:NAME / timm:NAME
        from fnmatch import fnmatch

        assert all(n.startswith(f"{ns.source}:") and fnmatch(n.split(":", 1)[1], ns.filter or "*") for n in names), names
    else:
        if ns.task and ns.json:
            assert {r["task"] for r in json.loads(o.out)} == {ns.task}, o.out[:2000]
        assert ("fcos-s" if ns.task == "detect" else "cnn-s") in names, names


def check_datasets(ns, o: Outcome, ws: Path) -> None:
    assert {"mnist-5k", "digits", "digit-scenes", "masks", "yolo", "coco"} <= set(_names(ns, o)), _why(o)


def check_explain(ns, o: Outcome, ws: Path) -> None:
    import numpy as np

    files = _inputs(ns.images, ws)
    out = ws / (ns.out or Path(ns.run) / "explain")
    run = ws / ns.run
    task = json.loads(((run / "model.json") if run.is_dir() else run).read_text())["task"]
    # Detection: one overlay and map per box, NAME.METHOD.boxK.* (K = 0, 1, ... per image).
    stems = {f: [f"{f.stem}.{ns.method}"] if task != "detect" else
             sorted(p.name[:-4] for p in out.glob(f"{f.stem}.{ns.method}.box*.npy")) for f in files}
    n = sum(len(v) for v in stems.values())
    if task == "detect":
        assert all(1 <= len(v) <= 3 for v in stems.values()), (stems, _why(o))
    if ns.json:
        assert len(json.loads(o.out)) == n, o.out[:2000]
    else:
        assert f"wrote {n} overlay(s)" in o.out, _why(o)
        for f in files:  # "PATH: METHOD of LABEL (PROB) at LAYER  [top: ...]" ([boxK: ...], [..% of pixels; ...])
            assert re.search(rf"{re.escape(f.name)}: {re.escape(ns.method)} of \S+ \(\d\.\d+\) at ", o.out), _why(o)
    for f in files:
        with Image.open(f) as im:
            size = im.size
        for stem in stems[f]:
            assert _png(out / f"{stem}.png", o) == size  # the overlay, at the image's own size
            _fresh(out / f"{stem}.npy", o)
            heat = np.load(out / f"{stem}.npy")
            assert heat.ndim == 2 and heat.dtype == np.float32 and 0 <= heat.min() <= heat.max() <= 1, heat


def check_weights_import(ns, o: Outcome, ws: Path) -> None:
    import torch

    m = re.search(r"published weights: (\S+); ", o.out)
    assert m, _why(o)
    dest = Path(m.group(1))
    assert dest.resolve().is_relative_to(_caches(ws).resolve()), dest  # the test's cache, not the user's
    _fresh(dest, o)
    assert torch.load(dest, weights_only=True).keys() == torch.load(ws / ns.path, weights_only=True).keys()


def check_weights_list(ns, o: Outcome, ws: Path) -> None:
    imported = [parse(command_argv(c)).model for c in COMMANDS[:o.index]
                if to_argv(c)[:2] == ["weights", "import"]]
    for name in imported:
        assert name in o.out, f"{name} was imported by an earlier README line but is not listed\n{_why(o)}"
    assert imported or "no cached weights" in o.out, _why(o)


def check_report(ns, o: Outcome, ws: Path) -> None:
    html = ws / ns.run / "report.html"
    _fresh(html, o)
    assert str(ns.run) in o.out, _why(o)


# By kind of command: a task's action (train, eval, predict, sample), else "COMMAND [ACTION]".
CHECKS = {"train": check_train, "eval": check_eval, "predict": check_predict, "sample": check_sample,
          "export": check_export, "explain": check_explain, "edit interpolate": check_edit,
          "edit inpaint": check_edit, "edit vary": check_edit, "edit attribute": check_edit,
          "data convert": check_convert, "models": check_models, "datasets": check_datasets, "report": check_report,
          "weights import": check_weights_import, "weights list": check_weights_list}


def _kind(ns) -> str:
    from recogen.tasks import all_tasks

    action = getattr(ns, "action", None)
    if ns.command in all_tasks():
        return action
    return f"{ns.command} {action}" if action else ns.command


def check_serve(ns, o: Outcome, ws: Path) -> None:
    assert o.served and "health" in o.served, f"the server never answered /healthz\n{_why(o)}"
    status, body = o.served["health"]
    assert status == 200 and json.loads(body) == {"status": "ok", "models": len(ns.runs)}, (status, body)
    status, body = o.served["models"]
    assert status == 200, f"GET /v1/models: {status} {body}\n{_why(o)}"
    models = json.loads(body)["models"]
    tasks = [json.loads((ws / r / "model.json").read_text())["task"] for r in ns.runs]
    assert sorted(m["task"] for m in models) == sorted(tasks), models
    for m, run in zip(models, ns.runs):  # named after the run folder (a repeated name gets -task)
        assert m["name"].startswith(Path(run).name), (m["name"], run)
    if ns.backend == "onnx":
        assert {m["backend"] for m in models if m["task"] != "generate"} == {"onnx"}, models
    if ns.api_key:
        assert o.served["models_without_key"][0] == 401, o.served["models_without_key"]
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal: killed by it, not crashed.
    assert o.rc in (0, -signal.SIGTERM) and "Application shutdown complete" in o.err, _why(o)
    assert "Traceback" not in o.err, _why(o)


# ------------------------------------------------------------------------------------------ tests
def _id(i: int, line: str) -> str:
    return f"{i:02d} " + " ".join(to_argv(line))


@pytest.mark.parametrize("i", range(len(COMMANDS)), ids=[_id(i, c) for i, c in enumerate(COMMANDS)])
def test_readme_command_runs(i, walk, workspace, capsys, monkeypatch, request):
    monkeypatch.chdir(workspace)  # the README's relative paths (runs/..., img.png) are relative to here
    monkeypatch.setenv("KEY", API_KEY)  # `--api-key "$KEY"`
    caches = _caches(workspace)  # weights import / --pretrained: the libraries' caches, here not in ~/.cache
    monkeypatch.setenv("TORCH_HOME", str(caches / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(caches / "hf"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(caches / "hf"))  # read once, when it is imported
    o = walk.through(i, capsys)
    ns = parse(o.argv)
    if ns.command == "demo":  # train, eval, predict, report: what the demo leaves
        run = request.getfixturevalue("demo_run")
        for f in ("model.json", "model.safetensors", "metrics.json", "sample_predictions.png", "report.html"):
            assert (run / f).is_file(), f
        assert json.loads((run / "metrics.json").read_text())["accuracy"] > 0.9
        return
    if ns.command == "serve":
        check_serve(ns, o, workspace)
        return
    assert o.rc == 0, _why(o)
    assert o.out.strip(), _why(o)
    assert _kind(ns) in CHECKS, f"no check for `recogen {_kind(ns)}` commands: add one to CHECKS\n{_why(o)}"
    CHECKS[_kind(ns)](ns, o, workspace)
