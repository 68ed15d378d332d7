"""Load benchmark of the REST service: requests/s and p50/p95 latency of POST /v1/classify with concurrent
clients, alone and under a flood of hostile connections, and the latency of /healthz meanwhile.

A real `recogen serve RUN` process (uvicorn, one worker) per backend. For each backend, two phases of
``--seconds`` each:

* **clean**: ``--clients`` threads (8), each with its own keep-alive connection, post the same 32x32 digit
  PNG (multipart) back to back;
* **flood**: the same clients while a separate process attacks the server with
  - ``--slowloris`` connections that send their request headers one byte at a time, ``--drip-s`` apart
    (uvicorn has no header timeout, so they are held open),
  - as many connections that send complete headers announcing a body just under ``--max-upload-mb`` and
    then drip its bytes (the server's ``--body-timeout`` answers them 408),
  - ``--uploads`` threads posting, back to back, a PNG of noise just under the upload limit (a real image:
    read, parsed, decoded, resized, classified).

Throughout both phases a third process gets ``/healthz`` on a fresh connection every ``--probe-ms`` and
records its latency (issue 12's target: it answers within 100 ms during the flood). The clients' numbers
count only 200 answers; any other status is reported as a failure.

    python benchmarks/serve_load.py                                     # trains the default digits classifier first
    python benchmarks/serve_load.py --run runs/classify/digits --seconds 30 --json benchmarks/results/serve_load.json
    python benchmarks/serve_load.py --run RUN --backends torch,onnx --clients 1,8 --no-flood   # the old table
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common  # noqa: E402

HEALTHZ_TARGET_MS = 100.0


# ------------------------------------------------------------------------------------------ inputs
def digit_png() -> bytes:
    """One real digit (sklearn's first 8x8 image scaled to 32x32), as a user would upload it."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    img = np.kron(load_digits().images[0] * 255 / 16, np.ones((4, 4))).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def noise_png(max_bytes: int) -> bytes:
    """An RGB PNG of random noise (incompressible) whose multipart upload stays just under ``max_bytes``."""
    import numpy as np
    from PIL import Image

    side = int(((max_bytes - 4096) / 3) ** 0.5)
    while side > 8:
        rng = np.random.default_rng(0)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
        if buf.tell() <= max_bytes - 4096:
            return buf.getvalue()
        side = int(side * 0.98)
    raise SystemExit(f"cannot make a PNG under {max_bytes} bytes")


# ------------------------------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, backend: str, threads: int | None, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """`recogen serve RUN --backend B` on a free port; returns once /healthz answers."""
    import httpx

    port = free_port()
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen([sys.executable, "-m", "recogen", "serve", str(run), "--backend", backend,
                             "--port", str(port), "--log-level", "warning", *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"recogen serve exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("recogen serve did not answer /healthz within 180 s")


def _percentiles(values_s: list[float]) -> dict[str, float | None]:
    if not values_s:
        return {"p50_ms": None, "p95_ms": None, "max_ms": None}
    if len(values_s) == 1:
        v = values_s[0] * 1000
        return {"p50_ms": v, "p95_ms": v, "max_ms": v}
    q = statistics.quantiles(values_s, n=100, method="inclusive")
    return {"p50_ms": q[49] * 1000, "p95_ms": q[94] * 1000, "max_ms": max(values_s) * 1000}


# ------------------------------------------------------------------------------------------ clients
def load(url: str, data: bytes, clients: int, seconds: float) -> dict:
    """``clients`` threads posting ``data`` back to back for ``seconds``: 200s per second, latency of the
    200s, and the failures (other statuses, transport errors)."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client() -> None:
        mine, bad = [], []
        with httpx.Client(base_url=url, timeout=120) as h:
            start.wait()
            while time.perf_counter() < stop_at[0]:
                t0 = time.perf_counter()
                try:
                    r = h.post("/v1/classify", files={"file": ("digit.png", data, "image/png")})
                    ok = r.status_code == 200
                    why = f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as e:
                    ok, why = False, f"{type(e).__name__}: {e}"
                if ok:
                    mine.append(time.perf_counter() - t0)
                else:
                    bad.append(why)
        with lock:
            latencies.extend(mine)
            failures.extend(bad)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": len(latencies), "rps": len(latencies) / wall, **_percentiles(latencies),
            "failures": len(failures), "failure_examples": sorted(set(failures))[:3]}


def probe_healthz(url: str, period_s: float, stop, out) -> None:
    """(Own process.) GET /healthz every ``period_s`` until ``stop`` is set, each on a fresh connection made
    with a plain socket (an HTTP client's own set-up would be measured too); the latency is from connect to
    the whole answer. Sends ``[(t, seconds or None, status or error)]`` on ``out``."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    rows = []
    while not stop.is_set():
        t = time.time()
        t0 = time.perf_counter()
        try:
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(request)
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            status = int(answer.split(b" ", 2)[1])
            rows.append((t, time.perf_counter() - t0, status))
        except (OSError, ValueError, IndexError) as e:
            rows.append((t, None, type(e).__name__))
        time.sleep(max(0.0, period_s - (time.perf_counter() - t0)))
    out.send(rows)


# ------------------------------------------------------------------------------------------ the flood
def flood(host: str, port: int, slowloris: int, uploads: int, upload_limit: int, drip_s: float, ready, stop, out) -> None:
    """(Own process.) Slow-loris header and body connections plus near-limit uploads until ``stop``."""
    import httpx

    stats = {"slowloris_opened": 0, "slowloris_closed_by_server": 0, "slow_body_opened": 0,
             "slow_body_answers": {}, "slow_body_closed_by_server": 0, "uploads": 0, "upload_statuses": {},
             "upload_latencies": [], "upload_errors": 0, "upload_bytes": 0}
    lock = threading.Lock()
    big = noise_png(upload_limit)
    stats["upload_bytes"] = len(big)
    headers = (f"POST /v1/classify HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: slowloris\r\n"
               "Content-Type: application/octet-stream\r\nX-Padding: " + "a" * 4000 + "\r\n").encode()
    body_head = (f"POST /v1/classify HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n"
                 f"Content-Length: {upload_limit - 1024}\r\n\r\n").encode()

    def connect():
        s = socket.create_connection((host, port), timeout=10)
        s.setblocking(False)
        return s

    def dripper() -> None:
        """One thread drips a byte into every slow connection each ``drip_s``; reopens what the server closed."""
        heads = []  # [socket, bytes sent] sending headers byte by byte (never finished)
        bodies = []  # [socket, bytes sent] sending a body byte by byte after complete headers
        for _ in range(slowloris):
            heads.append([connect(), 0])
            bodies.append([connect(), 0])
        with lock:
            stats["slowloris_opened"] += slowloris
            stats["slow_body_opened"] += slowloris
        for b in bodies:
            b[0].sendall(body_head)
        ready.set()
        while not stop.is_set():
            for kind, conns in (("head", heads), ("body", bodies)):
                for c in conns:
                    try:
                        if kind == "head":
                            c[0].send(headers[c[1] % len(headers):][:1])
                        else:
                            c[0].send(b"\0")
                            try:
                                answer = c[0].recv(200)
                                if answer:
                                    status = answer.split(b" ", 2)[1].decode(errors="replace")
                                    with lock:
                                        stats["slow_body_answers"][status] = stats["slow_body_answers"].get(status, 0) + 1
                            except BlockingIOError:
                                pass
                        c[1] += 1
                    except OSError:  # closed by the server: count it and open another
                        with lock:
                            stats[f"{'slowloris' if kind == 'head' else 'slow_body'}_closed_by_server"] += 1
                        try:
                            c[0].close()
                            c[0], c[1] = connect(), 0
                            if kind == "body":
                                c[0].sendall(body_head)
                        except OSError:
                            pass
            stop.wait(drip_s)
        for c in heads + bodies:
            c[0].close()

    def uploader() -> None:
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=120) as h:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = h.post("/v1/classify", files={"file": ("noise.png", big, "image/png")})
                    with lock:
                        stats["uploads"] += 1
                        stats["upload_statuses"][str(r.status_code)] = stats["upload_statuses"].get(str(r.status_code), 0) + 1
                        stats["upload_latencies"].append(time.perf_counter() - t0)
                except httpx.HTTPError:
                    with lock:
                        stats["upload_errors"] += 1

    threads = [threading.Thread(target=dripper, daemon=True)] + \
              [threading.Thread(target=uploader, daemon=True) for _ in range(uploads)]
    for t in threads:
        t.start()
    if slowloris == 0:
        ready.set()
    stop.wait()
    for t in threads:
        t.join(30)
    lat = stats.pop("upload_latencies")
    stats["upload_latency"] = _percentiles(lat)
    out.send(stats)


# ------------------------------------------------------------------------------------------ phases
def phase(url: str, data: bytes, clients: int, args, flood_on: bool, upload_limit: int) -> dict:
    """One timed phase: the clients, the /healthz probe and (``flood_on``) the flood, all at once."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    probe_recv, probe_send = ctx.Pipe(duplex=False)
    prober = ctx.Process(target=probe_healthz, args=(url, args.probe_ms / 1000, stop, probe_send), daemon=True)
    attacker = None
    if flood_on:
        ready = ctx.Event()
        flood_recv, flood_send = ctx.Pipe(duplex=False)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        attacker = ctx.Process(target=flood, args=(host, int(port), args.slowloris, args.uploads, upload_limit,
                                                   args.drip_s, ready, stop, flood_send), daemon=True)
        attacker.start()
        if not ready.wait(120):
            raise SystemExit("the flood did not start within 120 s")
        time.sleep(min(2.0, args.seconds / 3))  # let the uploads get going
    prober.start()
    result = load(url, data, clients, args.seconds)
    stop.set()
    rows = probe_recv.recv()
    prober.join(30)
    lat = [s for _, s, _ in rows if s is not None]
    bad = [st for _, s, st in rows if s is None or st != 200]
    result["healthz"] = {"probes": len(rows), **_percentiles(lat), "failures": len(bad),
                         "over_target": sum(s * 1000 > HEALTHZ_TARGET_MS for s in lat)}
    if attacker is not None:
        result["flood"] = flood_recv.recv()
        attacker.join(60)
    return result


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="classify run folder (default: train the default recipe on digits)")
    ap.add_argument("--seconds", type=float, default=30, help="length of each timed phase (default 30)")
    ap.add_argument("--warmup", type=int, default=30, help="untimed requests before the phases")
    ap.add_argument("--clients", default="8", help="comma-separated concurrent clients (default 8)")
    ap.add_argument("--backends", default="torch", help="comma-separated backends, torch and/or onnx (default torch)")
    ap.add_argument("--server-threads", type=int, help="OMP_NUM_THREADS of the server process (default: inherit)")
    ap.add_argument("--no-flood", action="store_true", help="only the clean phase")
    ap.add_argument("--slowloris", type=int, default=64,
                    help="slow header connections, and as many slow body connections (default 64 + 64)")
    ap.add_argument("--uploads", type=int, default=2, help="threads posting near-limit uploads back to back (default 2)")
    ap.add_argument("--drip-s", type=float, default=1.0, help="seconds between two bytes of a slow connection (default 1)")
    ap.add_argument("--max-upload-mb", type=float, default=10, help="the server's --max-upload-mb (default 10)")
    ap.add_argument("--body-timeout", type=float, help="the server's --body-timeout (default: its own, 60 s)")
    ap.add_argument("--probe-ms", type=float, default=50, help="period of the /healthz probe (default 50 ms)")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write every number to this JSON file")
    args = ap.parse_args()

    run = args.run
    if run is None:
        import recogen

        run = recogen.train("classify", data="digits", out=str(Path(tempfile.mkdtemp()) / "digits"), progress=False)
    run = Path(run)
    if "onnx" in args.backends and not (run / "model.onnx").is_file():
        from recogen.export import export_model

        print(f"exporting {run} to ONNX: {export_model(run, 'onnx')['path']}", file=sys.stderr)
    data = digit_png()
    upload_limit = int(args.max_upload_mb * 2**20)
    extra = ["--max-upload-mb", f"{args.max_upload_mb:g}"]
    if args.body_timeout is not None:
        extra += ["--body-timeout", f"{args.body_timeout:g}"]
    rows = []
    for backend in args.backends.split(","):
        proc, url = start_server(run, backend, args.server_threads, extra)
        try:
            import httpx

            with httpx.Client(base_url=url, timeout=60) as h:
                for _ in range(args.warmup):
                    h.post("/v1/classify", files={"file": ("digit.png", data, "image/png")}).raise_for_status()
            for c in map(int, args.clients.split(",")):
                for flood_on in ([False] if args.no_flood else [False, True]):
                    r = phase(url, data, c, args, flood_on, upload_limit)
                    r.update(backend=backend, flood=r.get("flood") if flood_on else None)
                    rows.append(r)
                    hz = r["healthz"]
                    print(f"{backend} x{c} {'flood' if flood_on else 'clean'}: {r['rps']:.1f} req/s, p50 {fmt(r['p50_ms'])} ms, "
                          f"p95 {fmt(r['p95_ms'])} ms, {r['failures']} failed; /healthz p50 {fmt(hz['p50_ms'])} ms, "
                          f"p95 {fmt(hz['p95_ms'])} ms, max {fmt(hz['max_ms'])} ms ({hz['failures']} failed)", file=sys.stderr)
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    card = json.loads((run / "model.json").read_text())
    machine = f"{bench_common.cpu_name()}, {os.cpu_count()} CPUs"
    print(f"\nPOST /v1/classify, {card['model']} at {card['image_size']} px ({run}); one 32x32 PNG digit per request "
          f"(multipart); `recogen serve` with 1 uvicorn worker; {args.seconds:g} s per row; {machine}; server "
          f"OMP_NUM_THREADS={args.server_threads or os.environ.get('OMP_NUM_THREADS', 'unset')}. Flood: "
          f"{args.slowloris} slow-header + {args.slowloris} slow-body connections (a byte every {args.drip_s:g} s), "
          f"{args.uploads} clients posting {args.max_upload_mb:g} MiB-limit noise PNGs back to back.\n")
    print("| backend | clients | flood | requests/s | p50 (ms) | p95 (ms) | failed | /healthz p50 (ms) | /healthz p95 (ms) | /healthz max (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = "eager PyTorch" if r["backend"] == "torch" else "ONNX Runtime"
        hz = r["healthz"]
        print(f"| {name} | {r['clients']} | {'yes' if r['flood'] else 'no'} | {r['rps']:.0f} | {fmt(r['p50_ms'])} | "
              f"{fmt(r['p95_ms'])} | {r['failures']} | {fmt(hz['p50_ms'])} | {fmt(hz['p95_ms'])} | {fmt(hz['max_ms'])} |")
    flooded = [r for r in rows if r["flood"]]
    verdict = None
    if flooded:
        worst = max((r["healthz"]["max_ms"] or float("inf")) for r in flooded)
        p95 = max((r["healthz"]["p95_ms"] or float("inf")) for r in flooded)
        verdict = {"target_ms": HEALTHZ_TARGET_MS, "worst_p95_ms": p95, "worst_max_ms": worst,
                   "met_p95": p95 <= HEALTHZ_TARGET_MS, "met_max": worst <= HEALTHZ_TARGET_MS}
        for r in flooded:
            f = r["flood"]
            print(f"\nflood ({r['backend']} x{r['clients']}): {f['uploads']} uploads of {f['upload_bytes']} bytes "
                  f"(statuses {f['upload_statuses']}, {f['upload_errors']} transport errors, p50 "
                  f"{fmt(f['upload_latency']['p50_ms'])} ms); slow headers: {f['slowloris_opened']} held, "
                  f"{f['slowloris_closed_by_server']} closed by the server; slow bodies: answers {f['slow_body_answers']}, "
                  f"{f['slow_body_closed_by_server']} closed by the server")
        print(f"\n/healthz during the flood: p95 {p95:.1f} ms, max {worst:.1f} ms; target {HEALTHZ_TARGET_MS:g} ms: "
              f"{'met' if verdict['met_max'] else 'met at p95, not at max' if verdict['met_p95'] else 'missed'}")
    if args.json:
        bench_common.write_result(args.json, "serve_load", run=str(run), model=card["model"], image_size=card["image_size"],
                                  seconds=args.seconds, slowloris=args.slowloris, uploads=args.uploads,
                                  drip_s=args.drip_s, max_upload_mb=args.max_upload_mb, body_timeout=args.body_timeout,
                                  server_threads=args.server_threads, rows=rows, healthz_target=verdict)


if __name__ == "__main__":
    main()
