"""Foundation models in the service (``recogen serve --zero-shot NAME=PREFIX:ID_OR_DIR``): the endpoints the
foundation table gives (classify for clip:, detect for owl:, segment for sam:), the models listing,
errors and limits, the OpenAPI schema (fuzzed), the CLI and the web page's classify form, against the tiny
random-weight models of ``foundation_fixtures`` (32-64 px: milliseconds a call).

Answers are compared with the Python API (``recogen.zero_shot_classify`` ...) on the same image and
arguments: the service must add nothing and lose nothing on the way.
"""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from conftest import assert_one_line, main_in_process

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

pytest.importorskip("fastapi", reason="the service needs fastapi")
pytest.importorskip("transformers", reason="foundation models need transformers (pip install -e '.[large]')")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

import recogen  # noqa: E402
from foundation_fixtures import tiny_foundation_models  # noqa: E402

LABELS = "cat,dog,car,tree"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing here may reach the Hub: every model loads from its folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    return tiny_foundation_models(tmp_path_factory.mktemp("serve_foundation"))


@pytest.fixture(scope="module")
def app(tiny):
    from recogen.serve import create_app

    with pytest.MonkeyPatch.context() as mp:  # module scope: the autouse fixture has not run yet
        mp.setenv("HF_HUB_OFFLINE", "1")
        return create_app(zero_shot=[f"clip=clip:{tiny['clip']}", f"owl=owl:{tiny['owl']}", f"sam=sam:{tiny['sam']}"],
                          max_zero_shot_labels=8)


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


def noise(size=(56, 40), seed=0) -> Image.Image:
    """Seeded noise, not square: sizes must come back as given."""
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def post(client, path: str, img: Image.Image | None = None, headers=None, **params):
    """POST ``img`` (multipart) with ``params`` in the query string."""
    data = png(noise() if img is None else img)
    return client.post(path, params=params, files={"file": ("x.png", data, "image/png")}, headers=headers or {})


# ------------------------------------------------------------------------------------------- listing
def test_models_lists_each_model_with_its_endpoint_and_params(client, tiny):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert list(models) == ["clip", "owl", "sam"]
    assert {m["task"] for m in models.values()} == {"zero-shot"}
    assert [models[k]["capability"] for k in models] == ["classify", "detect", "segment"]
    assert models["clip"]["endpoint"] == "/v1/zero-shot/clip/classify" and models["clip"]["max_labels"] == 8
    assert models["clip"]["model"] == f"clip:{tiny['clip']}" and models["clip"]["family"] == "clip"
    params = {k: {p["name"]: p for p in m["params"]} for k, m in models.items()}
    assert list(params["clip"]) == ["labels", "prompt_template", "topk"]
    assert params["clip"]["labels"]["required"] and params["clip"]["labels"]["type"] == "string"
    assert list(params["owl"]) == ["labels", "prompt_template", "score_threshold", "iou", "max_det"]
    assert params["owl"]["max_det"]["maximum"] == 1000
    assert list(params["sam"]) == ["points", "boxes"] and not params["sam"]["points"]["required"]


def test_openapi_has_one_route_per_task_of_the_table(client):
    paths = client.get("/openapi.json").json()["paths"]
    for task in ("classify", "detect", "segment"):
        op = paths[f"/v1/zero-shot/{{name}}/{task}"]["post"]
        assert "zero-shot" in op["tags"]
        assert set(op["requestBody"]["content"]) == {"multipart/form-data", "application/json", "image/*"}
    seg = paths["/v1/zero-shot/{name}/segment"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"image", "points", "boxes"} <= set(seg["properties"])


# ---------------------------------------------------------------------- answers = the Python API's
def test_classify_answers_what_the_python_api_gives_and_labels_rank(client, tiny):
    img = noise()
    r = post(client, "/v1/zero-shot/clip/classify", img, labels=LABELS, topk=3)
    assert r.status_code == 200, r.text
    want = recogen.zero_shot_classify(f"clip:{tiny['clip']}", img, LABELS, topk=3, device="cpu")
    assert r.json() == want
    assert [t["label"] for t in r.json()["topk"]] == [t["label"] for t in want["topk"]]
    # a JSON body with a JSON list of labels gives the same answer
    j = client.post("/v1/zero-shot/clip/classify", json={"image": base64.b64encode(png(img)).decode(),
                                                         "labels": LABELS.split(","), "topk": 3})
    assert j.status_code == 200 and j.json()["topk"] == r.json()["topk"]
    # the labels are the question: without the best one, another label wins, and only given labels come back
    best = r.json()["label"]
    rest = ",".join(x for x in LABELS.split(",") if x != best)
    r2 = post(client, "/v1/zero-shot/clip/classify", img, labels=rest, topk=5)
    assert r2.json()["label"] != best and {t["label"] for t in r2.json()["topk"]} == set(rest.split(","))
    # and the prompt template changes the probabilities
    r3 = post(client, "/v1/zero-shot/clip/classify", img, labels=LABELS, topk=3, prompt_template="a {} here")
    assert r3.status_code == 200 and r3.json()["topk"] != r.json()["topk"]


