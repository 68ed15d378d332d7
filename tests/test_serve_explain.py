"""POST /v1/explain and the web page's Explain toggle (issue 13): the service's answer is what
``recogen.explain`` gives for the same image (map, target, top classes) with the overlay as a PNG at
the image's own size; the same request gives the same map, alone or among concurrent ones; mistakes
are clear 4xx JSON; the API key, the upload limits, the metrics and the OpenAPI schema cover it.
"""
from __future__ import annotations

import base64
import io
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

pytest.importorskip("fastapi", reason="the service needs fastapi (pip install fastapi uvicorn python-multipart)")
from fastapi.testclient import TestClient  # noqa: E402

import recogen  # noqa: E402
from recogen.saliency.methods import METHODS  # noqa: E402
from recogen.serve import create_app  # noqa: E402
from recogen.serve.models import Served  # noqa: E402
from test_serve import ServerThread, png  # noqa: E402


@pytest.fixture(scope="module")
def digits() -> list[bytes]:
    """Real digits (sklearn's 8x8) as 48x32 (H x W) grey PNGs: not square, not the model's 16 px."""
    from sklearn.datasets import load_digits

    imgs = load_digits().images[:4]
    return [png(np.kron(im * 255 / 16, np.ones((6, 4))).round().astype(np.uint8)) for im in imgs]


@pytest.fixture(scope="module")
def app(tiny_run):
    return create_app([tiny_run])


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


def explain(client, data: bytes, **params):
    return client.post("/v1/explain", params=params, files={"file": ("digit.png", data, "image/png")})


def decode_png(b64: str):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64)))


# ------------------------------------------------------------------------------------ answers
def test_answer_is_recogen_explain_with_the_overlay_as_png_at_the_image_size(client, tiny_run, digits):
    from PIL import Image

    r = explain(client, digits[0], return_map="true")
    assert r.status_code == 200, r.text
    j = r.json()
    want = recogen.explain(tiny_run, Image.open(io.BytesIO(digits[0])))[0]  # a fresh copy of the network
    assert {k: v for k, v in j.items() if k not in ("overlay_png", "map")} == want.to_json()
    assert j["method"] == "gradcam" and j["layer"] == want.layer and j["target"]["index"] == j["top"][0]["index"]
    overlay = decode_png(j["overlay_png"])
    assert overlay.format == "PNG" and overlay.mode == "RGB" and overlay.size == (32, 48)  # (W, H) of the upload
    assert np.array_equal(np.asarray(overlay), want.overlay)
    m = np.asarray(j["map"], dtype=np.float32)
    assert m.shape == (16, 16) and m.min() == 0 and m.max() == 1  # the model's input size, in [0, 1]
    assert np.array_equal(m, want.map)
    assert "map" not in explain(client, digits[0]).json()  # only when asked


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "integrated-gradients"])
def test_the_same_request_gives_the_same_map(client, digits, method):
    a, b = (explain(client, digits[1], method=method, return_map="true").json() for _ in range(2))
    assert a["method"] == method and a["map"] == b["map"] and a["overlay_png"] == b["overlay_png"]


def test_class_layer_and_method_from_query_form_or_json(client, tiny_run, digits):
    from PIL import Image

    want = recogen.explain(tiny_run, Image.open(io.BytesIO(digits[2])), method="eigencam", target="3",
                           layer="features.8")[0]
    forms = [explain(client, digits[2], method="eigencam", **{"class": "3"}, layer="features.8", return_map="true"),
             client.post("/v1/explain", data={"method": "eigencam", "class": "3", "layer": "features.8", "return_map": "true"},
                         files={"file": ("d.png", digits[2], "image/png")}),
             client.post("/v1/explain", json={"image": base64.b64encode(digits[2]).decode(), "method": "eigencam",
                                              "class": 3, "layer": "features.8", "return_map": True})]
    for r in forms:
        assert r.status_code == 200, r.text
        j = r.json()
        assert (j["method"], j["layer"], j["target"]["label"]) == ("eigencam", "features.8", "3")
        assert np.array_equal(np.asarray(j["map"], dtype=np.float32), want.map)


def test_a_cached_network_is_used_and_predictions_do_not_change(app, client, digits):
    m = app.state.models[next(iter(app.state.models))]
    before = client.post("/v1/classify", files={"file": ("d.png", digits[0], "image/png")}).json()
    explain(client, digits[0])
    _, net = m.explainable
    assert net is not m.predictor.model  # a copy, made once ...
    explain(client, digits[1], method="scorecam")
    assert m.explainable[1] is net  # ... and kept
    assert all(p.grad is None for p in net.parameters())  # no gradients left between requests
    assert client.post("/v1/classify", files={"file": ("d.png", digits[0], "image/png")}).json() == before


