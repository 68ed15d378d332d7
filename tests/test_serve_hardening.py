"""Issue 12 for the service: every bad input a clear 4xx, nothing lost, nothing executed.

Long thin images (side limit, decoding and resizing outside the model's lock), an empty API key, deeply
nested JSON and huge integers, offline /docs, HEAD, a port in use, stalled uploads, 16-bit and corrupt PNGs.
Uses the tiny runs of test_serve.py (trained once per process and shared).
"""
from __future__ import annotations

import base64
import io
import re
import socket
import struct
import time
import zlib

import numpy as np
import pytest

from conftest import one_line_error, run_cli
from test_serve import ServerThread, digit_pngs, png, post_image, scene_png, served_runs

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

from fastapi.testclient import TestClient  # noqa: E402  (test_serve skips the module without fastapi)

import recogen  # noqa: E402
from recogen.serve import create_app  # noqa: E402


@pytest.fixture(scope="module")
def runs():
    return served_runs()


@pytest.fixture(scope="module")
def app(runs):
    return create_app([runs[k] for k in ("clf", "det", "seg", "gen")])


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


def decoded(data: bytes):
    """``data`` decoded by Pillow: what the predictors are compared on (an 8-bit PNG, so no conversion)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _grey_png(width: int, height: int, rows: bytes) -> bytes:
    """An 8-bit grey PNG of ``rows`` (each row: filter byte 0 + width bytes), built by hand."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows, 9))
            + _chunk(b"IEND", b""))


# ------------------------------------------------------------------------ long thin images, the lock
def test_a_long_thin_image_is_refused_by_the_side_limit_before_decoding(client):
    line = _grey_png(16_000_000, 1, b"\0" * 16_000_001)  # 1 x 16,000,000: within --max-pixels, 16 KB
    assert len(line) < 40_000
    for task, data in (("classify", line), ("segment", line)):
        t0 = time.perf_counter()
        r = post_image(client, task, data)
        assert r.status_code == 413, (task, r.text)
        msg = r.json()["error"]
        assert "16000000x1" in msg and "10000 px" in msg and "--max-side" in msg, msg
        assert time.perf_counter() - t0 < 5, "refused from the header, not after decoding"
    tall = _grey_png(1, 20_000, b"\0\0" * 20_000)
    r = post_image(client, "detect", tall)
    assert r.status_code == 413 and "1x20000" in r.json()["error"]
    # a long image within the limit is served as before
    ok = _grey_png(3, 9_000, b"\0\x80\x80\x80" * 9_000)
    r = post_image(client, "classify", ok)
    assert r.status_code == 200 and r.json()["label"] == recogen.load(served_runs()["clf"]).predict(decoded(ok))["label"]


def test_max_side_is_configurable(app):
    c = TestClient(create_app(models=app.state.models, max_side=100))
    r = post_image(c, "classify", _grey_png(101, 1, b"\0" * 102))
    assert r.status_code == 413 and "limit of 100 px" in r.json()["error"]
    assert post_image(c, "classify", _grey_png(100, 1, b"\0" * 101)).status_code == 200


def test_decoding_and_resizing_run_outside_the_model_lock(app, runs, monkeypatch):
    """Only the forward pass holds a model's lock: a big upload must not stall the other clients."""
    import torchvision.transforms.v2.functional as F

    from recogen.serve import app as app_module

    locks = [m.lock for m in app.state.models.values()]
    seen: dict[str, list[bool]] = {"decode": [], "resize": []}

    def recording(name, fn):
        def wrapper(*args, **kwargs):
            seen[name].append(any(lock.locked() for lock in locks))
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(app_module, "decode_image", recording("decode", app_module.decode_image))
    monkeypatch.setattr(F, "resize", recording("resize", F.resize))
    c = TestClient(app)
    from PIL import Image

    big_digit = png(np.kron(np.asarray(Image.open(io.BytesIO(digit_pngs()[1]))), np.ones((2, 2), dtype=np.uint8)))
    # (64 x 64: resized to the model's 16 x 16)
    answers = {}
    for task, data in (("classify", big_digit), ("detect", scene_png()), ("segment", scene_png())):
        n = len(seen["resize"])
        r = post_image(c, task, data)
        assert r.status_code == 200, r.text
        assert len(seen["resize"]) > n, f"{task}: the image was not resized (test broken?)"
        answers[task] = r.json()
    assert seen["decode"] and not any(seen["decode"]), seen
    assert not any(seen["resize"]), f"resized while a model's lock was held: {seen['resize']}"
    # and the answers are still exactly the predictor's
    monkeypatch.undo()
    assert answers["classify"] == recogen.load(runs["clf"]).predict(decoded(big_digit))
    assert answers["detect"] == recogen.load(runs["det"]).predict(decoded(scene_png()))
    want = recogen.load(runs["seg"]).predict(decoded(scene_png()))
    assert answers["segment"] == {"size": want["size"], "class_pixels": want["class_pixels"]}


