"""Issue 14: ``recogen TASK predict RUN FOLDER --out results.jsonl`` streams a folder of any size.

The streamed file holds what the in-memory ``predict --json`` prints, one line per image in input order;
a run stopped in the middle (its last line torn, or a multi-process run's part files left behind) resumes
where it stopped and ends with the same file, each image once; two processes write what one writes; an
unreadable image stops the run naming it, or becomes an error line with ``--skip-bad-images``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line, main_in_process, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

N_IMAGES = 150


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """150 digits as 24 px grey PNGs in two sub-folders (names interleaved between them)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("stream") / "images"
    d = load_digits()
    for i in range(N_IMAGES):
        sub = root / "ab"[i % 2]
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] * 16).clip(0, 255).astype(np.uint8)).resize((24, 24)).save(sub / f"d{i:03d}.png")
    return root


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same(a: list[dict], b: list[dict]) -> None:
    """The same images in the same order with the same answers; probabilities equal up to float summation
    order (another batch composition or thread count changes the last bits)."""
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k not in ("prob", "topk")} == {k: v for k, v in y.items() if k not in ("prob", "topk")}
        if "prob" in x:
            assert x["prob"] == pytest.approx(y["prob"], abs=1e-5)
            assert [t["label"] for t in x["topk"]] == [t["label"] for t in y["topk"]]


@pytest.fixture(scope="module")
def expected(tiny_run, folder) -> list[dict]:
    """The in-memory path's results: what ``predict --json --topk 3`` prints."""
    from recogen.data.images import expand_inputs
    from recogen.tasks import get_task

    return json.loads(json.dumps(get_task("classify").predict_files(tiny_run, expand_inputs([folder]), topk=3)))


def test_streamed_file_holds_the_in_memory_results_in_input_order(capsys, tiny_run, folder, expected, tmp_path):
    out = tmp_path / "results.jsonl"
    rc, stdout, err = main_in_process(capsys, "classify", "predict", tiny_run, folder, "--out", out, "--topk", "3",
                                      "--batch-size", "16", "--workers", "1")
    assert rc == 0, err
    assert f"wrote {N_IMAGES} result line(s) to {out}" in stdout
    assert _lines(out) == expected  # same batch maths here: the same numbers, not only the same answers
    # Again: everything is there already, nothing is predicted or rewritten.
    before = out.read_bytes()
    rc, stdout, err = main_in_process(capsys, "classify", "predict", tiny_run, folder, "--out", out, "--topk", "3")
    assert rc == 0 and f"resuming: {N_IMAGES} of {N_IMAGES}" in stdout and "wrote 0 result line(s)" in stdout
    assert out.read_bytes() == before


