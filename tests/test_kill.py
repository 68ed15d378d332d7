"""Issue 12, "what must be true": a training process killed with SIGKILL at any moment leaves a run folder
that is loadable or resumable, and ``--resume`` then ends with exactly the weights (bit for bit, CPU fp32)
of a run that was never interrupted.

recogen has no hook to stop a run at a chosen point, so the test watches the run folder from outside and
kills ``python -m recogen classify train`` when it sees the moment it wants: before the first checkpoint,
in the middle of the second epoch (a seeded fraction of the measured epoch time after the first
checkpoint), while a checkpoint's temporary file is being written, and once training has ended while the
model files are being published. Each kill is followed by the checks a user would make (eval / load,
the checkpoint reads), and the next step continues the same folder, so one chain covers four kills.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT

EPOCHS = 4
SEED = 7  # the training seed
ARGS = ["classify", "train", "--data", "digits", "--limit", "160", "--image-size", "16", "--model", "cnn-s",
        "--epochs", str(EPOCHS), "--batch-size", "16", "--precision", "32-true", "--accelerator", "cpu",
        "--no-progress", "--seed", str(SEED)]
# The kill points are drawn from this seed (delays within an epoch); the outcome must not depend on it.
KILL_SEED = int(os.environ.get("RECOGEN_KILL_SEED", "12"))
POLL_S = 0.0005
TIMEOUT_S = 300


def _start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recogen", *ARGS, *extra, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen) -> tuple[str, str]:
    out, err = p.communicate(timeout=TIMEOUT_S)
    assert p.returncode == 0, err[-3000:]
    return out, err


class _Last:
    """The epoch of ``run/checkpoints/last.ckpt``, re-read only when the file is replaced (it is written
    atomically: never seen half-written)."""

    def __init__(self, run: Path):
        self.path, self.key, self.epoch = run / "checkpoints" / "last.ckpt", None, None

    def __call__(self) -> int | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.key = self.epoch = None
            return None
        if (st.st_ino, st.st_mtime_ns, st.st_size) != self.key:
            self.epoch = torch.load(self.path, map_location="cpu", weights_only=True)["epoch"]
            self.key = (st.st_ino, st.st_mtime_ns, st.st_size)
        return self.epoch


def _temp_files(run: Path) -> list[str]:
    """The temporary files of recogen's atomic writes (``.NAME.XXXX.tmp``) in the run folder."""
    found = []
    for d in (run, run / "checkpoints"):
        with contextlib.suppress(FileNotFoundError):
            found += [f"{d.name}/{e.name}" for e in os.scandir(d) if e.name.startswith(".") and e.name.endswith(".tmp")]
    return found


