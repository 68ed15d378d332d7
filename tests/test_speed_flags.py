"""--compile, channels-last, precision choice, and the per-step costs the framework took off the loop
(issue 14): a fused optimiser, epoch loss means without a metric object or a synchronisation per step,
and a finite-loss check that does not wait for an accelerator every step."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from recogen.errors import ConfigError, RunError, UserError
from recogen.tasks import callbacks, classify, get_task, trainer

from conftest import tiny_options

pytestmark = pytest.mark.usefixtures("one_thread")


def _compile_unavailable() -> str | None:
    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            return "torch.compile is not supported with this Python/torch"
    except Exception as e:  # noqa: BLE001
        return f"torch.compile cannot be imported ({type(e).__name__})"
    if trainer._cpp_compiler() is None:
        return "no C++ compiler (g++/clang++) for torch.compile's CPU kernels"
    return None


# ------------------------------------------------------------------------------------ --compile
@pytest.mark.slow
def test_compile_trains_and_its_weights_load_uncompiled_then_resume(tmp_path, monkeypatch):
    reason = _compile_unavailable()
    if reason:
        pytest.skip(reason)
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor, "compile_threads", 1)  # no pool of compiler processes on 2 cores
    pl = callbacks.lightning()
    probe = torch.rand(5, 1, 8, 8)
    seen = {}

    class AtEnd(pl.Callback):
        """The trained, still compiled network's outputs on ``probe`` (normalised as training does)."""

        def on_train_end(self, trainer, module):
            seen["compiled"] = getattr(module.model, "_compiled_call_impl", None) is not None
            module.model.eval()
            with torch.inference_mode():  # as validation ran it: no new compilation
                seen["logits"] = module.model(((probe - module.mean) / module.std)).clone()

    # One training step and one validation batch per epoch: the fewest graphs to compile.
    run = tmp_path / "run"
    opts = tiny_options(run, limit=64, image_size=8, model="seed-cnn", epochs=1, batch_size=64, val_fraction=0.3,
                        test_fraction=0.1, compile=True)
    classify.train(**opts, callbacks=[AtEnd()])
    assert seen["compiled"]
    sd = load_file(run / "model.safetensors")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not [k for k in [*sd, *ckpt["state_dict"]] if "_orig_mod" in k]
    # The portable model in an uncompiled predictor gives the compiled network's outputs (compiled
    # kernels may round differently), and exactly what the checkpoint's weights give eagerly.
    pred = classify.load(run)
    assert getattr(pred.model, "_compiled_call_impl", None) is None
    with torch.inference_mode():
        norm = torch.tensor(pred.card["normalize"]["mean"]).view(1, -1, 1, 1), torch.tensor(pred.card["normalize"]["std"]).view(1, -1, 1, 1)
        eager = pred.model((probe - norm[0]) / norm[1])
    torch.testing.assert_close(eager, seen["logits"], rtol=1e-4, atol=1e-5)
    from recogen.models import create_model

    net = create_model("seed-cnn", num_classes=10, in_chans=1, image_size=8)
    net.load_state_dict({k[len("model."):]: v for k, v in torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
                         ["state_dict"].items() if k.startswith("model.")})
    with torch.inference_mode():
        assert torch.equal(net.eval()((probe - norm[0]) / norm[1]), eager)
    # --resume of the compiled run, compiled (the graphs are cached now) to a second epoch.
    classify.train(out=str(run), resume=True, epochs=2, progress=False)
    rows = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in rows] == [0, 1]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and not [k for k in ckpt["state_dict"] if "_orig_mod" in k]


def test_compile_without_a_cpp_compiler_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "_cpp_compiler", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="needs a C.. compiler.*--no-compile"):
        classify.train(**tiny_options(out, compile=True))
    assert not out.exists()  # refused before the run folder is made


def test_a_compile_failure_at_run_time_names_no_compile(tmp_path, monkeypatch):
    """torch.compile compiles lazily, at the first step: its failure there is one line naming --no-compile."""
    orig = torch.nn.Module.compile

    def boom(gm, example_inputs):
        raise RuntimeError("the backend broke")

    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: orig(self, backend=boom))
    with pytest.raises(RunError, match="--compile: torch.compile failed on cnn-s .*train it with --no-compile"):
        classify.train(**tiny_options(tmp_path / "run", limit=64, epochs=1, compile=True))