def test_a_stopped_run_resumes_where_it_stopped_and_ends_with_the_same_file(capsys, tiny_run, folder, expected, tmp_path):
    out = tmp_path / "results.jsonl"
    lines = [json.dumps(r) + "\n" for r in expected]
    # One process killed while writing its 43rd line: 42 whole lines and half of one.
    out.write_text("".join(lines[:42]) + lines[42][: len(lines[42]) // 2])
    rc, stdout, err = main_in_process(capsys, "classify", "predict", tiny_run, folder, "--out", out, "--topk", "3",
                                      "--workers", "0")
    assert rc == 0, err
    assert f"resuming: 42 of {N_IMAGES} image(s) already in {out}, {N_IMAGES - 42} to predict" in stdout
    assert "torn last line" in err
    assert_same(_lines(out), expected)

    # Two processes killed: each left its part file (every other image, up to where it was), one torn.
    out.unlink()
    part0, part1 = Path(f"{out}.part0"), Path(f"{out}.part1")
    part0.write_text("".join(lines[0:60:2]))
    part1.write_text("".join(lines[1:40:2]) + lines[41][:10])
    rc, stdout, err = main_in_process(capsys, "classify", "predict", tiny_run, folder, "--out", out, "--topk", "3",
                                      "--workers", "1")
    assert rc == 0, err
    assert f"resuming: {30 + 20} of {N_IMAGES}" in stdout
    assert not part0.exists() and not part1.exists()  # merged into the file
    assert_same(_lines(out), expected)  # in input order, each image once

    # --overwrite starts again.
    rc, stdout, err = main_in_process(capsys, "classify", "predict", tiny_run, folder, "--out", out, "--topk", "3",
                                      "--overwrite")
    assert rc == 0 and "resuming" not in stdout and f"wrote {N_IMAGES} result line(s)" in stdout
    assert_same(_lines(out), expected)


def test_two_processes_write_what_one_writes(tiny_run, folder, expected, tmp_path):
    # Lightning's launcher starts the second process by running the command again: a subprocess.
    out = tmp_path / "two.jsonl"
    r = run_cli("classify", "predict", tiny_run, folder, "--out", out, "--topk", "3", "--devices", "2",
                "--accelerator", "cpu", "--workers", "1", "--batch-size", "16")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"wrote {N_IMAGES} result line(s) to {out}" in r.stdout
    assert r.stdout.count("wrote") == 1  # only the first process reports
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.jsonl"]  # the part files are merged and gone
    assert_same(_lines(out), expected)


def test_an_unreadable_image_stops_the_run_naming_it_or_becomes_an_error_line(capsys, tiny_run, folder, expected, tmp_path):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(folder, images)
    bad = images / "a" / "d040.png"  # the 21st image in input order (a/d000, a/d002, ..., then b/)
    bad.write_bytes(bad.read_bytes()[:60])
    order = sorted(images.rglob("*.png"))
    k = order.index(bad)
    out = tmp_path / "results.jsonl"
    rc, stdout, err = main_in_process(capsys, "classify", "predict", tiny_run, images, "--out", out, "--topk", "3",
                                      "--batch-size", "8", "--workers", "1")
    line = assert_one_line(rc, err, str(bad), str(out), "--skip-bad-images")
    assert "cannot read image" in line
    # What came before it is kept (its batch's images before it too), nothing after it.
    got = _lines(out)
    assert [r["path"] for r in got] == [str(p) for p in order[:k]]

    rc, stdout, err = main_in_process(capsys, "classify", "predict", tiny_run, images, "--out", out, "--topk", "3",
                                      "--skip-bad-images")
    assert rc == 0, err
    assert "1 unreadable (error lines)" in stdout
    got = _lines(out)
    assert len(got) == N_IMAGES and got[k]["path"] == str(bad) and "cannot read image" in got[k]["error"]
    assert set(got[k]) == {"path", "error"}
    renamed = [{**r, "path": r["path"].replace(str(folder), str(images))} for r in expected]
    assert_same(got[:k] + got[k + 1 :], renamed[:k] + renamed[k + 1 :])


def test_listing_is_the_order_of_expand_inputs_and_the_options_need_out(capsys, tmp_path, tiny_run):
    from recogen.data.images import expand_inputs
    from recogen.data.paths import PathTable
    from recogen.tasks.stream import list_images

    root = tmp_path / "tree"
    for rel in ["a/z.png", "a.png", "a-b.png", "a/b/c.JPG", "B.png", "_x.png", "a/notes.txt", "c d/é.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    os.symlink(root / "a", root / "link")  # a symlinked folder is not entered (as Path.rglob)
    single = root / "a.png"
    args = [root, single, root / "a"]
    assert list_images(args) == list(dict.fromkeys(str(p) for p in expand_inputs(args)))
    table = PathTable(list_images(args))
    assert [table[i] for i in range(len(table))] == list_images(args)

    for extra in (["--devices", "2"], ["--batch-size", "8"], ["--overwrite"]):
        rc, _, err = main_in_process(capsys, "classify", "predict", tiny_run, single, *extra)
        assert_one_line(rc, err, extra[0], "--out")
    rc, _, err = main_in_process(capsys, "classify", "predict", tiny_run, single, "--out", tmp_path / "r.txt")
    assert_one_line(rc, err, ".jsonl")


def test_segment_streams_what_predict_writes_with_saved_masks(capsys, tmp_path):
    """A dense task: images of several sizes, same-named files in two folders (--save names them apart)."""
    import torch
    from PIL import Image

    from recogen.artifact import save_portable
    from recogen.models import create_model

    torch.manual_seed(0)
    classes = ["background", "circle", "square"]
    net = create_model("unet", num_classes=3, in_chans=3, image_size=32, width=4, depth=2).eval()
    run = tmp_path / "run"
    save_portable(run, net, {"task": "segment", "model": "unet", "model_kwargs": {"width": 4, "depth": 2},
                             "classes": classes, "image_size": 32, "in_chans": 3, "data": "test",
                             "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}, "ignore_index": 255})
    rng = np.random.default_rng(0)
    for i in range(12):
        h, w = rng.integers(20, 70, size=2)
        img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        img[h // 4 : h // 2, w // 4 : w // 2] = 255
        (tmp_path / "scenes" / "xy"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tmp_path / "scenes" / "xy"[i % 2] / f"s{i // 2}.png")
    scenes = tmp_path / "scenes"
    rc, stdout, err = main_in_process(capsys, "segment", "predict", run, scenes, "--json", "--save", tmp_path / "mem")
    assert rc == 0, err
    expected = json.loads(stdout)
    out = tmp_path / "seg.jsonl"
    rc, stdout, err = main_in_process(capsys, "segment", "predict", run, scenes, "--out", out, "--save",
                                      tmp_path / "streamed", "--batch-size", "5", "--workers", "1")
    assert rc == 0, err
    got = _lines(out)
    for r in got + expected:
        r["mask_path"], r["overlay_path"] = Path(r["mask_path"]).name, Path(r["overlay_path"]).name
    assert got == expected
    names = sorted(p.name for p in (tmp_path / "mem").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "streamed").iterdir()) and len(names) == 2 * 12
    for n in names:
        assert (tmp_path / "mem" / n).read_bytes() == (tmp_path / "streamed" / n).read_bytes(), n
