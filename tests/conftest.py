"""Shared fixtures: one real default training (the demo) and a tiny one, each run once per session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Small data-set images and tiny models: two threads are all this machine has, and under pytest-xdist
# (`make test` runs two worker processes) each worker gets one: two workers of two OpenMP threads each
# on two cores spin-wait on each other and ran the suite several times slower than one process (measured).
# (A worker inherits the controller's environment, where the default below is already set: override it.)
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"
else:
    os.environ.setdefault("OMP_NUM_THREADS", "2")


def run_cli(*args: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``recogen ARGS`` in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, "-m", "recogen", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or ROOT)


def main_in_process(capsys, *args) -> tuple[int, str, str]:
    """``recogen ARGS`` in this process (faster than :func:`run_cli`): (exit code, stdout, stderr)."""
    from recogen.cli import main

    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line(rc: int, err: str, *needles: str) -> str:
    """A user mistake through the CLI: exit 2, one ``error:`` line naming each of ``needles``, no
    traceback; returns the line."""
    assert rc == 2, (rc, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    """:func:`assert_one_line` for a :func:`run_cli` result."""
    assert_one_line(r.returncode, r.stderr, *needles)


def tiny_options(out: Path, **over) -> dict:
    """A few-second training run: 300 digits at 16 px, cnn-s, 3 epochs."""
    opts = dict(data="digits", limit=300, image_size=16, model="cnn-s", epochs=3, batch_size=64,
                out=str(out), progress=False, seed=0)
    opts.update(over)
    return opts


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """`recogen demo`: the default recipe on digits, then eval, predict and report (about 30 s)."""
    out = tmp_path_factory.mktemp("demo") / "run"
    r = run_cli("demo", "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    from recogen.tasks import classify

    return classify.train(**tiny_options(tmp_path_factory.mktemp("tiny") / "run"))


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one intra-op thread (use with ``pytestmark = pytest.mark.usefixtures``).

    Tiny 32-64 px models gain nothing from a second thread, and on a busy 2-core machine OpenMP threads
    waiting on each other made a step several times slower (measured).
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def offline(monkeypatch, tmp_path) -> Path:
    """No network and empty library caches (torch.hub under TORCH_HOME, the Hugging Face hub cache),
    whatever the machine running the tests has; returns the folder that holds the caches."""
    import socket

    def no_dns(*a, **k):
        raise socket.gaierror("offline (test)")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # read once, at its import
    return tmp_path
