"""Tests for recogen.report and the plots it embeds (recogen.plots): plots are real PNGs and the HTML
report is self-contained and escaped."""

import ast
import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recogen import plots, report
from recogen.errors import RunError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # a truncated file fails here, not at open
        return image.size


def _cell_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_module_imports_neither_torch_nor_matplotlib_at_top_level():
    tree = ast.parse(Path(report.__file__).read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    assert not top & {"torch", "matplotlib"}


def test_confusion_matrix_small_writes_counts_and_png(tmp_path):
    cm = np.array([[5, 1, 0], [2, 7, 0], [0, 0, 13]])
    fig = plots._confusion_figure(cm, ["cat", "dog", "bird"])
    texts = _cell_texts(fig)
    assert sorted(texts) == sorted(str(v) for v in cm.ravel())
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["cat", "dog", "bird"]

    path = plots.plot_confusion_matrix(cm, ["cat", "dog", "bird"], tmp_path / "sub" / "cm.png")
    assert path == tmp_path / "sub" / "cm.png"
    width, height = _png_size(path)
    assert 300 < width < 2000 and 300 < height < 2000

    other = plots.plot_confusion_matrix(cm.T, ["cat", "dog", "bird"], tmp_path / "cm2.png")
    assert other.read_bytes() != path.read_bytes()


def test_confusion_matrix_row_normalised_and_handles_empty_rows():
    cm = np.array([[0, 0], [1, 3]])  # class "a" never appears: no division by zero
    fig = plots._confusion_figure(cm, ["a", "b"])
    data = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(data), [[0, 0], [0.25, 0.75]])


def test_confusion_matrix_large_k_drops_cell_text(tmp_path):
    k = 100
    cm = np.random.default_rng(0).integers(0, 50, size=(k, k))
    classes = [f"class_{i}" for i in range(k)]
    assert _cell_texts(plots._confusion_figure(cm, classes)) == []
    width, height = _png_size(plots.plot_confusion_matrix(cm, classes, tmp_path / "cm.png"))
    assert 2000 < width < 5000 and 2000 < height < 5000  # grows with K, but stays bounded


def test_confusion_matrix_shape_mismatch():
    with pytest.raises(ValueError):
        plots._confusion_figure(np.zeros((3, 3), int), ["a", "b"])


