"""``recogen serve [RUN...] [--pipeline NAME=ID_OR_DIR...] [--zero-shot NAME=PREFIX:ID_OR_DIR...]``: the REST
service and web page (argparse only at import time)."""
from __future__ import annotations

import argparse
import errno
import os
import socket
from typing import Any

ENV_KEY = "RECOGEN_API_KEY"
ENV_CONFIG = "RECOGEN_SERVE_CONFIG"  # the options, as JSON, for each worker process (--workers > 1)
# uvicorn closes an idle keep-alive connection after this many seconds (its own default, set explicitly).
DEFAULT_KEEP_ALIVE = 5
# Seconds a connection may take to send a request's line and headers (protocol.py), like nginx's
# client_header_timeout (60 there; a request head is a few hundred bytes).
DEFAULT_HEADER_TIMEOUT = 10.0


def add_parser(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` command to the CLI's subparsers."""
    p = sub.add_parser("serve", help="serve runs over HTTP: REST API, web page at /, docs at /docs, /metrics")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run folders (or model.json) to serve; several are fine")
    p.add_argument("--pipeline", action="append", default=[], metavar="NAME=ID_OR_DIR",
                   help="also serve a diffusers pipeline (Hub id or folder) as NAME: POST /v1/pipelines/NAME/text2img, "
                        "img2img, inpaint; repeatable")
    p.add_argument("--zero-shot", action="append", default=[], metavar="NAME=PREFIX:ID_OR_DIR",
                   help="also serve a foundation model (clip:, owl: or sam: and a Hub id or folder) as NAME: "
                        "POST /v1/zero-shot/NAME/classify (clip), detect (owl) or segment (sam); repeatable")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="torch (default) or onnx (needs `recogen export RUN`); generators always use torch")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest image file accepted, in MiB (default 10)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="largest image accepted, width x height, checked before decoding (default 16000000)")
    p.add_argument("--max-side", type=int, default=None,
                   help="longest image side accepted, in pixels, checked before decoding (default 10000)")
    p.add_argument("--max-generate", type=int, default=64, help="most images per /v1/generate request (default 64)")
    p.add_argument("--max-pipeline-steps", type=int, default=50, help="most denoising steps per pipeline request "
                                                                       "(default 50)")
    p.add_argument("--max-pipeline-images", type=int, default=4, help="most images per pipeline request (default 4)")
    p.add_argument("--max-pipeline-size", type=int, default=1024,
                   help="longest side of a pipeline's image, in pixels (default 1024)")
    p.add_argument("--max-zero-shot-labels", type=int, default=64,
                   help="most labels per zero-shot request (default 64)")
    p.add_argument("--api-key", default=None,
                   help=f"require this key (X-API-Key or Authorization: Bearer) on all but /healthz; default ${ENV_KEY}. "
                        "An empty key is an error: leave the option out to serve without authentication")
    p.add_argument("--body-timeout", type=float, default=None,
                   help="seconds a client may take to send a request body, then 408 (default 60)")
    p.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT,
                   help="seconds a client may take to send a request's line and headers, then 408 and the connection "
                        "closed; also how long a new connection may stay silent "
                        f"(default {DEFAULT_HEADER_TIMEOUT:g})")
    p.add_argument("--keep-alive-timeout", type=int, default=DEFAULT_KEEP_ALIVE,
                   help=f"seconds an idle keep-alive connection stays open (default {DEFAULT_KEEP_ALIVE})")
    p.add_argument("--workers", type=int, default=1, help="worker processes, each with its own copy of the models (default 1)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level (default info)")
    p.set_defaults(func=cmd_serve)


def _options(ns: argparse.Namespace) -> dict[str, Any]:
    from .images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE

    opts = {"runs": [str(r) for r in ns.runs], "backend": ns.backend, "device": ns.device,
            "max_upload_mb": ns.max_upload_mb,
            "max_pixels": DEFAULT_MAX_PIXELS if ns.max_pixels is None else ns.max_pixels,
            "max_side": DEFAULT_MAX_SIDE if ns.max_side is None else ns.max_side,
            "max_generate": ns.max_generate, "api_key": _api_key(ns.api_key), "pipelines": list(ns.pipeline),
            "max_pipeline_steps": ns.max_pipeline_steps, "max_pipeline_images": ns.max_pipeline_images,
            "max_pipeline_size": ns.max_pipeline_size, "zero_shot": list(ns.zero_shot),
            "max_zero_shot_labels": ns.max_zero_shot_labels}
    if ns.body_timeout is not None:  # else create_app's default (bodies.DEFAULT_BODY_TIMEOUT)
        opts["body_timeout"] = ns.body_timeout
    return opts


def _api_key(option: str | None) -> str | None:
    """The key from --api-key, else $RECOGEN_API_KEY, else None (no authentication). An empty one is an
    error: ``--api-key "$KEY"`` with KEY unset must not silently turn authentication off."""
    from .errors import check_api_key

    if option is not None:
        return check_api_key(option, "--api-key", "set the variable you pass to it (e.g. KEY=$(openssl rand -hex 16)), "
                                                  "or leave out --api-key to serve without authentication")
    env = os.environ.get(ENV_KEY)
    if env is None:
        return None
    return check_api_key(env, f"${ENV_KEY}", f"set it to the key, or unset it (unset {ENV_KEY}) to serve "
                                             "without authentication")


def _check_port(host: str, port: int) -> None:
    """Fail in one line, before the models load, when ``host:port`` cannot be listened on. The socket is
    made as uvicorn makes its own (IPv6 for a host with ':', SO_REUSEADDR), so only a port that something
    really listens on counts as in use."""
    from ..errors import ConfigError

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except socket.gaierror as e:
            raise ConfigError(f"cannot listen on --host {host}: {e.strerror}; use an address of this machine "
                              "(127.0.0.1, or 0.0.0.0 for all)") from None
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} is in use on {host} (another server, or another recogen serve, is "
                                  "listening there); stop it or pick a free port with --port") from None
            fix = "use a port above 1023 or run with the rights to bind it" if e.errno == errno.EACCES else \
                "check --host and --port"
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}; {fix}") from None


def _check_pipelines(opts: dict[str, Any]) -> None:
    """Each --pipeline's name and model, and the pipeline limits, checked before anything loads: a
    mistyped folder, or a Hub id neither cached nor reachable, fails in one line within a second."""
    from ..pipelines.hub import resolve
    from .pipelines import Limits, parse_specs

    Limits(opts["max_pipeline_steps"], opts["max_pipeline_images"], opts["max_pipeline_size"]).check()
    for _, ref, _ in parse_specs(opts["pipelines"]):
        resolve(ref)


def _check_zero_shot(opts: dict[str, Any]) -> None:
    """Each --zero-shot's name, family and files, and the label limit, checked before anything loads."""
    from ..errors import ConfigError
    from .zero_shot import check_specs

    if opts["max_zero_shot_labels"] < 2:
        raise ConfigError(f"--max-zero-shot-labels must be at least 2, got {opts['max_zero_shot_labels']}")
    check_specs(opts["zero_shot"])


def app_from_env():
    """App factory for each uvicorn worker process (``--workers N``): options come from $RECOGEN_SERVE_CONFIG."""
    import json

    from .app import create_app

    opts = json.loads(os.environ[ENV_CONFIG])
    return create_app(opts.pop("runs"), **opts)


def cmd_serve(ns: argparse.Namespace) -> int:
    """Check the runs, load them, and run uvicorn until interrupted."""
    import json
    import math

    from ..errors import ConfigError
    from ..artifact import read_card

    if not 0 <= ns.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {ns.port}")
    if ns.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {ns.workers}")
    if ns.keep_alive_timeout < 1:
        raise ConfigError(f"--keep-alive-timeout must be at least 1 second, got {ns.keep_alive_timeout}")
    if not (ns.header_timeout > 0 and math.isfinite(ns.header_timeout)):
        raise ConfigError(f"--header-timeout must be a positive number of seconds, got {ns.header_timeout:g}")
    opts = _options(ns)
    if not opts["runs"] and not opts["pipelines"] and not opts["zero_shot"]:
        raise ConfigError("give at least one run folder to serve (e.g. recogen serve runs/classify/digits), a "
                          "diffusers pipeline (--pipeline NAME=ID_OR_DIR) or a foundation model "
                          "(--zero-shot NAME=PREFIX:ID_OR_DIR)")
    for run in opts["runs"]:
        read_card(run)  # a wrong path fails here, in one line, before anything heavy is imported
    _check_pipelines(opts)
    _check_zero_shot(opts)
    _check_port(ns.host, ns.port)  # and so does a port in use, before "serving ..." is printed
    import uvicorn

    from .protocol import HeaderTimeoutHTTP

    # uvicorn has no request-head timeout: this protocol factory adds one (see protocol.py)
    http = HeaderTimeoutHTTP(ns.header_timeout)
    where = f"http://{ns.host}:{ns.port}"
    auth = "API key required" if opts["api_key"] else "no API key"
    if ns.workers == 1:
        from .app import create_app

        app = create_app(opts.pop("runs"), **opts)  # loads every model now: errors before listening
        print(f"serving {', '.join(f'{m.name} ({m.task})' for m in app.state.models.values())} at {where} "
              f"(page /, docs /docs, {auth})", flush=True)
        uvicorn.run(app, host=ns.host, port=ns.port, log_level=ns.log_level, timeout_keep_alive=ns.keep_alive_timeout,
                    http=http)
    else:
        os.environ[ENV_CONFIG] = json.dumps(opts)
        print(f"serving {len(opts['runs'])} run(s), {len(opts['pipelines'])} pipeline(s) and "
              f"{len(opts['zero_shot'])} zero-shot model(s) at {where} with "
              f"{ns.workers} workers ({auth})", flush=True)
        uvicorn.run("recogen.serve.cli_serve:app_from_env", factory=True, host=ns.host, port=ns.port,
                    workers=ns.workers, log_level=ns.log_level, timeout_keep_alive=ns.keep_alive_timeout, http=http)
    return 0