def test_compiled_prefixes_are_stripped_from_weights_files(tmp_path):
    from recogen.models.weights import read_state_dict

    net = torch.nn.Sequential(torch.nn.Linear(2, 3))
    torch.save(torch.compile(net).state_dict(), tmp_path / "w.pt")  # keys "_orig_mod.0.weight", ...
    assert sorted(read_state_dict(tmp_path / "w.pt")) == ["0.bias", "0.weight"]


# ------------------------------------------------------------------------------ channels-last
def _memory_formats(task: str, tmp_path: Path, **options) -> dict:
    """Train one tiny epoch of ``task``; what the first training step saw: batch and weights channels-last?"""
    pl = callbacks.lightning()
    seen = {}

    class Look(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 0 and trainer.current_epoch == 0:
                conv = next(p for p in module.model.parameters() if p.ndim == 4 and p.shape[1] > 1)
                seen["weights"] = conv.is_contiguous(memory_format=torch.channels_last)
                x = batch[0]
                seen["batch"] = x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) \
                    and not x.is_contiguous()

    get_task(task).train(None, [Look()], out=str(tmp_path / task), epochs=1, progress=False, seed=0, **options)
    return seen


@pytest.mark.parametrize("task,options", [
    ("classify", dict(data="shapes:48", image_size=16, model="cnn-s", batch_size=16)),
    ("segment", dict(data="shapes:40", image_size=32, batch_size=8)),
    ("generate", dict(data="digits", limit=64, channels=3, model="dcgan", batch_size=32, width=8)),
], ids=["classify", "segment", "generate"])
def test_channels_last_reaches_the_weights_and_the_batches(tmp_path, task, options):
    on = _memory_formats(task, tmp_path / "on", channels_last=True, **options)
    assert on == {"weights": True, "batch": True}
    off = _memory_formats(task, tmp_path / "off", channels_last=False, **options)
    assert off == {"weights": False, "batch": False}


def test_channels_last_defaults_per_task():
    """On where it was measured faster (CNN classifiers, the U-Net, DCGAN and VAE); off for ViT, the
    detectors (their transform builds its own batch) and the diffusion UNet."""
    from recogen.config import ClassifyConfig, DetectConfig, GenerateConfig, SegmentConfig
    from recogen.data import create_dataset, DataOptions
    from recogen.data.dense import create_dense_dataset
    from recogen.tasks.classify.recipe import resolve_defaults as rc
    from recogen.tasks.detect.recipe import resolve_defaults as rd
    from recogen.tasks.generate.recipe import resolve_defaults as rg
    from recogen.tasks.segment.recipe import resolve_defaults as rs

    digits = create_dataset("digits", DataOptions(image_size=16, limit=64))
    shapes = create_dense_dataset("shapes:24", DataOptions(image_size=32))
    assert rc(ClassifyConfig(data="digits", model="cnn-s", epochs=1), digits)[0].channels_last is True
    assert rc(ClassifyConfig(data="digits", model="vit-tiny", epochs=1), digits)[0].channels_last is False
    assert rs(SegmentConfig(epochs=1), shapes)[0].channels_last is True
    assert rd(DetectConfig(epochs=1), shapes)[0].channels_last is False
    assert rg(GenerateConfig(model="dcgan", epochs=1), digits)[0].channels_last is True
    assert rg(GenerateConfig(model="vae", epochs=1), digits)[0].channels_last is True
    assert rg(GenerateConfig(model="ddpm", epochs=1), digits)[0].channels_last is False


# ------------------------------------------------------------------------------------ precision
@pytest.mark.parametrize("avx512_bf16,amx,want", [(False, False, False), (True, False, True), (False, True, True)])
def test_bf16_counts_only_where_the_cpu_has_the_instructions(monkeypatch, avx512_bf16, amx, want):
    """oneDNN says yes on any AVX-512 CPU (bf16 emulated there, slower than fp32); auto precision needs
    AVX512-BF16 or AMX on x86."""
    import platform

    monkeypatch.setattr(trainer, "_mkldnn_bf16", lambda: True)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trainer.bf16_supported() is want
    assert trainer.auto_precision() == ("bf16-mixed" if want else "32-true")
    monkeypatch.setattr(trainer, "_mkldnn_bf16", lambda: False)
    assert trainer.bf16_supported() is False