def _kill_when(p: subprocess.Popen, seen, what: str) -> str:
    """Poll until ``seen()`` returns a description (not None), then SIGKILL ``p`` at once; returns it."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if p.poll() is not None:
            _, err = p.communicate()
            pytest.fail(f"the run ended (rc {p.returncode}) before it could be killed {what}:\n{err[-2000:]}")
        hit = seen()
        if hit is not None:
            p.send_signal(signal.SIGKILL)  # a hard crash: no handler runs, nothing is cleaned up
            p.wait()
            return hit
        time.sleep(POLL_S)
    p.kill()
    pytest.fail(f"timed out waiting to kill the run {what}")


def _cli(*args) -> tuple[int, str, str]:
    """``recogen ARGS`` in this process (eval and load are quick): (exit code, stdout, stderr)."""
    from recogen.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def _assert_usable(run: Path, note: str) -> None:
    """What a user can do with a killed run: its checkpoint and config read; eval works where the model was
    published, else is one ``error:`` line (then --resume is the way on, checked by the next step)."""
    from recogen.tasks.runs import load_checkpoint

    last = run / "checkpoints" / "last.ckpt"
    if last.is_file():
        load_checkpoint(last)  # a RunError here would be a damaged checkpoint
    import yaml

    assert isinstance(yaml.safe_load((run / "config.yaml").read_text()), dict), note
    if (run / "history.json").is_file():
        json.loads((run / "history.json").read_text())
    rc, out, err = _cli("classify", "eval", run, "--json", "--no-write")
    if (run / "model.json").is_file():
        assert rc == 0, f"{note}: the published model does not evaluate: {err[-2000:]}"
        assert 0 <= json.loads(out)["accuracy"] <= 1
        import recogen

        recogen.load(run)
    else:
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), f"{note}: {err[-2000:]}"
        assert "Traceback" not in err


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


def _history(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time_s"} for row in json.loads((run / "history.json").read_text())]


PLANTED = "k1ll3d"  # the tag of the half-written temporary files this test leaves itself


def _plant_half_written_temporaries(run: Path) -> list[str]:
    """What SIGKILL in the middle of an atomic write leaves: the old file and a partial ``.NAME.XXXX.tmp``
    next to it. Planted at each file recogen writes atomically, so the leftovers of every such kill are
    covered, not only those the poll happens to catch."""
    planted = []
    for name in ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "config.yaml", "history.json", "splits.json"):
        real = run / name
        if real.is_file():
            data = real.read_bytes()
            (real.parent / f".{real.name}.{PLANTED}.tmp").write_bytes(data[: len(data) // 3])
            planted.append(name)
    return planted


@pytest.mark.slow
def test_sigkill_at_four_points_then_resume_gives_the_uninterrupted_weights_bit_for_bit(tmp_path):
    rng = random.Random(KILL_SEED)
    ref_dir, run = tmp_path / "ref", tmp_path / "run"
    ref = _start(ref_dir)  # the uninterrupted run, alongside the chain (the same seed, threads and precision)
    last = _Last(run)
    log = []

    # 1. Before the first checkpoint: config.yaml and splits.json are written, nothing trained is saved.
    #    Nothing to resume, and the same command again starts over (it is not refused as an existing run).
    p = _start(run)
    log.append(_kill_when(p, lambda: "after config.yaml was written, before the first checkpoint"
                          if (run / "config.yaml").is_file() else None, "before the first checkpoint"))
    assert last() is None, "the first epoch finished before the kill"
    rc, _, err = _cli("classify", "train", "--resume", "--out", run, "--no-progress")
    assert rc == 2 and err.startswith("error: nothing to resume") and len(err.strip().splitlines()) == 1, err

    # 2. The same command again, killed in the middle of the second epoch: a seeded fraction of the first
    #    epoch's measured time (its history row) after the first checkpoint appeared.
    p = _start(run)
    aim: dict[str, float] = {}

    def mid_second_epoch():
        if "t" not in aim:
            if last() is None:
                return None
            aim["t"] = time.monotonic()
            aim["delay"] = rng.uniform(0.2, 0.8) * json.loads((run / "history.json").read_text())[0]["time_s"]
        if time.monotonic() - aim["t"] >= aim["delay"]:
            return f"{aim['delay']:.3f} s after epoch {last()} was saved (the middle of the next epoch)"
        return None

    log.append(_kill_when(p, mid_second_epoch, "in the middle of the second epoch"))
    assert not (run / "model.json").exists() and last() is not None
    _assert_usable(run, log[-1])
    planted = _plant_half_written_temporaries(run)
    assert "checkpoints/last.ckpt" in planted
    _assert_usable(run, "with half-written temporary files")

    # 3. While a checkpoint is being written: its temporary file exists, the rename has not happened.
    #    Seen only if the poll catches the few milliseconds of the write; else the kill lands just after.
    p = _start(run, "--resume")
    start_epoch = last()

    def writing_checkpoint():
        tmp = [f for f in _temp_files(run) if f.startswith("checkpoints/") and PLANTED not in f]
        if tmp:
            return f"while writing {tmp[0]} (resumed after epoch {start_epoch})"
        e = last()
        if e is not None and e > start_epoch:  # both writes of the epoch missed: kill just after them
            return f"just after the checkpoints of epoch {e} (their writes were not caught)"
        return None

    log.append(_kill_when(p, writing_checkpoint, "while a checkpoint is written"))
    assert last() < EPOCHS - 1, "the kill came after training ended"
    _assert_usable(run, log[-1])

    # 4. After the last epoch, while the model is published (model.safetensors, model.json, then the final
    #    evaluation's metrics.json): kill at the first sign of any of them.
    p = _start(run, "--resume")

    def publishing():
        if last() != EPOCHS - 1:
            return None
        names = {e.name for e in os.scandir(run)}
        tmp = sorted(n for n in names if n.startswith((".model.", ".metrics")) and n.endswith(".tmp"))
        if tmp:
            return f"while writing {tmp[0]}"
        done = sorted({"model.safetensors", "model.json", "metrics.json"} & names)
        if done:
            return f"after training, with {done} written"
        return None

    log.append(_kill_when(p, publishing, "while the model is published"))
    _assert_usable(run, log[-1])

    # 5. --resume finishes the run: the weights of the uninterrupted run, bit for bit.
    _finish(_start(run, "--resume"))
    _finish(ref)
    got, want = _weights(run), _weights(ref_dir)
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, f"kills: {log}; tensors that differ from the uninterrupted run: {differ}"
    assert _history(run) == _history(ref_dir), log
    assert [r["epoch"] for r in _history(run)] == list(range(EPOCHS))
    _assert_usable(run, "the finished run")
    print("kill points:", *log, sep="\n  ")
    # --resume deletes what killed atomic writes left (the planted ones included): they only take space.
    assert _temp_files(run) == [], _temp_files(run)