# ------------------------------------------------------------------------------------ mistakes
def test_mistakes_are_clear_4xx_json(app, digits):
    not_explainable = Served("gen", "generate", predictor=None, backend="torch")  # a task explain does not support
    c = TestClient(create_app(models={**app.state.models, "gen": not_explainable}))
    d = digits[0]
    cases = {
        "unknown method": (422, ["unknown explanation method 'lime'", "gradcam, gradcam++"], explain(c, d, method="lime")),
        "unknown class": (422, ["unknown class '12'", "index from 0 to 9"], explain(c, d, **{"class": "12"})),
        "unknown class name": (422, ["unknown class 'seven'"], explain(c, d, **{"class": "seven"})),
        "unknown layer": (422, ["no layer 'nope'", "features."], explain(c, d, layer="nope")),
        "layer that is not a map": (422, ["not a spatial map"], explain(c, d, layer="head")),
        "layer of IG": (422, ["layer", "does not apply"], explain(c, d, method="integrated-gradients", layer="features.8")),
        "unsupported task": (422, ["generate model", "explain supports", "classification"], explain(c, d, model="gen")),
        "unknown model": (404, ["unknown model 'nope'"], explain(c, d, model="nope")),
        "unknown parameter": (422, ["bogus"], explain(c, d, bogus=1)),
        "not an image": (400, ["not an image"], explain(c, b"hello, world" * 10)),
        "empty": (400, ["empty"], explain(c, b"")),
        "no image in JSON": (422, ["image"], c.post("/v1/explain", json={"method": "gradcam"})),
        "bad return_map": (422, ["return_map"], explain(c, d, return_map="perhaps")),
        "content type": (415, ["content type"], c.post("/v1/explain", content=d, headers={"Content-Type": "text/plain"})),
        "GET": (405, ["not allowed"], c.get("/v1/explain")),
    }
    for name, (status, needles, r) in cases.items():
        assert r.status_code == status, (name, r.status_code, r.text)
        msg = r.json()["error"]
        assert all(n.lower() in msg.lower() for n in needles), (name, msg)
    only_gen = TestClient(create_app(models={"gen": not_explainable}))
    r = explain(only_gen, d)
    assert r.status_code == 404 and "no model that explain supports" in r.json()["error"]


def test_api_key_and_upload_limits_hold_as_on_the_other_endpoints(app, digits):
    locked = TestClient(create_app(models=app.state.models, api_key="s3cret"))
    for r in (explain(locked, digits[0]), locked.post("/v1/explain", headers={"X-API-Key": "wrong"},
                                                      files={"file": ("d.png", digits[0], "image/png")})):
        assert r.status_code == 401 and "key" in r.json()["error"], r.text
    r = locked.post("/v1/explain", headers={"Authorization": "Bearer s3cret"}, files={"file": ("d.png", digits[0], "image/png")})
    assert r.status_code == 200 and "overlay_png" in r.json()

    tiny = TestClient(create_app(models=app.state.models, max_upload_mb=1 / 1024, max_pixels=500))  # 1 KiB, 500 px
    big = png(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8))
    assert len(big) > 1024
    for r in (explain(tiny, big), tiny.post("/v1/explain", content=big, headers={"Content-Type": "image/png"}),
              tiny.post("/v1/explain", json={"image": base64.b64encode(big).decode()})):
        assert r.status_code == 413 and "limit" in r.json()["error"], r.text
    r = explain(tiny, png(np.zeros((40, 40), dtype=np.uint8)))  # a small file of 1600 pixels
    assert r.status_code == 413 and "1600 pixels" in r.json()["error"]
    assert explain(tiny, png(np.zeros((20, 20), dtype=np.uint8))).status_code == 200


def test_onnx_backend_explains_with_the_runs_torch_weights(tiny_run, digits, tmp_path):
    import shutil

    pytest.importorskip("onnxruntime")
    from recogen.export import export_model

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    export_model(run, "onnx")
    c = TestClient(create_app([run], backend="onnx"))
    j = explain(c, digits[3], return_map="true").json()
    from PIL import Image

    want = recogen.explain(run, Image.open(io.BytesIO(digits[3])))[0]
    assert np.array_equal(np.asarray(j["map"], dtype=np.float32), want.map)