@pytest.mark.parametrize("bf16", [False, True])
def test_every_recipe_takes_the_automatic_precision(monkeypatch, bf16):
    """Classify, segment and generate use bf16 where the CPU has it; detect stays fp32 on a CPU (bf16
    made an FCOS step 13x slower there)."""
    from recogen.config import ClassifyConfig, DetectConfig, GenerateConfig, SegmentConfig
    from recogen.data import create_dataset, DataOptions
    from recogen.data.dense import create_dense_dataset
    from recogen.tasks.classify.recipe import resolve_defaults as rc
    from recogen.tasks.detect.recipe import resolve_defaults as rd
    from recogen.tasks.generate.recipe import resolve_defaults as rg
    from recogen.tasks.segment.recipe import resolve_defaults as rs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(trainer, "bf16_supported", lambda: bf16)
    want = "bf16-mixed" if bf16 else "32-true"
    digits = create_dataset("digits", DataOptions(image_size=16, limit=64))
    shapes = create_dense_dataset("shapes:24", DataOptions(image_size=32))
    assert rc(ClassifyConfig(epochs=1), digits)[0].precision == want
    assert rs(SegmentConfig(epochs=1), shapes)[0].precision == want
    assert rg(GenerateConfig(epochs=1), digits)[0].precision == want
    assert rd(DetectConfig(epochs=1), shapes)[0].precision == "32-true"
    # An explicit choice is kept.
    assert rc(ClassifyConfig(epochs=1, precision="32-true"), digits)[0].precision == "32-true"


# ------------------------------------------------------------------------ per-step costs
def test_optimisers_are_fused_where_the_device_has_the_kernel(monkeypatch):
    from recogen.config import ClassifyConfig, GenerateConfig
    from recogen.tasks.generate.module import make_optimizer

    net = torch.nn.Linear(3, 2)
    # On by default; RECOGEN_FUSED_OPTIMIZER=0 gives torch's own implementation back
    monkeypatch.setenv("RECOGEN_FUSED_OPTIMIZER", "0")
    got = trainer.configure_optimizers(ClassifyConfig(optimizer="adamw", lr=1e-3), net.parameters(), 100)
    assert not got["optimizer"].defaults.get("fused")
    monkeypatch.delenv("RECOGEN_FUSED_OPTIMIZER")
    for opt in ("adamw", "sgd"):
        got = trainer.configure_optimizers(ClassifyConfig(optimizer=opt, lr=1e-3), net.parameters(), 100)
        assert got["optimizer"].defaults["fused"] is True, opt
    gen = make_optimizer(GenerateConfig(optimizer="adam", lr=1e-3), net.parameters(), (0.5, 0.999))
    assert gen.defaults["fused"] is True
    # Not where a parameter is on a device without the kernels (here: a complex tensor has none).
    assert trainer.optimizer_impl([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))]) == {}


def test_epoch_losses_need_no_metric_object_and_are_the_weighted_means(tmp_path, monkeypatch):
    """The epoch mean of the training loss is added up in two tensors: no torchmetrics update (about
    0.2 ms of Python each, and a NaN check that waits for a GPU) per step, and the same numbers."""
    from torchmetrics import MeanMetric

    calls = []
    orig = MeanMetric.update
    monkeypatch.setattr(MeanMetric, "update", lambda self, *a, **k: (calls.append(1), orig(self, *a, **k))[1])
    pl = callbacks.lightning()
    losses: dict[int, list[float]] = {}

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.setdefault(trainer.current_epoch, []).append(float(outputs["loss"]))

    run = classify.train(**tiny_options(tmp_path / "run", limit=200, epochs=2, batch_size=32), callbacks=[Record()])
    assert calls == []
    rows = json.loads((run / "history.json").read_text())
    for row in rows:
        ls = torch.tensor(losses[row["epoch"]])
        want = float((ls * 32).sum() / (32 * len(ls)))  # MeanMetric's arithmetic, float32
        assert row["train_loss"] == round(want, 6)


def _nan_at(epoch: int, batch: int):
    pl = callbacks.lightning()

    class Poison(pl.Callback):
        def on_train_batch_start(self, trainer, module, b, batch_idx):
            if trainer.current_epoch == epoch and batch_idx == batch:
                with torch.no_grad():
                    next(module.parameters()).fill_(float("nan"))

    return Poison()


