"""Issue 12 for the service: every bad input a clear 4xx, nothing lost, nothing executed.

Long thin images (side limit, decoding and resizing outside the model's lock), an empty API key, deeply
nested JSON and huge integers, offline /docs, HEAD, a port in use, stalled uploads, 16-bit and corrupt PNGs,
slow or silent request heads (--header-timeout), damaged files that Pillow only warns about.
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


# ------------------------------------------------------------------------------- request-head timeout
class _ServerWith(ServerThread):
    """:class:`ServerThread` with uvicorn options (``http=``, ``timeout_keep_alive``)."""

    def __init__(self, app, **options):
        import threading

        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", **options))
        self.thread = threading.Thread(target=self.server.run, daemon=True)


def _until_closed(port: int, head: bytes = b"", trickle: bytes = b"", every: float = 0.2,
                  limit: float = 15) -> tuple[bytes, float]:
    """Connect, send ``head``, then ``trickle`` every ``every`` s; ``(what the server sent, seconds from
    connecting until it closed the connection)``. Fails if it is still open after ``limit`` s."""
    t0, got = time.monotonic(), b""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as s:
        s.sendall(head)
        s.settimeout(every)
        while time.monotonic() - t0 < limit:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                if trickle:
                    try:
                        s.sendall(trickle)
                    except OSError:  # closed by the server meanwhile
                        break
                continue
            except ConnectionResetError:  # a byte sent after the server closed: it answers with a reset
                break
            if not chunk:
                break
            got += chunk
        else:
            pytest.fail(f"the server kept the connection open for {limit} s (head {head!r})")
    return got, time.monotonic() - t0


def _response(sock: socket.socket, method: str):
    """The next HTTP response on ``sock`` (the connection stays usable for the next request)."""
    import http.client

    r = http.client.HTTPResponse(sock, method=method)
    r.begin()
    return r.status, r.getheader("connection"), r.read()


def test_header_timeout_reaches_uvicorn_with_one_and_several_workers_and_is_validated(runs, monkeypatch, capsys):
    import pickle

    import uvicorn

    from conftest import assert_one_line, main_in_process
    from recogen.cli import main
    from recogen.serve.cli_serve import ENV_CONFIG
    from recogen.serve.protocol import HeaderTimeoutHTTP

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setenv(ENV_CONFIG, "")  # --workers 2 sets it: monkeypatch puts it back
    clf = str(runs["clf"])
    assert main(["serve", clf, "--port", str(_free_port())]) == 0
    assert main(["serve", clf, "--port", str(_free_port()), "--header-timeout", "2.5"]) == 0
    assert main(["serve", clf, "--port", str(_free_port()), "--header-timeout", "3", "--workers", "2"]) == 0
    assert [kw["http"] for _, kw in calls] == [HeaderTimeoutHTTP(10.0), HeaderTimeoutHTTP(2.5), HeaderTimeoutHTTP(3.0)]
    assert calls[2][0] == "recogen.serve.cli_serve:app_from_env" and calls[2][1]["workers"] == 2
    # uvicorn pickles its Config (http= included) into each worker process
    config = uvicorn.Config(calls[2][0], factory=True, workers=2, http=calls[2][1]["http"])
    assert pickle.loads(pickle.dumps(config)).http == HeaderTimeoutHTTP(3.0)
    for bad in ("0", "-1", "nan", "inf"):
        rc, _, err = main_in_process(capsys, "serve", clf, "--port", _free_port(), "--header-timeout", bad)
        assert_one_line(rc, err, f"--header-timeout must be a positive number of seconds, got {float(bad):g}")
    assert len(calls) == 3  # none of them started a server


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_a_slow_or_silent_request_head_is_cut_off_by_the_header_timeout(app, monkeypatch, parser):
    """Slow loris: a head sent a byte at a time, or nothing at all, no longer holds a connection; a
    normal client (a body sent after a pause, a keep-alive connection idle between requests) is unaffected."""
    import json

    from recogen.serve import protocol

    cls = {"h11": protocol.H11HeaderTimeoutProtocol, "httptools": protocol.HttpToolsHeaderTimeoutProtocol}[parser]
    if cls is None:
        pytest.skip("httptools is not installed (it comes with uvicorn[standard])")
    monkeypatch.setattr(protocol, "protocol_class", lambda: cls)
    timeout, margin = 1.0, 4.0
    with _ServerWith(app, http=protocol.HeaderTimeoutHTTP(timeout), timeout_keep_alive=5) as url:
        port = int(url.rsplit(":", 1)[1])
        head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"  # ... the blank line that ends it never comes
        got, seconds = _until_closed(port)  # connects and says nothing
        assert got == b"" and timeout * 0.9 <= seconds < timeout + margin, (got, seconds)
        got, seconds = _until_closed(port, head, trickle=b"X")  # a byte every 0.2 s does not extend the deadline
        assert timeout * 0.9 <= seconds < timeout + margin, seconds
        assert got == b"" or got.startswith(b"HTTP/1.1 408 "), got[:300]  # (a reset can overtake the answer)
        got, seconds = _until_closed(port, head)  # part of a head, then silence: answered 408
        assert timeout * 0.9 <= seconds < timeout + margin, seconds
        head_408, _, body = got.partition(b"\r\n\r\n")
        assert head_408.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"connection: close" in head_408, got[:300]
        assert "1 s (the server's --header-timeout)" in json.loads(body)["error"]

        # a normal client: the body after a pause longer than the header timeout (the body has its own),
        # then an idle keep-alive connection longer than it, then a head sent in two parts
        digit = digit_pngs()[3]
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(digit))
            time.sleep(timeout * 1.5)
            s.sendall(digit)
            status, connection, body = _response(s, "POST")
            assert status == 200 and connection != "close", (status, body)
            assert json.loads(body)["label"] == recogen.load(served_runs()["clf"]).predict(decoded(digit))["label"]
            time.sleep(timeout * 1.5)  # idle: the keep-alive timeout's (5 s), not the header timeout's
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            time.sleep(timeout * 0.3)
            s.sendall(b"Host: localhost\r\n\r\n")
            status, _, body = _response(s, "GET")
            assert status == 200 and json.loads(body)["status"] == "ok", (status, body)


# -------------------------------------------------------------- damaged files that Pillow only warns about
def _tiff_with_tag_past_the_end() -> bytes:
    """An 8x8 grey TIFF whose directory gains an ImageDescription of 1,000,000 bytes (the file has ~100)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(buf, "TIFF")
    t = buf.getvalue()
    ifd = struct.unpack("<I", t[4:8])[0]
    n = struct.unpack("<H", t[ifd : ifd + 2])[0]
    entries = [t[ifd + 2 + 12 * k : ifd + 14 + 12 * k] for k in range(n)]
    entries.append(struct.pack("<HHII", 270, 2, 1_000_000, 8))  # tag 270, ASCII, count, offset
    entries.sort(key=lambda e: struct.unpack("<H", e[:2])[0])
    end = len(t) + len(t) % 2  # the new directory goes at the end, on a word boundary
    out = t + b"\0" * (end - len(t)) + struct.pack("<H", n + 1) + b"".join(entries) + b"\0\0\0\0"
    return out[:4] + struct.pack("<I", end) + out[8:]