# ------------------------------------------------------------------------------------ concurrency
def test_concurrent_requests_mixing_methods_give_the_sequential_maps_and_write_nothing(tiny_run, digits, capfd):
    import httpx

    app = create_app([tiny_run, tiny_run])  # two models: their explanations run in parallel, each on its own copy
    names = list(app.state.models)
    jobs = [(digits[i % 4], ("gradcam", "scorecam")[i % 2], names[i // 2 % 2]) for i in range(16)]
    stop = threading.Event()

    def chatter():  # another thread's stderr must reach stderr while Score-CAM runs (no redirect_stderr)
        k = 0
        while not stop.is_set():
            sys.stderr.write(f"other-thread-{k}\n")
            sys.stderr.flush()
            k += 1
            stop.wait(0.005)
        return k

    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=120) as h:
        def call(job):
            data, method, model = job
            r = h.post("/v1/explain", params={"method": method, "model": model, "return_map": "true"},
                       files={"file": ("d.png", data, "image/png")})
            assert r.status_code == 200, r.text
            return r.json()["map"]

        sequential = [call(j) for j in jobs]
        capfd.readouterr()
        with ThreadPoolExecutor(1) as side:
            said = side.submit(chatter)
            with ThreadPoolExecutor(8) as pool:
                concurrent = list(pool.map(call, jobs))
            stop.set()
            lines = said.result()
    err = capfd.readouterr().err
    assert concurrent == sequential
    assert err.splitlines() == [f"other-thread-{k}" for k in range(lines)]  # all of them, and nothing else (no tqdm bar)


# ------------------------------------------------------------------------------------ metrics, schema, models
def test_metrics_schema_and_models_list_the_endpoint(app, client, digits):
    from test_serve import _samples

    c = TestClient(create_app(models=app.state.models))
    for method in ("gradcam", "gradcam", "scorecam"):
        explain(c, digits[0], method=method)
    explain(c, digits[0], method="lime")
    m = _samples(c)
    name = next(iter(app.state.models))
    count = lambda method: m[("recogen_explain_duration_seconds_count", (("method", method), ("model", name)))]  # noqa: E731
    assert count("gradcam") == 2 and count("scorecam") == 1
    assert m[("recogen_http_requests_total", (("method", "POST"), ("route", "/v1/explain"), ("status", "200")))] == 3
    assert m[("recogen_http_requests_total", (("method", "POST"), ("route", "/v1/explain"), ("status", "422")))] == 1
    assert m[("recogen_explain_in_progress", ())] == 0

    op = client.get("/openapi.json").json()["paths"]["/v1/explain"]["post"]
    params = {p["name"]: p["schema"] for p in op["parameters"]}
    assert {"model", "method", "class", "layer", "return_map"} <= set(params)
    assert params["method"]["enum"] == list(METHODS) and params["method"]["default"] == "gradcam"
    assert {"multipart/form-data", "application/json", "image/*"} <= set(op["requestBody"]["content"])

    info = client.get("/v1/models").json()["models"][0]
    assert info["explain"] == {"endpoint": "/v1/explain", "methods": list(METHODS),
                               "default_method": "gradcam"}


# ------------------------------------------------------------------------------------ the web page
def test_page_has_the_explain_toggle_and_calls_the_endpoint(client):
    html, js = client.get("/").text, client.get("/static/app.js").text
    assert 'id="explain" type="checkbox"' in html and 'id="explain-method"' in html and 'id="explanation"' in html
    assert "m.explain.endpoint" in js and "overlay_png" in js
    assert "//" not in html and "http:" not in js and "https:" not in js  # no external assets (works offline)


def test_page_shows_the_overlay_beside_the_prediction_when_explain_is_ticked(app, digits, tmp_path):
    import httpx
    from test_web_page import launched_chromium

    f = tmp_path / "digit.png"
    f.write_bytes(digits[1])
    with ServerThread(app) as url, launched_chromium() as browser:
        pg = browser.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(url + "/")
        pg.wait_for_selector("body[data-state=ready]", timeout=20_000)
        assert pg.is_visible("#explain") and not pg.is_checked("#explain")
        assert pg.eval_on_selector_all("#explain-method option", "els => els.map(e => e.value)") == list(METHODS)
        pg.set_input_files("#file", str(f))  # unticked: a prediction only
        pg.wait_for_selector("body[data-state=done]", timeout=20_000)
        assert pg.get_attribute("#explanation", "data-state") == "off" and not pg.is_visible("#explanation")

        pg.select_option("#explain-method", "scorecam")
        pg.check("#explain")  # ticked with an image shown: it is explained now
        pg.wait_for_selector("#explanation[data-state=done]", timeout=30_000)
        pg.wait_for_selector("body[data-state=done]", timeout=20_000)
        want = httpx.post(f"{url}/v1/explain", params={"method": "scorecam"},
                          files={"file": ("d.png", digits[1], "image/png")}).json()
        shown = pg.get_attribute("img.explain-overlay", "src")
        assert shown == f"data:image/png;base64,{want['overlay_png']}"
        size = pg.evaluate("() => { const i = document.querySelector('img.explain-overlay'); return [i.naturalHeight, i.naturalWidth]; }")
        assert size == [48, 32] and pg.is_visible("img.explain-overlay") and pg.is_visible("#bars .bar")
        assert f"scorecam of {want['target']['label']}" in pg.inner_text("#status")
        # beside the prediction: the overlay's box starts to the right of the result's
        left_of = pg.evaluate("() => document.getElementById('result').getBoundingClientRect().right <= "
                              "document.getElementById('explanation').getBoundingClientRect().left")
        assert left_of

        f2 = tmp_path / "digit2.png"
        f2.write_bytes(digits[2])
        pg.set_input_files("#file", str(f2))  # a new image while ticked: predicted, then explained
        pg.wait_for_selector("#explanation[data-state=done]", timeout=30_000)
        pg.wait_for_selector("body[data-state=done]", timeout=20_000)
        pg.uncheck("#explain")
        assert pg.get_attribute("#explanation", "data-state") == "off" and pg.locator("img.explain-overlay").count() == 0
    assert errors == [], f"JavaScript errors on the page: {errors}"
