"""Load benchmark of the REST service: requests/s and p50/p95 latency of POST /v1/classify on CPU, for the
eager PyTorch backend and the ONNX backend, with 1 and 8 concurrent clients.

Each backend runs as a real `recogen serve` process (uvicorn, one worker); the clients are threads in this
process, each with its own HTTP keep-alive connection, posting the same 32x32 digit PNG (multipart).
Prints a markdown table for BENCHMARKS.md and writes nothing.

    python benchmarks/serve_load.py                       # trains the default digits classifier first
    python benchmarks/serve_load.py --run runs/classify/digits --requests 500
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def digit_png() -> bytes:
    """One real digit (sklearn's first 8x8 image scaled to 32x32), as a user would upload it."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    img = np.kron(load_digits().images[0] * 255 / 16, np.ones((4, 4))).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, backend: str, threads: int | None) -> tuple[subprocess.Popen, str]:
    """`recogen serve RUN --backend B` on a free port; returns once /healthz answers."""
    import httpx

    port = free_port()
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen([sys.executable, "-m", "recogen", "serve", str(run), "--backend", backend,
                             "--port", str(port), "--log-level", "warning"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"recogen serve exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("recogen serve did not answer /healthz within 120 s")


def load(url: str, data: bytes, clients: int, requests: int) -> dict[str, float]:
    """``requests`` POSTs split over ``clients`` threads; req/s over the whole wall time, latency percentiles."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    per = [requests // clients + (i < requests % clients) for i in range(clients)]
    start = threading.Barrier(clients + 1)

    def client(n: int) -> None:
        mine = []
        with httpx.Client(base_url=url, timeout=120) as h:
            start.wait()
            for _ in range(n):
                t0 = time.perf_counter()
                r = h.post("/v1/classify", files={"file": ("digit.png", data, "image/png")})
                mine.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(n,)) for n in per]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if failures:
        raise SystemExit(f"{len(failures)} request(s) failed, e.g. {failures[0]}")
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"rps": requests / wall, "p50": q[49] * 1000, "p95": q[94] * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="classify run folder (default: train the default recipe on digits)")
    ap.add_argument("--requests", type=int, default=400, help="timed requests per (backend, clients) cell")
    ap.add_argument("--warmup", type=int, default=30, help="untimed requests before each backend's cells")
    ap.add_argument("--clients", default="1,8", help="comma-separated concurrent clients (default 1,8)")
    ap.add_argument("--backends", default="torch,onnx", help="comma-separated backends (default torch,onnx)")
    ap.add_argument("--server-threads", type=int, help="OMP_NUM_THREADS of the server process (default: inherit)")
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
    rows = []
    for backend in args.backends.split(","):
        proc, url = start_server(run, backend, args.server_threads)
        try:
            load(url, data, 1, args.warmup)
            for c in map(int, args.clients.split(",")):
                r = load(url, data, c, args.requests)
                rows.append((backend, c, r))
                print(f"{backend} x{c}: {r['rps']:.1f} req/s, p50 {r['p50']:.1f} ms, p95 {r['p95']:.1f} ms", file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait(20)

    import json

    card = json.loads((run / "model.json").read_text())
    print(f"\nPOST /v1/classify, {card['model']} at {card['image_size']} px ({run}); one 32x32 PNG digit per request "
          f"(multipart); `recogen serve` with 1 uvicorn worker; {args.requests} timed requests per row; "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), server OMP_NUM_THREADS="
          f"{args.server_threads or os.environ.get('OMP_NUM_THREADS', 'unset')}.\n")
    print("| backend | clients | requests/s | p50 latency (ms) | p95 latency (ms) |")
    print("|---|---|---|---|---|")
    for backend, c, r in rows:
        name = "eager PyTorch" if backend == "torch" else "ONNX Runtime"
        print(f"| {name} | {c} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} |")


if __name__ == "__main__":
    main()