def _jpeg(**save) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG", **save)
    return buf.getvalue()


def _damaged_images() -> dict[str, bytes]:
    """Files that Pillow decodes with only a warning (checked in the test)."""
    jpeg = _jpeg()
    mpf = b"MPF\0" + b"II*\0" + struct.pack("<IH", 8, 5)  # an MPO index promising 5 entries and holding none
    app2 = b"\xff\xe2" + struct.pack(">H", len(mpf) + 2) + mpf
    # EXIF whose XResolution points 4000 bytes into a 26-byte block (read at open: JPEG's dpi)
    exif = b"Exif\0\0II*\0" + struct.pack("<IHHHII", 8, 1, 0x011A, 5, 1, 4000) + b"\0" * 4
    grey = png(np.zeros((8, 8), np.uint8))
    i = grey.index(b"IDAT") - 4
    return {"malformed MPO index.jpg": jpeg[:2] + app2 + jpeg[2:],
            "corrupt EXIF.jpg": _jpeg(exif=exif),
            "invalid APNG control chunk.png": grey[:i] + _chunk(b"acTL", struct.pack(">II", 0, 0)) + grey[i:],
            "TIFF tag past the end.tif": _tiff_with_tag_past_the_end()}


def _palette_png_with_transparency_bytes() -> bytes:
    """A valid palette PNG with a tRNS chunk: converting it to RGB makes Pillow warn, harmlessly."""
    from PIL import Image

    img = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) % 4, "P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=b"\x00\x80\xff\xff")  # (one 0 and the rest 255 would read back as one index)
    return buf.getvalue()