def test_detect_answers_what_the_python_api_gives(client, tiny):
    img = noise(seed=1)
    r = post(client, "/v1/zero-shot/owl/detect", img, labels="cat,dog", score_threshold=0.0, max_det=4)
    assert r.status_code == 200, r.text
    want = recogen.zero_shot_detect(f"owl:{tiny['owl']}", img, "cat,dog", score_threshold=0.0, max_det=4, device="cpu")
    assert r.json() == want and r.json()["size"] == [40, 56] and 1 <= len(want["detections"]) <= 4


def test_segment_answers_the_python_apis_mask_as_png_or_json(client, tiny):
    img = noise(seed=2)
    r = post(client, "/v1/zero-shot/sam/segment", img, points="20,12;30,20")
    assert r.status_code == 200, r.text
    want = recogen.zero_shot_segment(f"sam:{tiny['sam']}", img, points="20,12;30,20", device="cpu")
    got = r.json()
    mask = np.array(Image.open(io.BytesIO(base64.b64decode(got["mask_png"]))))
    assert mask.shape == (40, 56) and (mask == want["mask"]).all()
    overlay = np.array(Image.open(io.BytesIO(base64.b64decode(got["overlay_png"]))))
    assert (overlay == want["overlay"]).all()
    assert {k: got[k] for k in ("size", "classes", "class_pixels", "scores")} == \
        {k: want[k] for k in ("size", "classes", "class_pixels", "scores")}
    # boxes, one object each; Accept: image/png gives the class mask itself
    r = post(client, "/v1/zero-shot/sam/segment", img, headers={"Accept": "image/png"}, boxes="0,0,20,20;28,10,50,38")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:300]
    want = recogen.zero_shot_segment(f"sam:{tiny['sam']}", img, boxes="0,0,20,20;28,10,50,38", device="cpu")
    assert (np.array(Image.open(io.BytesIO(r.content))) == want["mask"]).all() and want["classes"][-1] == "object 2"


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("path, params, status, words", [
    ("clip/classify", {}, 422, ["labels is required"]),
    ("clip/classify", {"labels": "cat"}, 422, ["at least 2"]),
    ("clip/classify", {"labels": "cat,cat,dog"}, 422, ["duplicates", "cat"]),
    ("clip/classify", {"labels": ",".join(f"l{i}" for i in range(9))}, 422, ["9 labels", "limit of 8"]),
    ("clip/classify", {"labels": "[\"cat\", "}, 422, ["JSON list"]),
    ("clip/classify", {"labels": "a,b", "topk": 0}, 422, ["topk"]),
    ("clip/classify", {"labels": "a,b", "prompt_template": "no braces"}, 422, ["{}"]),
    ("clip/classify", {"labels": "a,b", "points": "1,1"}, 422, ["points"]),
    ("owl/detect", {"labels": "a", "score_threshold": 2}, 422, ["score_threshold", "less than or equal to 1"]),  # before inference
    ("sam/segment", {}, 422, ["points or boxes"]),
    ("sam/segment", {"points": "100,10"}, 422, ["outside", "56x40"]),
    ("sam/segment", {"points": "1,2,3,4"}, 422, ["X,Y"]),
    ("sam/segment", {"boxes": "5,5,1,1"}, 422, ["X0 < X1"]),
    ("sam/segment", {"points": "1,1;2,2", "boxes": "0,0,9,9;1,1,8,8"}, 422, ["one box at most"]),
    ("nope/classify", {"labels": "a,b"}, 404, ["not served", "clip, owl, sam"]),
    ("owl/classify", {"labels": "a,b"}, 422, ["does detect", "/v1/zero-shot/owl/detect"]),
])
def test_bad_input_is_a_4xx_json_error_naming_it(client, path, params, status, words):
    r = post(client, f"/v1/zero-shot/{path}", **params)
    assert r.status_code == status, r.text
    msg = r.json()["error"]
    assert all(w in msg for w in words), msg


