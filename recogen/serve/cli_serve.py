"""``recogen serve RUN [RUN...]``: the REST service and web page (argparse only at import time)."""
from __future__ import annotations

import argparse
import os
from typing import Any

ENV_KEY = "RECOGEN_API_KEY"
ENV_CONFIG = "RECOGEN_SERVE_CONFIG"  # the options, as JSON, for each worker process (--workers > 1)


def add_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` command to the CLI's subparsers."""
    p = sub.add_parser("serve", help="serve runs over HTTP: REST API, web page at /, docs at /docs, /metrics")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or model.json) to serve; several are fine")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="torch (default) or onnx (needs `recogen export RUN`); generators always use torch")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest image file accepted, in MiB (default 10)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="largest image accepted, width x height, checked before decoding (default 16000000)")
    p.add_argument("--max-generate", type=int, default=64, help="most images per /v1/generate request (default 64)")
    p.add_argument("--api-key", default=None,
                   help=f"require this key (X-API-Key or Authorization: Bearer) on all but /healthz; default ${ENV_KEY}")
    p.add_argument("--workers", type=int, default=1, help="worker processes, each with its own copy of the models (default 1)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level (default info)")
    p.set_defaults(func=cmd_serve)


def _options(ns: argparse.Namespace) -> dict[str, Any]:
    from .images import DEFAULT_MAX_PIXELS

    return {"runs": [str(r) for r in ns.runs], "backend": ns.backend, "device": ns.device,
            "max_upload_mb": ns.max_upload_mb, "max_pixels": ns.max_pixels or DEFAULT_MAX_PIXELS,
            "max_generate": ns.max_generate, "api_key": ns.api_key or os.environ.get(ENV_KEY) or None}


def app_from_env():
    """App factory for each uvicorn worker process (``--workers N``): options come from $RECOGEN_SERVE_CONFIG."""
    import json

    from .app import create_app

    opts = json.loads(os.environ[ENV_CONFIG])
    return create_app(opts.pop("runs"), **opts)


def cmd_serve(ns: argparse.Namespace) -> int:
    """Check the runs, load them, and run uvicorn until interrupted."""
    import json

    from ..errors import ConfigError
    from ..export.portable import read_card

    if not 0 <= ns.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {ns.port}")
    if ns.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {ns.workers}")
    opts = _options(ns)
    for run in opts["runs"]:
        read_card(run)  # a wrong path fails here, in one line, before anything heavy is imported
    import uvicorn

    where = f"http://{ns.host}:{ns.port}"
    auth = "API key required" if opts["api_key"] else "no API key"
    if ns.workers == 1:
        from .app import create_app

        app = create_app(opts.pop("runs"), **opts)  # loads every model now: errors before listening
        print(f"serving {', '.join(f'{m.name} ({m.task})' for m in app.state.models.values())} at {where} "
              f"(page /, docs /docs, {auth})", flush=True)
        uvicorn.run(app, host=ns.host, port=ns.port, log_level=ns.log_level)
    else:
        os.environ[ENV_CONFIG] = json.dumps(opts)
        print(f"serving {len(opts['runs'])} run(s) at {where} with {ns.workers} workers ({auth})", flush=True)
        uvicorn.run("recogen.serve.cli_serve:app_from_env", factory=True, host=ns.host, port=ns.port,
                    workers=ns.workers, log_level=ns.log_level)
    return 0
