"""The web page in a real headless browser (Debian's chromium driven by Playwright, no browser download):
upload an image, see the prediction the API gives rendered on the page.

Without chromium or Playwright the tests skip with the reason, unless RECOGEN_REQUIRE_BROWSER=1 (set by
.ci/run), which turns that into a failure so that CI cannot pass without having run them.
"""
from __future__ import annotations

import contextlib
import os
import shutil

import pytest

from test_serve import ServerThread, digit_pngs, scene_png, served_runs

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def _chromium() -> str | None:
    for name in (os.environ.get("RECOGEN_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name) or (os.path.isfile(name) and name)):
            return path
    return None


def _require(reason: str):
    if os.environ.get("RECOGEN_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and RECOGEN_REQUIRE_BROWSER=1 requires the browser tests to run")
    pytest.skip(reason)


@contextlib.contextmanager
def launched_chromium():
    """Headless chromium driven by Playwright, closed afterwards; without either the test skips (fails
    under RECOGEN_REQUIRE_BROWSER=1)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require("Playwright is not installed (pip install playwright)")
    exe = _chromium()
    if exe is None:
        _require("no chromium found (apt-get install chromium, or set RECOGEN_CHROMIUM=/path/to/chrome)")
    with sync_playwright() as p:
        # --no-sandbox: CI containers run as root, where chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def browser():
    with launched_chromium() as b:
        yield b


@pytest.fixture(scope="module")
def site():
    """The service for every tiny run, on a real port; yields (base URL, runs)."""
    from recogen.serve import create_app

    runs = served_runs()
    app = create_app([runs[k] for k in ("clf", "det", "seg", "gen")])
    with ServerThread(app) as url:
        yield url, runs, app


@pytest.fixture
def page(browser, site):
    pg = browser.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(site[0] + "/")
    pg.wait_for_selector("body[data-state=ready]", timeout=20_000)
    yield pg
    pg.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def _upload(page, tmp_path, name: str, data: bytes) -> None:
    f = tmp_path / name
    f.write_bytes(data)
    page.set_input_files("#file", str(f))
    page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=20_000)
    assert page.get_attribute("body", "data-state") == "done", page.inner_text("#status")


def test_page_lists_the_models_and_renders_the_topk_bars_of_an_uploaded_digit(page, site, tmp_path):
    import httpx

    url = site[0]
    options = page.eval_on_selector_all("#model option", "els => els.map(e => e.value)")
    assert options == ["clf", "det", "seg", "gen"]
    page.select_option("#model", "clf")
    assert page.inner_text("label[data-param=topk]").strip() == "Top-k"  # the controls come from the spec's params
    page.fill("#param-topk", "3")
    data = digit_pngs()[5]
    _upload(page, tmp_path, "digit.png", data)
    want = httpx.post(f"{url}/v1/classify", params={"topk": 3}, files={"file": ("d.png", data, "image/png")}).json()
    bars = page.eval_on_selector_all("#bars .bar", "els => els.map(e => [e.dataset.label, Number(e.dataset.prob)])")
    assert [b[0] for b in bars] == [t["label"] for t in want["topk"]]
    assert bars[0][1] == pytest.approx(want["prob"], abs=1e-6)
    assert want["label"] in page.inner_text("#status") and page.is_visible("#bars .bar .fill")


def test_page_draws_the_detected_boxes_on_a_canvas(page, site, tmp_path):
    import httpx

    url = site[0]
    page.select_option("#model", "det")
    assert page.inner_text("label[data-param=conf]").strip() == "Min score" and not page.is_visible("#param-topk")
    page.fill("#param-conf", "0.01")  # the tiny 2-epoch detector scores low; 0.01 gives boxes to draw
    data = scene_png()
    _upload(page, tmp_path, "scene.png", data)
    want = httpx.post(f"{url}/v1/detect", params={"conf": 0.01}, files={"file": ("s.png", data, "image/png")}).json()
    assert len(want["detections"]) >= 1
    assert page.get_attribute("#canvas", "data-boxes") == str(len(want["detections"]))
    assert page.is_visible("#canvas") and page.locator("#table tr").count() == len(want["detections"]) + 1
    # the boxes are really painted: the canvas differs from the bare image (some pixels in box colours)
    painted = page.evaluate("""() => { const c = document.getElementById('canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] === 0xe6 && d[i + 1] === 0x19 && d[i + 2] === 0x4b
          || d[i] === 0x3c && d[i + 1] === 0xb4 || d[i] === 0x43 && d[i + 1] === 0x63 || d[i] === 0xf5 && d[i + 1] === 0x82
          || d[i] === 0x91 && d[i + 1] === 0x1e || d[i] === 0x42 && d[i + 1] === 0xd4 || d[i] === 0xf0 && d[i + 1] === 0x32
          || d[i] === 0xbf && d[i + 1] === 0xef || d[i] === 0xfa && d[i + 1] === 0xbe || d[i] === 0x46 && d[i + 1] === 0x99) n++;
        return n; }""")
    assert painted > 50


def test_page_shows_the_segmentation_overlay(page, tmp_path):
    page.select_option("#model", "seg")
    assert page.inner_text("label[data-param=alpha]").strip() == "Opacity"
    assert page.is_checked("#param-mask")  # booleans start ticked: the mask and its overlay come back
    _upload(page, tmp_path, "scene.png", scene_png())
    size = page.evaluate("() => { const i = document.getElementById('overlay'); return [i.naturalHeight, i.naturalWidth]; }")
    assert size == [128, 128] and page.is_visible("#overlay")
    assert page.locator("#table tr").count() >= 2  # a header and at least one class present
    assert page.get_attribute("#result", "data-state") == "overlay"


def test_page_generates_a_grid_for_a_chosen_seed_and_class(page, site):
    import httpx

    url = site[0]
    page.select_option("#model", "gen")
    assert page.is_visible("#generate-panel") and not page.is_visible("#predict-panel")
    assert page.is_visible("#gen-class-label")  # a conditional generator: its classes to choose from
    page.fill("#gen-n", "4")
    page.fill("#gen-seed", "7")
    page.select_option("#gen-class", "3")
    page.click("#generate-form button")
    page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=20_000)
    assert page.get_attribute("body", "data-state") == "done", page.inner_text("#status")
    png = httpx.post(f"{url}/v1/generate", params={"n": 4, "seed": 7, "class": "3"}).content
    shown = page.evaluate("""async () => Array.from(new Uint8Array(
        await (await fetch(document.getElementById('grid').src)).arrayBuffer()))""")
    assert bytes(shown) == png and page.is_visible("#grid")  # the very grid the API gives for that seed and class


def test_page_shows_the_api_error_message(page, tmp_path):
    page.select_option("#model", "clf")
    f = tmp_path / "notes.png"
    f.write_bytes(b"this is not a picture")
    page.set_input_files("#file", str(f))
    page.wait_for_selector("body[data-state=error]", timeout=20_000)
    assert "not an image" in page.inner_text("#status")


def test_page_asks_for_the_api_key_and_then_works(browser, site, tmp_path):
    from recogen.serve import create_app

    locked = create_app(models=site[2].state.models, api_key="open-sesame")
    with ServerThread(locked) as url:
        pg = browser.new_page()
        pg.goto(url + "/")
        pg.wait_for_selector("body[data-state=error]", timeout=20_000)
        assert "API key" in pg.inner_text("#status")
        pg.fill("#api-key", "open-sesame")
        pg.dispatch_event("#api-key", "change")
        pg.wait_for_selector("body[data-state=ready]", timeout=20_000)
        pg.select_option("#model", "clf")
        _upload(pg, tmp_path, "digit.png", digit_pngs()[1])
        assert pg.locator("#bars .bar").count() == 5
        pg.close()


# ---------------------------------------------------------------------------------- a new task's model
@pytest.fixture(scope="module")
def toy_site(tmp_path_factory):
    """The toy task of test_task_spec.py (registered only here, trained for 1 epoch through the CLI) served
    next to a classifier: the page must handle it with no edit of its own; yields (base URL, toy run)."""
    from test_task_spec import BrightTask

    from recogen.cli import main
    from recogen.serve import create_app
    from recogen.tasks import TASKS, register_task

    register_task(BrightTask)
    try:
        run = tmp_path_factory.mktemp("toy-task") / "toy"
        assert main(["bright", "train", "--out", str(run), "--epochs", "1", "--no-progress"]) == 0
        app = create_app([str(run), str(served_runs()["clf"])])
        with ServerThread(app) as url:
            yield url, run
    finally:
        TASKS.pop("bright", None)


def test_page_serves_a_newly_registered_task_from_its_spec_and_shows_the_answer_as_a_table(browser, toy_site, tmp_path):
    import httpx

    url, _ = toy_site
    infos = {m["name"]: m for m in httpx.get(f"{url}/v1/models").json()["models"]}
    assert infos["toy"]["endpoint"] == "/v1/bright" and infos["toy"]["params"] == [] and not infos["toy"]["samples"]
    assert [p["name"] for p in infos["clf"]["params"]] == ["topk"]
    pg = browser.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url + "/")
    pg.wait_for_selector("body[data-state=ready]", timeout=20_000)
    assert pg.eval_on_selector_all("#model option", "els => els.map(e => e.value)") == ["toy", "clf"]
    pg.select_option("#model", "toy")
    assert "bright" in pg.inner_text("#model-info")
    assert pg.is_visible("#predict-panel") and not pg.is_visible("#generate-panel")
    assert pg.locator("#params label").count() == 0  # the toy task takes no parameter but the model
    data = digit_pngs()[7]
    _upload(pg, tmp_path, "digit.png", data)
    want = httpx.post(f"{url}/v1/bright", files={"file": ("d.png", data, "image/png")}).json()
    assert pg.get_attribute("#result", "data-state") == "fields" and pg.is_visible("#table")
    rows = pg.eval_on_selector_all("#table tr[data-key]", "els => els.map(e => [e.dataset.key, e.cells[1].textContent])")
    assert rows == [[k, str(v)] for k, v in want.items()] and "label" in want
    assert want["label"] in pg.inner_text("#status") and pg.locator("#bars .bar").count() == 0
    # the classifier next to it still gets its Top-k control and bars; switching re-predicts the same image
    pg.select_option("#model", "clf")
    pg.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=20_000)
    pg.wait_for_selector("#result[data-state=topk]", timeout=20_000)
    assert pg.is_visible("#param-topk") and pg.locator("#bars .bar").count() == 5 and not pg.is_visible("#table")
    pg.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"
