"""Diffusers pipelines in the service (``recogen serve --pipeline NAME=DIR``): the endpoints the capability
table gives (text2img, img2img, inpaint), the models listing, errors and limits, the OpenAPI schema
(fuzzed), the CLI and the web page's form, against the tiny random-weight pipeline of
``pipeline_fixtures`` (32 px, 2 steps: tenths of a second per image).

Answers are compared with the Python API (``recogen.text2img`` ...) on the same arguments: the
service must add nothing and lose nothing on the way.
"""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from conftest import assert_one_line, main_in_process

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

pytest.importorskip("fastapi", reason="the service needs fastapi")
pytest.importorskip("diffusers", reason="pipelines need diffusers and transformers (pip install -e '.[large]')")
pytest.importorskip("transformers", reason="pipelines need diffusers and transformers (pip install -e '.[large]')")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline_fixtures import tiny_pipeline_dir  # noqa: E402

PROMPT = "a red square"
LIMITS = dict(max_pipeline_steps=3, max_pipeline_images=2, max_pipeline_size=64)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing here may reach the Hub: the pipeline loads from its folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny() -> str:
    return str(tiny_pipeline_dir())


@pytest.fixture(scope="module")
def app(tiny):
    from recogen.serve import create_app

    return create_app(pipelines=[f"tiny={tiny}"], **LIMITS)  # a folder: loaded without the network


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def pattern(size=(40, 32)) -> bytes:
    """A smooth colour pattern (the autoencoder keeps gradients roughly)."""
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    return png(Image.fromarray(np.stack([x * 255 // size[0], y * 255 // size[1], np.full_like(x, 128)], -1).astype(np.uint8)))


def square_mask(size=(40, 32), box=(8, 8, 24, 24)) -> bytes:
    m = Image.new("L", size, 0)
    m.paste(255, box)
    return png(m)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ----------------------------------------------------------------------------------------- listing
def test_models_lists_the_pipeline_with_its_capabilities_endpoints_and_params(client, tiny):
    (m,) = client.get("/v1/models").json()["models"]
    assert (m["name"], m["task"], m["model"], m["pipeline"], m["device"], m["backend"]) == (
        "tiny", "pipeline", tiny, "StableDiffusionPipeline", "cpu", "diffusers")
    assert m["default_size"] == 32 and m["max_size"] == 64 and not m["samples"]
    caps = {c["name"]: c for c in m["capabilities"]}
    assert list(caps) == ["text2img", "img2img", "inpaint"]
    assert [(c["endpoint"], c["image"], c["mask"]) for c in caps.values()] == [
        ("/v1/pipelines/tiny/text2img", False, False), ("/v1/pipelines/tiny/img2img", True, False),
        ("/v1/pipelines/tiny/inpaint", True, True)]
    params = {c: {p["name"]: p for p in caps[c]["params"]} for c in caps}
    assert list(params["text2img"]) == ["prompt", "negative_prompt", "steps", "guidance", "seed", "n", "size"]
    assert list(params["inpaint"])[-2:] == ["strength", "keep_unmasked"] and "keep_unmasked" not in params["img2img"]
    assert params["text2img"]["prompt"]["required"] and params["text2img"]["prompt"]["type"] == "string"
    # defaults are the Python functions' own, maxima the server's limits
    assert (params["img2img"]["strength"]["default"], params["inpaint"]["strength"]["default"]) == (0.6, 1.0)
    assert params["text2img"]["steps"]["maximum"] == 3 and params["text2img"]["n"]["maximum"] == 2
    assert params["text2img"]["guidance"]["default"] == 7.5 and params["text2img"]["size"]["type"] == "string"
    assert client.get("/healthz").json() == {"status": "ok", "models": 1}


def test_openapi_has_one_route_per_capability(client):
    paths = client.get("/openapi.json").json()["paths"]
    for cap in ("text2img", "img2img", "inpaint"):
        op = paths[f"/v1/pipelines/{{name}}/{cap}"]["post"]
        assert op["tags"] == ["pipelines"] and {"422", "404", "406"} <= set(op["responses"])
        assert "application/json" in op["requestBody"]["content"]
    inpaint = paths["/v1/pipelines/{name}/inpaint"]["post"]["requestBody"]["content"]
    assert set(inpaint["multipart/form-data"]["schema"]["required"]) == {"file", "mask", "prompt"}
    assert "image/*" not in inpaint and "image/*" in paths["/v1/pipelines/{name}/img2img"]["post"]["requestBody"]["content"]


# --------------------------------------------------------------------------------------- endpoints
def test_text2img_answers_sized_pngs_with_the_python_apis_record_and_bytes(client, tiny):
    import recogen

    body = {"prompt": PROMPT, "steps": 2, "size": "32x24", "seed": 3}
    r = client.post("/v1/pipelines/tiny/text2img", json=body)
    assert r.status_code == 200, r.text
    j = r.json()
    assert (j["model"], j["capability"], len(j["images_png"])) == ("tiny", "text2img", 1)
    assert decoded(j["images_png"][0]).size == (32, 24)
    want = recogen.text2img(tiny, PROMPT, steps=2, size="32x24", seed=3, device="cpu")
    assert base64.b64decode(j["images_png"][0]) == png(want.images[0])  # the same function, the same bytes
    timing = {"seconds", "load_seconds"}
    assert {k: v for k, v in j["record"].items() if k not in timing} == {
        k: v for k, v in want.record.items() if k not in timing}

    again = client.post("/v1/pipelines/tiny/text2img", json=body).json()  # same seed, same bytes
    assert again["images_png"] == j["images_png"]
    raw = client.post("/v1/pipelines/tiny/text2img", json=body, headers={"Accept": "image/png"})
    assert raw.headers["content-type"] == "image/png" and raw.content == base64.b64decode(j["images_png"][0])
    assert raw.headers["x-recogen-seed"] == "3" and raw.headers["x-recogen-model"] == "tiny"

    # parameters from the query string too; n images from seeds seed, seed + 1; the model's size by default
    two = client.post("/v1/pipelines/tiny/text2img", params={"prompt": PROMPT, "steps": 2, "seed": 2, "n": 2}).json()
    assert two["record"]["seeds"] == [2, 3] and [decoded(b).size for b in two["images_png"]] == [(32, 32)] * 2
    assert two["images_png"][0] != two["images_png"][1]


def test_img2img_takes_the_image_as_multipart_json_or_raw_body(client):
    img = pattern()
    form = client.post("/v1/pipelines/tiny/img2img", data={"prompt": PROMPT, "steps": "2", "seed": "1"},
                       files={"file": ("p.png", img, "image/png")})
    assert form.status_code == 200, form.text
    assert decoded(form.json()["images_png"][0]).size == (40, 32)  # the input's own size
    rec = form.json()["record"]
    assert (rec["task"], rec["strength"], rec["denoise_steps"], rec["pipeline"]) == (
        "img2img", 0.6, 1, "StableDiffusionImg2ImgPipeline")
    as_json = client.post("/v1/pipelines/tiny/img2img", json={"image": b64(img), "prompt": PROMPT, "steps": 2, "seed": 1})
    assert as_json.json()["images_png"] == form.json()["images_png"]
    raw = client.post("/v1/pipelines/tiny/img2img", params={"prompt": PROMPT, "steps": 2, "seed": 1, "size": 16},
                      content=img, headers={"Content-Type": "image/png"})
    assert raw.status_code == 200, raw.text
    assert decoded(raw.json()["images_png"][0]).size == (16, 16)


def test_inpaint_repaints_only_the_mask_and_keeps_the_other_pixels(client):
    img, mask = pattern(), square_mask()
    r = client.post("/v1/pipelines/tiny/inpaint", data={"prompt": PROMPT, "steps": "2"},
                    files={"file": ("p.png", img, "image/png"), "mask": ("m.png", mask, "image/png")})
    assert r.status_code == 200, r.text
    out = np.asarray(decoded(r.json()["images_png"][0]).convert("RGB"))
    inp = np.asarray(Image.open(io.BytesIO(img)).convert("RGB"))
    keep = np.asarray(Image.open(io.BytesIO(mask))) == 0
    assert out.shape == inp.shape and (out[keep] == inp[keep]).all()
    assert r.json()["record"]["masked_fraction"] == pytest.approx(0.2)


def test_a_call_runs_under_the_models_lock(app, client, monkeypatch):
    from recogen.serve.pipelines import ServedPipeline

    seen, run = [], ServedPipeline.run

    def spy(self, cap, images, params):
        seen.append(self.lock.locked())
        return run(self, cap, images, params)

    monkeypatch.setattr(ServedPipeline, "run", spy)
    assert client.post("/v1/pipelines/tiny/text2img", json={"prompt": PROMPT, "steps": 1}).status_code == 200
    assert seen == [True]


# ----------------------------------------------------------------------------------- errors, limits
BAD = [  # (capability, request keyword arguments, status, words of the error)
    ("text2img", dict(json={"steps": 2}), 422, "prompt is required"),
    ("text2img", dict(json={"prompt": "  "}), 422, "prompt is required"),
    ("text2img", dict(json={"prompt": PROMPT, "steps": 0}), 422, "steps"),
    ("text2img", dict(json={"prompt": PROMPT, "guidance": "lots"}), 422, "guidance"),
    ("text2img", dict(json={"prompt": PROMPT, "seed": -1}), 422, "seed"),
    ("text2img", dict(json={"prompt": PROMPT, "colour": "red"}), 422, "colour"),
    ("text2img", dict(json={"prompt": PROMPT, "size": "30"}), 422, "multiples of 8"),
    ("text2img", dict(json={"prompt": PROMPT, "size": "big"}), 422, "size"),
    ("text2img", dict(content=b"{nope", headers={"Content-Type": "application/json"}), 400, "not valid JSON"),
    ("text2img", dict(json=[1, 2]), 422, "object"),
    ("text2img", dict(content=b"prompt=x", headers={"Content-Type": "text/plain"}), 415, "content type"),
    ("text2img", dict(json={"prompt": PROMPT, "n": 2}, headers={"Accept": "image/png"}), 406, "n=2"),
    ("img2img", dict(json={"prompt": PROMPT}), 422, '"image"'),
    ("img2img", dict(data={"prompt": PROMPT}, files={"file": ("x.png", b"not a picture", "image/png")}), 400,
     "not an image"),
    ("img2img", dict(json={"prompt": PROMPT, "image": "%%%"}), 400, "base64"),
    ("img2img", dict(json={"prompt": PROMPT, "image": None, "strength": 0}), 422, "base64"),
    ("inpaint", dict(data={"prompt": PROMPT}, files={"file": ("p.png", pattern(), "image/png")}), 422, "'mask'"),
    ("inpaint", dict(content=pattern(), headers={"Content-Type": "image/png"}), 415, "'mask'"),
    ("inpaint", dict(json={"prompt": PROMPT, "steps": 2, "image": b64(pattern()), "mask": b64(square_mask((16, 16)))}),
     400, "the mask is 16x16"),
    ("inpaint", dict(json={"prompt": PROMPT, "steps": 2, "image": b64(pattern()), "mask": b64(square_mask(box=(0, 0, 0, 0)))}),
     422, "no white pixels"),
    ("img2img", dict(json={"prompt": PROMPT, "steps": 2, "strength": 0.2, "image": b64(pattern())}), 422,
     "leaves no denoising step"),
]


@pytest.mark.parametrize("cap, kwargs, status, words", BAD, ids=[f"{c}-{i}" for i, (c, *_) in enumerate(BAD)])
def test_bad_input_is_a_4xx_json_error_naming_it(client, cap, kwargs, status, words):
    r = client.post(f"/v1/pipelines/tiny/{cap}", **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["error"], r.json()


def test_unknown_pipelines_are_404_and_the_limits_hold(app, client):
    r = client.post("/v1/pipelines/nope/text2img", json={"prompt": PROMPT})
    assert r.status_code == 404 and "nope" in r.json()["error"] and "tiny" in r.json()["error"]
    over = [({"prompt": PROMPT, "steps": 4}, "steps"), ({"prompt": PROMPT, "n": 3}, "n"),
            ({"prompt": PROMPT, "size": "72x8"}, "--max-pipeline-size")]
    for body, words in over:
        r = client.post("/v1/pipelines/tiny/text2img", json=body)
        assert r.status_code == 422 and words in r.json()["error"], (body, r.text)
    big = pattern((96, 40))  # its own size is over the 64 px limit: refused unless a size within it is asked
    r = client.post("/v1/pipelines/tiny/img2img", json={"prompt": PROMPT, "steps": 2, "image": b64(big)})
    assert r.status_code == 422 and "96x40" in r.json()["error"] and "input image's size" in r.json()["error"]
    r = client.post("/v1/pipelines/tiny/img2img", json={"prompt": PROMPT, "steps": 2, "size": "48x16", "image": b64(big)})
    assert r.status_code == 200 and decoded(r.json()["images_png"][0]).size == (48, 16)

    from recogen.serve import create_app

    small = TestClient(create_app(models=app.state.models, max_upload_mb=0.001, api_key="k"))
    r = small.post("/v1/pipelines/tiny/img2img", json={"prompt": PROMPT, "image": b64(pattern())})
    assert r.status_code == 401  # the key first
    r = small.post("/v1/pipelines/tiny/img2img", files={"file": ("p.png", bytes(4000), "image/png")},
                   data={"prompt": PROMPT}, headers={"X-API-Key": "k"})
    assert r.status_code == 413 and "--max-upload-mb" in r.json()["error"]


def test_schema_fuzzing_of_the_pipeline_routes_finds_no_server_error(app):
    """schemathesis, as tests/test_serve.py runs it, on the pipeline operations of a server whose limits
    keep each generated call tiny (1 step, 1 image, 32 px)."""
    schemathesis = pytest.importorskip("schemathesis", reason="schema fuzzing needs schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode

    from recogen.serve import create_app

    fuzzed = create_app(models=app.state.models, max_pipeline_steps=1, max_pipeline_images=1, max_pipeline_size=32)
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed)
    seen = []
    for result in schema.get_all_operations():
        op = result.ok()
        if not op.path.startswith("/v1/pipelines/"):
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=3, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def check(case):
                if mode == GenerationMode.POSITIVE and case.path_parameters:
                    case.path_parameters["name"] = "tiny"  # a served pipeline, so that calls really run
                r = case.call()
                seen.append(r.status_code)
                assert r.status_code < 500, (case.method, case.path, case.query, r.status_code, r.text[:500])
                ctype = r.headers.get("content-type") or [""]
                if r.status_code >= 400 and ctype[0].startswith("application/json"):
                    assert "error" in r.json(), r.text[:500]

            try:
                check()
            except Unsatisfiable:
                pass
    assert len(seen) >= 10 and any(s == 200 for s in seen) and any(400 <= s < 500 for s in seen)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_serve_loads_pipelines_and_fails_fast_on_a_wrong_one(capsys, tiny, tmp_path, monkeypatch):
    rc, _, err = main_in_process(capsys, "serve", "--port", "1")
    assert_one_line(rc, err, "--pipeline NAME=ID_OR_DIR")
    rc, _, err = main_in_process(capsys, "serve", "--pipeline", f"sd={tmp_path}", "--port", "1")
    assert_one_line(rc, err, "not a diffusers pipeline folder", str(tmp_path))
    rc, _, err = main_in_process(capsys, "serve", "--pipeline", f"sd={tiny}", "--max-pipeline-steps", "0")
    assert_one_line(rc, err, "--max-pipeline-steps")

    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    rc, out, err = main_in_process(capsys, "serve", "--pipeline", f"sd={tiny}", "--pipeline", tiny, "--port", "0",
                                   "--max-pipeline-size", "32")
    assert rc == 0, err
    assert "serving sd (pipeline), tiny-sd (pipeline)" in out
    models = {m["name"]: m for m in TestClient(started["app"]).get("/v1/models").json()["models"]}
    assert list(models) == ["sd", "tiny-sd"] and models["sd"]["max_size"] == 32


# ------------------------------------------------------------------------------------------- web page
def test_page_runs_the_text2img_form_and_shows_the_apis_image(app, tmp_path):
    import httpx
    from test_serve import ServerThread
    from test_web_page import launched_chromium

    with launched_chromium() as browser, ServerThread(app) as url:
        pg = browser.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(url + "/")
        pg.wait_for_selector("body[data-state=ready]", timeout=20_000)
        assert pg.is_visible("#pipeline-panel") and not pg.is_visible("#predict-panel")
        assert pg.eval_on_selector_all("#capability option", "els => els.map(e => e.value)") == [
            "text2img", "img2img", "inpaint"]
        assert not pg.is_visible("#pipe-image") and pg.get_attribute("#pipe-steps", "max") == "3"
        pg.fill("#pipe-prompt", PROMPT)
        pg.fill("#pipe-steps", "2")
        pg.fill("#pipe-seed", "5")
        pg.fill("#pipe-size", "24x16")
        pg.click("#pipeline-form button")
        pg.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=30_000)
        assert pg.get_attribute("body", "data-state") == "done", pg.inner_text("#status")
        assert pg.get_attribute("#result", "data-state") == "images" and "24x16" in pg.inner_text("#status")
        shown = pg.get_attribute("img.made-image[data-index='0']", "src").split(",", 1)[1]
        want = httpx.post(f"{url}/v1/pipelines/tiny/text2img", timeout=60,
                          json={"prompt": PROMPT, "steps": 2, "seed": 5, "size": "24x16"}).json()
        assert shown == want["images_png"][0]  # the very image the API gives for those values
        assert pg.locator("#table tr[data-key=prompt]").count() == 1  # the record, as a table
        # inpaint's form asks for the image and its mask, and keeps the prompt typed for text2img
        pg.select_option("#capability", "inpaint")
        assert pg.is_visible("#pipe-image") and pg.is_visible("#pipe-mask") and pg.is_checked("#pipe-keep_unmasked")
        assert pg.input_value("#pipe-prompt") == PROMPT and pg.input_value("#pipe-strength") == "1"
        pg.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def test_requests_queued_for_a_slow_model_leave_the_others_and_the_thread_pool_free(tiny, monkeypatch):
    """Requests wait for a busy model's turn in the event loop, not in worker threads: with the thread pool
    cut to 3 workers and 6 requests queued behind a slow model, another model still answers at once; past
    the queue bound a request gets 503 with Retry-After instead of waiting."""
    import asyncio
    import threading
    import time

    import anyio
    import httpx

    from recogen.serve import app as app_module
    from recogen.serve import create_app
    from recogen.serve.pipelines import ServedPipeline

    app = create_app(pipelines=[f"slow={tiny}", f"fast={tiny}"], **LIMITS)
    release = threading.Event()
    real_run = ServedPipeline.run

    def run(self, cap, images, p):
        if self.name == "slow":
            release.wait(20)  # busy until the test has seen the fast model answer
        return real_run(self, cap, images, p)

    monkeypatch.setattr(ServedPipeline, "run", run)
    monkeypatch.setattr(app_module, "MAX_QUEUE", 6)
    body = {"prompt": "x", "steps": 1, "size": 32}

    async def scenario():
        anyio.to_thread.current_default_thread_limiter().total_tokens = 3
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            slow = [asyncio.create_task(c.post("/v1/pipelines/slow/text2img", json=body)) for _ in range(7)]
            await asyncio.sleep(0.5)  # all queued: one running (blocked), six waiting for their turn
            over = await c.post("/v1/pipelines/slow/text2img", json=body)
            t0 = time.perf_counter()
            fast = await asyncio.wait_for(c.post("/v1/pipelines/fast/text2img", json=body), 15)
            fast_s = time.perf_counter() - t0
            release.set()
            done = await asyncio.gather(*slow)
        return over, fast, fast_s, done

    try:
        over, fast, fast_s, done = asyncio.run(scenario())  # the thread limit is this event loop's only
    finally:
        release.set()
    assert fast.status_code == 200, (fast.text, fast_s)  # not stuck behind the slow model's queue (wait_for: 15 s)
    assert over.status_code == 503 and over.headers.get("retry-after") and "waiting" in over.json()["error"], over.text
    assert [r.status_code for r in done] == [200] * 7