# ---------------------------------------------------------------------------------------- API key
@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_api_key_is_a_one_line_cli_error_not_an_open_server(runs, key):
    r = run_cli("serve", runs["clf"], "--port", str(_free_port()), "--api-key", key, timeout=60)
    one_line_error(r, "--api-key is empty", "leave out --api-key", "without authentication")
    assert "serving" not in r.stdout


def test_an_empty_api_key_in_the_environment_is_an_error(runs, monkeypatch):
    monkeypatch.setenv("RECOGEN_API_KEY", "")
    r = run_cli("serve", runs["clf"], "--port", str(_free_port()), timeout=60)
    one_line_error(r, "$RECOGEN_API_KEY is empty", "unset RECOGEN_API_KEY")


def test_create_app_refuses_keys_that_cannot_guard_it(app):
    from recogen.errors import ConfigError

    for key, needle in (("", "empty"), (" \t", "empty"), (" s3cret", "spaces"), ("schlüssel", "ASCII")):
        with pytest.raises(ConfigError, match=needle):
            create_app(models=app.state.models, api_key=key)
    c = TestClient(create_app(models=app.state.models, api_key="s3cret"))
    assert c.get("/v1/models").status_code == 401
    assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_the_api_key_comes_from_the_environment(monkeypatch):
    from recogen.serve.cli_serve import _api_key

    monkeypatch.setenv("RECOGEN_API_KEY", "from-env")
    assert _api_key(None) == "from-env" and _api_key("given") == "given"
    monkeypatch.delenv("RECOGEN_API_KEY")
    assert _api_key(None) is None


# ------------------------------------------------------------------------------ hostile JSON bodies
def test_deeply_nested_json_and_huge_integers_are_400_not_500(client):
    digit = base64.b64encode(digit_pngs()[0]).decode()
    js = {"Content-Type": "application/json"}
    deep = b"[" * 200_000 + b"]" * 200_000
    for path, body in (("/v1/classify", deep), ("/v1/generate", b"[" * 30_000 + b"]" * 30_000),
                       ("/v1/classify", b'{"image": ' + b"[" * 5_000 + b"]" * 5_000 + b"}")):
        r = client.post(path, content=body, headers=js)
        assert r.status_code == 400 and "nested too deeply" in r.json()["error"], (path, r.text)
    huge = "9" * 5_000
    for path, body in (("/v1/classify", f'{{"image": "{digit}", "topk": {huge}}}'), ("/v1/generate", f'{{"n": {huge}}}')):
        r = client.post(path, content=body.encode(), headers=js)
        assert r.status_code == 400 and "digits" in r.json()["error"], (path, r.text)
    # over the generate body limit: refused before parsing
    r = client.post("/v1/generate", content=deep, headers=js)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    # huge numbers in the query string and a form field are invalid parameters
    for r in (client.post("/v1/generate", params={"n": huge}), post_image(client, "classify", digit_pngs()[0], topk=huge),
              client.post("/v1/classify", files={"file": ("d.png", digit_pngs()[0], "image/png")}, data={"topk": huge})):
        assert r.status_code == 422, r.text


# -------------------------------------------------------------------------------- docs, HEAD, port
def test_docs_load_their_assets_from_the_service_not_a_cdn(client):
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"], page
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", r.text) + re.findall(r"url: *'([^']+)'", r.text)
        assert not [u for u in urls if "//" in u], (page, urls)  # nothing from another host
        scripts = [u for u in urls if u.endswith(".js")]
        assert scripts, (page, r.text[:500])
        for u in scripts + [u for u in urls if u.endswith(".css")]:
            asset = client.get(u)
            assert asset.status_code == 200 and len(asset.content) > 10_000, (page, u)
    assert client.get("/openapi.json").json()["openapi"].startswith("3.")


def test_docs_without_fastapi_offline_are_a_plain_page_linking_the_schema(app, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "fastapi_offline", None)  # an environment installed before the dependency
    r = TestClient(create_app(models=app.state.models)).get("/docs")
    assert r.status_code == 200 and 'href="openapi.json"' in r.text and "pip install fastapi-offline" in r.text
    assert "//" not in r.text