def test_finite_loss_check_on_an_accelerator_waits_only_every_few_steps(tmp_path, monkeypatch):
    """Where reading a value waits for the device, the loss is read every FINITE_CHECK_EVERY steps and at
    each epoch's last step, not every step; a NaN is still reported at its exact step, as on a CPU."""
    reads = []
    orig = callbacks._all_finite

    def counted(trainer, value):
        reads.append(inspect.stack()[1].function)
        return orig(trainer, value)

    monkeypatch.setattr(callbacks, "_all_finite", counted)
    monkeypatch.setattr(callbacks, "_reading_is_free", lambda device: False)
    monkeypatch.setattr(callbacks, "FINITE_CHECK_EVERY", 4)
    classify.train(**tiny_options(tmp_path / "ok", limit=224, epochs=2, batch_size=32))  # 7 steps an epoch
    assert reads.count("on_train_batch_end") == 2 * 2  # steps 4 and 7 of each epoch, not 14 reads
    # A NaN at the second step of the second epoch: the message names it exactly, as a CPU's check does.
    messages = []
    for free in (False, True):
        monkeypatch.setattr(callbacks, "_reading_is_free", lambda device, free=free: free)
        with pytest.raises(UserError) as e:
            classify.train(**tiny_options(tmp_path / f"nan{free}", limit=224, epochs=2, batch_size=32),
                           callbacks=[_nan_at(1, 1)])
        messages.append(str(e.value).split(";")[0])
    assert messages[0] == messages[1] == "loss became nan at step 9 (epoch 2, batch 2)", messages
    last = torch.load(tmp_path / "nanFalse" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 0  # the broken epoch wrote no checkpoint


# ------------------------------------------------------------------------------ the benchmark
@pytest.mark.slow
def test_train_throughput_runs_every_task_quick(monkeypatch, tmp_path, capsys):
    """benchmarks/train_throughput.py --quick: both loops of every task run end to end (figures mean nothing)."""
    import runpy
    import sys

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    out = tmp_path / "r.json"
    monkeypatch.setattr(sys, "argv", [str(bench / "train_throughput.py"), "--quick", "--rounds", "1", "--no-progress",
                                      "--json", str(out)])
    runpy.run_path(str(bench / "train_throughput.py"), run_name="__main__")
    r = json.loads(out.read_text())
    assert [t["task"] for t in r["results"]] == ["classify", "segment", "detect", "generate"]
    assert all(t["ratio"] > 0 and t["cpu_ratio"] > 0 and len(t["rounds"]) == 1 for t in r["results"])
    assert "generate: ratio recogen/plain = " in capsys.readouterr().out


def test_compile_is_refused_for_detection_before_any_data_loads(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="--compile is not supported for detect: .*--no-compile"):
        get_task("detect").train(None, None, data="shapes:24", image_size=32, epochs=1, compile=True, out=str(out),
                                 progress=False)
    assert not out.exists()


def test_an_improving_epoch_writes_its_second_checkpoint_as_a_copy_of_the_same_content(tmp_path, monkeypatch):
    """best.ckpt and last.ckpt of an improving epoch hold the same checkpoint: the second is a copy of the
    first file instead of a second torch.save, and the checkpoints are those two torch.save calls wrote."""
    import shutil

    saves = []
    orig = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (saves.append(Path(f).name), orig(obj, f, *a, **k))[1])
    run = tmp_path / "run"
    files = {}
    for dedup in (True, False):
        if not dedup:  # every checkpoint serialised, as before; the same folder (paths are in the files)
            monkeypatch.setattr(callbacks, "_same_content", lambda a, b: False)
        saves.clear()
        classify.train(**tiny_options(run, limit=128, epochs=3, batch_size=32))
        files[dedup] = {p.name: torch.load(p, map_location="cpu", weights_only=True) for p in (run / "checkpoints").glob("*.ckpt")}
        files[dedup, "saves"] = [s for s in saves if ".ckpt" in s]
        files[dedup, "accs"] = [r["val_acc"] for r in json.loads((run / "history.json").read_text())]
        shutil.rmtree(run)
    assert set(files[True]) == set(files[False]) == {"best.ckpt", "last.ckpt"}
    for name in files[True]:  # the same checkpoints (torch.save names a file's records after it: not bytes)
        _assert_same(files[True][name], files[False][name])
    improved = sum(1 for i, a in enumerate(files[True, "accs"]) if i == 0 or a > max(files[True, "accs"][:i]))
    assert len(files[False, "saves"]) == 3 + improved  # last every epoch, best when it improved
    assert len(files[True, "saves"]) == len(files[False, "saves"]) - (improved - 1)  # not the first epoch's


def _assert_same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b