def test_bad_bodies_and_accept(client):
    r = client.post("/v1/zero-shot/clip/classify", params={"labels": "a,b"}, files={"file": ("x.png", b"nope", "image/png")})
    assert r.status_code == 400 and "error" in r.json()
    r = post(client, "/v1/zero-shot/clip/classify", headers={"Accept": "image/png"}, labels="a,b")
    assert r.status_code == 406 and "JSON" in r.json()["error"]


def test_schema_fuzzing_of_the_zero_shot_routes_finds_no_server_error(app):
    """schemathesis, as tests/test_serve_pipelines.py runs it, on the zero-shot operations."""
    schemathesis = pytest.importorskip("schemathesis", reason="schema fuzzing needs schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen = []
    names = {"classify": "clip", "detect": "owl", "segment": "sam"}
    for result in schema.get_all_operations():
        op = result.ok()
        if not op.path.startswith("/v1/zero-shot/"):
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=3, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def check(case):
                if mode == GenerationMode.POSITIVE and case.path_parameters:
                    case.path_parameters["name"] = names[op.path.rsplit("/", 1)[-1]]  # a served model
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
    assert len(seen) >= 10 and any(400 <= s < 500 for s in seen)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_serve_loads_zero_shot_models_and_fails_fast_on_a_wrong_one(capsys, tiny, tmp_path, monkeypatch):
    rc, _, err = main_in_process(capsys, "serve", "--zero-shot", f"x=clip:{tmp_path}", "--port", "1")
    assert_one_line(rc, err, str(tmp_path))
    rc, _, err = main_in_process(capsys, "serve", "--zero-shot", f"x=nofamily:{tmp_path}", "--port", "1")
    assert_one_line(rc, err, "clip:")
    rc, _, err = main_in_process(capsys, "serve", "--zero-shot", f"clip:{tiny['clip']}", "--max-zero-shot-labels", "1")
    assert_one_line(rc, err, "--max-zero-shot-labels")

    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    rc, out, err = main_in_process(capsys, "serve", "--zero-shot", f"zs=clip:{tiny['clip']}", "--zero-shot",
                                   f"clip:{tiny['clip']}", "--port", "0")
    assert rc == 0, err
    assert "serving zs (zero-shot), clip (zero-shot)" in out
    models = {m["name"]: m for m in TestClient(started["app"]).get("/v1/models").json()["models"]}
    assert list(models) == ["zs", "clip"] and models["zs"]["max_labels"] == 64


# ------------------------------------------------------------------------------------------- web page
def test_page_runs_the_classify_form_and_shows_the_apis_ranking(app, tmp_path):
    import httpx
    from test_serve import ServerThread
    from test_web_page import launched_chromium

    f = tmp_path / "noise.png"
    f.write_bytes(png(noise()))
    with launched_chromium() as browser, ServerThread(app) as url:
        pg = browser.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(url + "/")
        pg.wait_for_selector("body[data-state=ready]", timeout=20_000)
        assert pg.input_value("#model") == "clip" and pg.is_visible("#predict-panel")
        assert pg.get_attribute("#param-labels", "required") is not None
        pg.fill("#param-labels", LABELS)
        pg.fill("#param-topk", "4")
        pg.set_input_files("#file", str(f))
        pg.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=30_000)
        assert pg.get_attribute("body", "data-state") == "done", pg.inner_text("#status")
        assert pg.get_attribute("#result", "data-state") == "topk"
        shown = pg.eval_on_selector_all(".bar", "els => els.map(e => [e.dataset.label, Number(e.dataset.prob)])")
        want = httpx.post(f"{url}/v1/zero-shot/clip/classify", params={"labels": LABELS, "topk": 4}, timeout=60,
                          files={"file": ("noise.png", f.read_bytes(), "image/png")}).json()
        assert shown == [[t["label"], pytest.approx(t["prob"])] for t in want["topk"]]
        # new labels run the image again: the bars show only those
        pg.fill("#param-labels", "red,green")
        pg.dispatch_event("#param-labels", "change")
        pg.wait_for_function("document.querySelectorAll('.bar').length === 2 && document.body.dataset.state === 'done'",
                             timeout=30_000)
        assert sorted(pg.eval_on_selector_all(".bar", "els => els.map(e => e.dataset.label)")) == ["green", "red"]
        # the segment model's form asks for points in a text box
        pg.select_option("#model", "sam")
        assert pg.is_visible("#param-points") and pg.is_visible("#param-boxes")
        pg.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"
