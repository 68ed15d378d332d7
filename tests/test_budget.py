"""Time budgets (``--budget``): parsing, planning, re-planning the LR schedule, and the defaults policy
(budget + data-bound epochs + precision) of every task, with the CPU's bf16 capability faked both ways."""
from __future__ import annotations

import types

import pytest
import torch
import yaml

from conftest import one_line_error, run_cli, tiny_options
from recogen.config import ClassifyConfig, DetectConfig, GenerateConfig, SegmentConfig
from recogen.errors import ConfigError
from recogen.tasks import budget, classify, runs, trainer


# ------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("text,seconds", [("90s", 90), ("5m", 300), ("1h30m", 5400), ("1.5h", 5400), ("300", 300),
                                          (" 8m30s ", 510), (45, 45), ("none", None), ("off", None), (None, None)])
def test_parse_budget(text, seconds):
    assert budget.parse_budget(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "5x", "-3m", "0s", "m", "5m soon", "nan", "inf"])
def test_bad_budget_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="budget"):
        budget.parse_budget(bad)


def test_format_budget_round_trips():
    for s in (45, 90, 300, 510, 3600, 5400):
        assert budget.parse_budget(budget.format_budget(s)) == s
    assert budget.format_budget(510) == "8m30s" and budget.format_budget(None) == "none"


def test_epochs_that_fit():
    assert budget.epochs_that_fit(100, 10, done=2, cap=50) == 12
    assert budget.epochs_that_fit(100, 10, done=2, cap=7) == 7  # the data's bound wins
    assert budget.epochs_that_fit(-5, 10, done=3, cap=50) == 3  # over budget: what is trained stays


# --------------------------------------------------------------------------------------- re-planning
class _FakeTrainer:
    """What the budget callback reads of a Lightning Trainer."""

    def __init__(self, max_epochs, steps_per_epoch, opt):
        self.fit_loop = types.SimpleNamespace(max_epochs=max_epochs)
        self.num_training_batches = steps_per_epoch
        self.current_epoch = 0
        self.should_stop = False
        sched = trainer.make_scheduler(opt, "onecycle", 0.1, max_epochs * steps_per_epoch)
        self.lr_scheduler_configs = [types.SimpleNamespace(scheduler=sched)]

    @property
    def max_epochs(self):
        return self.fit_loop.max_epochs