def test_head_is_answered_on_every_get_route_and_kept_out_of_the_schema(app, client):
    for path in ("/", "/healthz", "/v1/models", "/metrics", "/docs", "/openapi.json", "/static/app.js"):
        r = client.head(path)
        assert r.status_code == 200 and not r.content, (path, r.status_code)
        assert r.headers["content-type"] == client.get(path).headers["content-type"], path
    keyed = TestClient(create_app(models=app.state.models, api_key="s3cret"))
    assert keyed.head("/v1/models").status_code == 401 and keyed.head("/healthz").status_code == 200
    assert keyed.head("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
    ops = {m for item in client.get("/openapi.json").json()["paths"].values() for m in item}
    assert "head" not in ops, ops
    assert client.head("/v1/classify").status_code == 405  # a POST route still says so


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_on_a_port_in_use_is_one_line_error_before_serving(runs):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_cli("serve", runs["clf"], "--port", str(port), timeout=120)
    one_line_error(r, f"port {port} is in use", "--port")
    assert "serving" not in r.stdout, r.stdout


def test_a_stalled_upload_is_answered_408_and_idle_connections_time_out(runs, monkeypatch, capsys):
    """--body-timeout reaches the app (a stalled body: 408, connection closed) and --keep-alive-timeout
    reaches uvicorn (its timeout_keep_alive)."""
    import uvicorn

    from recogen.cli import main
    from recogen.errors import ConfigError

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    assert main(["serve", str(runs["clf"]), "--port", str(_free_port())]) == 0
    assert main(["serve", str(runs["clf"]), "--port", str(_free_port()), "--keep-alive-timeout", "2",
                 "--body-timeout", "0.5"]) == 0
    assert [kw["timeout_keep_alive"] for _, kw in calls] == [5, 2]
    assert "serving clf (classify)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="body-timeout"):
        create_app(models={}, body_timeout=0)

    with ServerThread(calls[1][0]) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
                      b"Content-Length: 100000\r\n\r\n" + digit_pngs()[0][:50])  # ... and then nothing
            t0, got = time.monotonic(), b""
            while chunk := s.recv(65536):  # the server closes the connection after its answer
                got += chunk
            assert time.monotonic() - t0 < 15
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), got[:300]
    assert b"0.5 s" in body and b"--body-timeout" in body


# ------------------------------------------------------------------------------------ image decoding
def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped(client, runs):
    from PIL import Image

    from recogen.serve.images import decode_image

    values = np.array([[0, 257, 32768, 65535, 1000, 40000]], dtype=np.uint16)
    img = decode_image(png(values))
    assert img.mode == "L"
    assert np.asarray(img).tolist() == [[0, 1, 128, 255, 4, 156]]  # round(v * 255 / 65535)
    # a real digit saved with 16 bits per pixel gets the answer of its 8-bit original
    eight = np.asarray(Image.open(io.BytesIO(digit_pngs()[2])))
    sixteen = png(eight.astype(np.uint16) * 257)
    assert Image.open(io.BytesIO(sixteen)).mode.startswith("I;16")
    r = post_image(client, "classify", sixteen)
    assert r.status_code == 200 and r.json() == recogen.load(runs["clf"]).predict(decoded(digit_pngs()[2]))


def _corrupt_pngs() -> dict[str, bytes]:
    good = png(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8))
    i = good.index(b"IDAT")
    n = struct.unpack(">I", good[i - 4 : i])[0]
    crc = i + 4 + n
    idat = bytearray(good[i + 4 : crc])
    idat[n // 2] ^= 0xFF
    return {
        "bad IDAT checksum": good[:crc] + bytes([good[crc] ^ 1]) + good[crc + 1 :],
        "corrupt zlib stream (checksum fixed)": good[: i - 4] + _chunk(b"IDAT", bytes(idat)) + good[crc + 4 :],
        "no IEND": good[: good.index(b"IEND") - 4],
    }


def test_a_corrupt_png_is_refused_with_400(client):
    from PIL import ImageFile

    for name, data in _corrupt_pngs().items():
        r = post_image(client, "classify", data)
        assert r.status_code == 400 and "corrupt" in r.json()["error"], (name, r.status_code, r.text)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nothing in recogen relaxes Pillow


def test_a_relaxed_pillow_is_logged_at_start(app, monkeypatch, caplog):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some other library might
    create_app(models=app.state.models)
    assert "LOAD_TRUNCATED_IMAGES" in caplog.text