def _pillow_warnings(data: bytes, convert: bool = False) -> list[str]:
    """What plain Pillow warns while decoding ``data`` (every warning shown, our filter bypassed)."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings(record=True) as caught:  # this test's own thread: fine here
        warnings.simplefilter("always")
        img = Image.open(io.BytesIO(data))
        img.load()
        if convert:
            img.convert("RGB")
    return [str(w.message) for w in caught]


def test_damaged_images_that_pillow_only_warns_about_are_refused(client, runs, tmp_path, capsys):
    from conftest import assert_one_line, main_in_process

    from recogen.data.images import open_image
    from recogen.errors import DataError

    for name, data in _damaged_images().items():
        assert _pillow_warnings(data), f"{name}: Pillow decodes it without a warning (test broken?)"
        with pytest.raises(DataError, match=r"cannot read image <bytes>: the file is damaged \(Pillow: "):
            open_image(data)
        r = post_image(client, "classify", data)
        assert r.status_code == 400 and "the file is damaged" in r.json()["error"], (name, r.status_code, r.text)
        path = tmp_path / name
        path.write_bytes(data)
        assert_one_line(*main_in_process(capsys, "classify", "predict", runs["clf"], path)[::2],
                        f"cannot read image {path}: the file is damaged")


def test_a_damaged_image_in_a_training_folder_is_a_bad_image_too(tmp_path):
    """The folder loader decodes under the same rule: one line naming the file, or skipped on request."""
    from test_data_shapes_folder import _tree

    from recogen.data import DataOptions, create_dataset
    from recogen.errors import DataError

    root = _tree(tmp_path)
    (root / "bee" / "scan.tif").write_bytes(_damaged_images()["TIFF tag past the end.tif"])
    with pytest.raises(DataError, match=r"cannot read image .*scan\.tif: the file is damaged .*--skip-bad-images"):
        create_dataset(f"folder:{root}", DataOptions())
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        s = create_dataset(f"folder:{root}", DataOptions(skip_bad_images=True))
    assert len(s.train) + len(s.val) + len(s.test) == 18


def test_a_harmless_pillow_warning_does_not_refuse_the_image(client, runs):
    from recogen.data.images import open_image

    data = _palette_png_with_transparency_bytes()
    assert any("Transparency expressed in bytes" in w for w in _pillow_warnings(data, convert=True))
    assert open_image(data).mode == "P"
    r = post_image(client, "classify", data)
    assert r.status_code == 200 and r.json()["label"] == recogen.load(runs["clf"]).predict(decoded(data))["label"]


def test_damaged_images_are_refused_in_every_thread_at_once():
    """The service decodes in a thread pool: each of many threads decoding at the same time refuses
    each damaged file (and still reads a good one)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from recogen.data.images import open_image
    from recogen.errors import DataError
    from recogen.serve.errors import ApiError
    from recogen.serve.images import decode_image

    damaged, good = list(_damaged_images().values()), digit_pngs()[0]
    n = 8
    start = threading.Barrier(n)

    def work(i: int) -> list[str]:
        start.wait()
        wrong = []
        for _ in range(5):
            for data in damaged:
                for decode, error in ((open_image, DataError), (decode_image, ApiError)):
                    try:
                        decode(data)
                        wrong.append(f"thread {i}: {decode.__name__} accepted a damaged file")
                    except error as e:
                        if "the file is damaged" not in str(e):
                            wrong.append(f"thread {i}: {e}")
            if open_image(good).size != (32, 32) or decode_image(good).size != (32, 32):
                wrong.append(f"thread {i}: a good image")
        return wrong

    with ThreadPoolExecutor(n) as pool:
        assert [w for ws in pool.map(work, range(n)) for w in ws] == []


def test_damaged_images_are_refused_after_other_code_reset_the_warning_filters():
    """pytest (around every test) and host applications wrap code in catch_warnings, or reset the
    filters: the damage filter is put back before each decode."""
    import warnings

    from recogen.data.images import open_image
    from recogen.errors import DataError

    data = _damaged_images()["TIFF tag past the end.tif"]
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("ignore")  # in front of everything: must not hide the damage
        with pytest.raises(DataError, match="the file is damaged"):
            open_image(data)


def test_the_damage_warnings_are_still_pillows_words():
    """The filter matches Pillow's messages: a rewording in a new Pillow must fail here, not silently."""
    import importlib
    import inspect

    from recogen.data.pil_damage import DAMAGE_WARNINGS

    for module, message, _ in DAMAGE_WARNINGS:
        source = inspect.getsource(importlib.import_module(module))
        assert "warnings.warn(" in source, module
        if message:
            assert f'"{message}' in source, (module, message)