def _drive(monkeypatch, *, budget_s, epoch_s, cap=100, steps=10, epochs_to_run=None, regime=None):
    """Run the callback over epochs of ``epoch_s`` seconds each on a fake clock; returns trainer, plans, lrs.
    ``regime(epoch)``: the module's ``train_regime`` in that epoch (none: a module without one)."""
    clock = {"t": 0.0}
    monkeypatch.setattr(budget, "_now", lambda: clock["t"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    tr = _FakeTrainer(cap, steps, opt)
    plans = []
    cb = budget.budget_callback(budget_s, 0.0, cap, lambda val_s: 0.0, lambda trainer, e: plans.append(e))
    lrs = []
    for epoch in range(epochs_to_run or cap):
        if epoch >= tr.max_epochs or tr.should_stop:
            break
        tr.current_epoch = epoch
        module = types.SimpleNamespace(train_regime=regime(epoch)) if regime else None
        cb.on_train_epoch_start(tr, module)
        for _ in range(steps):
            opt.step()
            tr.lr_scheduler_configs[0].scheduler.step()
            lrs.append(opt.param_groups[0]["lr"])
        clock["t"] += epoch_s[epoch] if isinstance(epoch_s, list) else epoch_s
        cb.on_train_epoch_end(tr, module)
    return tr, plans, lrs


def test_budget_plans_the_epochs_that_fit_and_the_schedule_ends_there(monkeypatch):
    tr, plans, lrs = _drive(monkeypatch, budget_s=100, epoch_s=10, cap=100, steps=10)
    assert plans == [10] and tr.max_epochs == 10  # 100 s of 10-s epochs
    assert len(lrs) == 100
    # From the re-plan on, the LR is exactly a one-cycle schedule of the new length: it peaks and
    # anneals to (almost) zero at the new last step.
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = trainer.make_scheduler(opt, "onecycle", 0.1, 100)
    want = []
    for _ in range(100):
        opt.step()
        ref.step()
        want.append(opt.param_groups[0]["lr"])
    assert lrs[10:-1] == pytest.approx(want[10:-1], rel=1e-6)
    assert max(lrs) == pytest.approx(0.1, rel=0.05) and lrs[-2] < 1e-4


def test_budget_never_exceeds_the_data_bound(monkeypatch):
    tr, plans, _ = _drive(monkeypatch, budget_s=1000, epoch_s=1, cap=12, steps=3)
    assert plans == [] and tr.max_epochs == 12  # fast machine: the data decide


def test_budget_replans_from_later_epochs_and_stops_when_the_machine_slows(monkeypatch):
    # First epoch slow (warm-up), then 5 s: the plan grows once the later epochs are measured.
    tr, plans, _ = _drive(monkeypatch, budget_s=100, epoch_s=[20, 5, 5, 5] + [30] * 50, cap=100, steps=2)
    assert plans[0] == 5 and plans[-1] > plans[0], plans
    # After the planning epochs, epochs of 30 s do not fit what is left: it stops early, within budget.
    assert tr.should_stop and tr.current_epoch + 1 < tr.max_epochs


def test_budget_replans_when_the_epochs_change_cost(monkeypatch):
    """Fine-tuning: 5 frozen epochs of 1 s, then the whole network at 3 s an epoch. Planned from the
    frozen epochs alone, 60 s looked like ~57 epochs and the clock cut the run with the LR mid-schedule;
    re-planned when the regime changes, the run ends on its own, inside the budget, its LR annealed."""
    frozen = lambda epoch: epoch < 5  # noqa: E731
    times = [1.0] * 5 + [3.0] * 100
    tr, plans, lrs = _drive(monkeypatch, budget_s=60, epoch_s=times, cap=100, steps=4, regime=frozen)
    assert not tr.should_stop, plans  # not cut by the clock
    assert sum(times[:tr.max_epochs]) <= 60 and tr.max_epochs == 23, plans  # 5 s + 18 x 3 s = 59 s
    assert len(lrs) == tr.max_epochs * 4 and lrs[-1] < 1e-3 * max(lrs)
    # Without the regime (the times alone), the old plan is kept and the clock stops the run.
    tr2, _, lrs2 = _drive(monkeypatch, budget_s=60, epoch_s=times, cap=100, steps=4)
    assert tr2.should_stop and lrs2[-1] > 0.1 * max(lrs2)


# ------------------------------------------------------------------------------ the defaults policy
def _fake_cpu(monkeypatch, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(trainer, "bf16_supported", lambda: bf16)


@pytest.mark.parametrize("bf16", [False, True])
def test_auto_precision_follows_the_cpu(monkeypatch, bf16):
    _fake_cpu(monkeypatch, bf16)
    assert trainer.auto_precision() == ("bf16-mixed" if bf16 else "32-true")


def test_budget_auto_is_the_task_default_unless_epochs_are_given():
    why: list[str] = []
    cfg = ClassifyConfig()
    assert runs.resolve_budget(cfg, "10m", why) == 600 and cfg.budget == "10m" and "budget 10m" in why[0]
    exact = ClassifyConfig(epochs=3)
    assert runs.resolve_budget(exact, "10m", []) is None and exact.budget == "none"
    both = ClassifyConfig(epochs=3, budget="90s")  # an explicit budget caps explicit epochs
    assert runs.resolve_budget(both, "10m", []) == 90 and both.budget == "1m30s"


def test_classify_epochs_scale_with_the_data():
    e = [classify.data_epochs(n) for n in (10, 1_000, 3_400, 50_000, 1_000_000)]
    assert e == sorted(e, reverse=True) and e[0] == classify.MAX_EPOCHS and e[-1] == classify.MIN_EPOCHS


@pytest.mark.parametrize("bf16", [False, True])
def test_every_task_resolves_a_budgeted_policy_on_either_cpu(monkeypatch, bf16):
    from recogen.data import DataOptions, create_dataset
    from recogen.data.dense import create_dense_dataset
    from recogen.tasks import detect, generate, segment

    _fake_cpu(monkeypatch, bf16)
    digits = create_dataset("digits", DataOptions(image_size=28))
    c, why = classify.resolve_defaults(ClassifyConfig(data="digits"), digits)
    assert (c.budget, c.epochs, c.precision) == ("10m", classify.data_epochs(len(digits.train)),
                                                 "bf16-mixed" if bf16 else "32-true")
    scenes = create_dense_dataset("shapes:100", DataOptions(image_size=64, channels=3))
    d, _ = detect.resolve_defaults(DetectConfig(data="shapes:100"), scenes)
    # bf16 autocast is not used for the detectors on a CPU either way (torchvision's losses and NMS in fp32).
    assert (d.model, d.budget, d.precision) == ("fcos-s", "8m", "32-true") and d.epochs >= 10
    s, _ = segment.resolve_defaults(SegmentConfig(data="shapes:100"), scenes)
    assert (s.model, s.budget, s.precision) == ("unet", "8m", "bf16-mixed" if bf16 else "32-true")
    for model, want in (("vae", "3m"), ("dcgan", "7m"), ("ddpm", "9m")):
        g, _ = generate.resolve_defaults(GenerateConfig(model=model, data="digits"), digits)
        assert g.budget == want and g.precision == ("bf16-mixed" if bf16 else "32-true"), model
    # Explicit epochs: exactly those, no clock.
    e, _ = detect.resolve_defaults(DetectConfig(data="shapes:100", epochs=3), scenes)
    assert (e.epochs, e.budget) == (3, "none")


def test_unfreeze_at_must_fall_inside_the_run():
    """--unfreeze-at past the last epoch would keep the backbone frozen all along: refused with --epochs
    given, said with the choice when the epochs were chosen; inside the run it passes silently."""
    from recogen.data import DataOptions, create_dataset

    digits = create_dataset("digits", DataOptions(image_size=28))
    with pytest.raises(ConfigError, match=r"--unfreeze-at 5 is not before the last epoch \(--epochs 5"):
        classify.resolve_defaults(ClassifyConfig(data="digits", epochs=5, freeze_backbone=True, unfreeze_at=5), digits)
    ok, why = classify.resolve_defaults(ClassifyConfig(data="digits", epochs=5, freeze_backbone=True, unfreeze_at=4), digits)
    assert ok.unfreeze_at == 4 and not any("unfreeze" in w for w in why)
    chosen, why = classify.resolve_defaults(ClassifyConfig(data="digits", freeze_backbone=True, unfreeze_at=999), digits)
    assert any("--unfreeze-at 999 is past the" in w and "stays frozen" in w for w in why), why


# ------------------------------------------------------------------------------------ end to end
def test_a_tiny_budget_trains_what_fits_and_records_the_plan(tmp_path):
    out = tmp_path / "run"
    run = classify.train(**{**tiny_options(out), "epochs": None, "budget": "1s"})
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    # Data loading and the first epoch already spend 1 s: one epoch is trained (not the 26 the data
    # would be worth), the plan is saved for --resume, and the run is complete.
    assert cfg["budget"] == "1s" and cfg["epochs"] == 1 and cfg["patience"] == 10
    assert (run / "model.safetensors").is_file() and (run / "metrics.json").is_file()


def test_bad_budget_through_the_cli(tmp_path):
    r = run_cli("classify", "train", "--data", "digits", "--budget", "soon", "--out", tmp_path / "x")
    one_line_error(r, "--budget", "5m")
    assert not (tmp_path / "x").exists()