def test_plot_history(tmp_path):
    assert plots.plot_history([], tmp_path / "curves.png") is None
    history = [
        {"epoch": 0, "train_loss": 0.9, "val_loss": 0.5, "val_acc": 0.8, "lr": 0.001, "time_s": 1.2},
        {"epoch": 1, "train_loss": 0.6, "val_loss": None, "val_acc": 0.9, "val_top5": 0.99},
        {"epoch": 2, "train_loss": 0.4},
    ]
    fig = plots._history_figure(history)
    labels = [[line.get_label() for line in ax.get_lines()] for ax in fig.axes]
    assert labels == [["train_loss", "val_loss"], ["val_acc", "val_top5"]]  # lr and time_s left out
    np.testing.assert_allclose(fig.axes[0].get_lines()[1].get_ydata(), [0.5, np.nan, np.nan])

    two = plots.plot_history(history, tmp_path / "curves.png")
    one = plots.plot_history([{"train_loss": 1.0}], tmp_path / "loss.png")  # no epoch key: index used
    (two_w, two_h), (one_w, one_h) = _png_size(two), _png_size(one)
    assert two_w > 1.6 * one_w and abs(two_h - one_h) < 0.2 * one_h
    assert plots.plot_history([{"epoch": 0, "lr": 0.1}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


@pytest.mark.parametrize("channels", [1, 3])
def test_plot_image_grid_numpy(tmp_path, channels):
    images = np.random.default_rng(0).integers(0, 256, size=(10, channels, 16, 16), dtype=np.uint8)
    titles = [f"pred {i} (0.9{i}) / true {i}" for i in range(10)]
    colors = ["green" if i % 2 else "red" for i in range(10)]
    path = plots.plot_image_grid(images, titles, tmp_path / "grid.png", colors=colors, ncols=4)
    width, height = _png_size(path)
    assert width > height  # 4 columns x 3 rows


def test_plot_image_grid_torch_and_errors(tmp_path):
    torch = pytest.importorskip("torch")
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    _png_size(plots.plot_image_grid(images, ["a", "b", "c"], tmp_path / "grid.png"))
    with pytest.raises(ValueError):
        plots.plot_image_grid(images, ["a", "b"], tmp_path / "bad.png")
    with pytest.raises(ValueError):
        plots.plot_image_grid(np.zeros((2, 2, 8, 8), np.uint8), ["a", "b"], tmp_path / "bad.png")


def _embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]


def test_write_report_full(tmp_path):
    metrics = {
        "accuracy": 0.9312, "top5_accuracy": 0.995, "macro_f1": 0.9, "num_images": 1000, "split": "test",
        "loss": 0.25, "confusion_matrix": [[1, 0], [0, 1]],
        "per_class": {
            "<b>x</b>": {"precision": 0.5, "recall": 0.25, "f1": 0.333, "support": 4},
            "dog": {"precision": 1.0, "recall": 0.875, "f1": 0.9333, "support": 8},
        },
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    history = [{"epoch": 0, "train_loss": 1.0, "val_acc": 0.5}, {"epoch": 1, "train_loss": 0.5, "val_acc": 0.9}]
    (tmp_path / "history.json").write_text(json.dumps(history))
    (tmp_path / "config.yaml").write_text("model: resnet18\nnote: a<b & c\n")
    plots.plot_confusion_matrix(np.eye(2, dtype=int), ["<b>x</b>", "dog"], tmp_path / "confusion_matrix.png")

    out = report.write_report(tmp_path, title="My <run>")
    assert out == tmp_path / "report.html"
    assert (tmp_path / "curves.png").is_file()
    page = out.read_text(encoding="utf-8")

    pngs = _embedded_pngs(page)
    assert len(pngs) == 2  # curves + confusion matrix, each once
    for data in pngs:
        assert data.startswith(PNG_MAGIC)
        Image.open(io.BytesIO(data)).load()
    assert page.index("Curves") < page.index("Confusion matrix")

    for text in ("93.12%", "99.50%", "90.00%", "1000", "test", "0.25", "87.50%", "33.30%", ">8<", "dog"):
        assert text in page
    assert "[[1, 0]" not in page  # non-scalar values stay out of the summary
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "My <run>" not in page and "My &lt;run&gt;" in page
    assert "<pre>model: resnet18\nnote: a&lt;b &amp; c\n</pre>" in page
    assert not re.search(r"(src|href)=\"(?!data:)", page)  # no external resources
    assert "<script" not in page


def test_write_report_empty_folder(tmp_path):
    page = report.write_report(tmp_path).read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert tmp_path.name in page
    assert "data:image/png" not in page and "<table" not in page
    assert not (tmp_path / "curves.png").exists()


def test_write_report_corrupt_json_is_noted_not_fatal(tmp_path):
    (tmp_path / "metrics.json").write_text("{not json")
    page = report.write_report(tmp_path).read_text(encoding="utf-8")
    assert "metrics.json could not be read" in page


def test_write_report_missing_folder(tmp_path):
    with pytest.raises(RunError):
        report.write_report(tmp_path / "nope")


def test_a_crash_while_a_plot_is_written_keeps_the_previous_file(tmp_path):
    """Plots and report.html are written atomically (issue 12: a kill during any write loses nothing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recogen import plots

    path = tmp_path / "plot.png"
    path.write_bytes(b"the previous plot")
    fig = plt.figure()

    def half_then_die(target, **kw):
        with open(target, "wb") as f:
            f.write(b"\x89PNG half")
        raise KeyboardInterrupt  # what a signal does in the middle of the write

    fig.savefig = half_then_die
    with pytest.raises(KeyboardInterrupt):
        plots._save(fig, path)
    assert path.read_bytes() == b"the previous plot"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]  # no temporary file left either
    fig2 = plt.figure()
    assert plots._save(fig2, path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # a real PNG despite the .tmp name
