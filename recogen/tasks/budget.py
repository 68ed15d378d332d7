"""Wall-clock training budgets: ``--budget 8m`` plans the schedule to end in time.

The default recipe of a task is a *policy*: the data decide how many epochs are worth training (an
upper bound), and the time budget decides how many fit. Like Ultralytics' ``time=``, the plan is
made from measured epoch times: after each of the first epochs the remaining time is divided by the
measured epoch time, the epoch count and the learning-rate schedule are re-planned to end there, and
the resolved count is written back to ``config.yaml`` (so ``--resume`` continues the same plan).
A run that still drifts past its budget stops at the end of an epoch and keeps the best checkpoint.
A module whose epochs change cost mid-run (fine-tuning: a frozen backbone trains in about half the time
of the whole network) says so through a ``train_regime`` attribute; when it changes, the measurements
start over and the plan is made again from the new epochs.

An explicit ``--epochs`` without ``--budget`` trains exactly that many epochs (deterministic runs and
tests); ``--budget none`` turns the clock off and trains the data's epoch count.
"""
from __future__ import annotations

import logging
import math
import statistics
import time
import warnings
import weakref
from typing import Callable

from ..config import format_budget, parse_budget  # noqa: F401  (the text form of --budget is config)

log = logging.getLogger(__name__)

_now = time.perf_counter  # the clock (a name of its own so tests can drive it)


_UNSET = object()  # no epoch seen yet (a module's regime may itself be None)

# scheduler -> function(total_steps) building the same schedule for another length (filled by
# trainer.make_scheduler; used by replan).
SCHEDULE_REBUILDERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def epochs_that_fit(remaining_s: float, epoch_s: float, done: int, cap: int) -> int:
    """Total epochs when ``done`` are finished, each further one takes ``epoch_s`` and ``remaining_s`` is left.

    Never fewer than ``done`` (what is trained stays trained) nor more than ``cap`` (what the data is worth).
    """
    more = math.floor(max(0.0, remaining_s) / max(epoch_s, 1e-9))
    return max(done, min(cap, done + more))


def budget_callback(budget_s: float, t_start: float, cap: int, reserve_s: Callable[[float], float],
                    on_replan: Callable[[object, int], None], replan_after: int = 3):
    """A Lightning callback that re-plans epochs (and rebuilds the LR schedule) to end within the budget.

    ``t_start`` is the ``time.perf_counter()`` of the start of the run (data loading counts too);
    ``reserve_s(val_s)`` is the time kept for what follows training (final evaluation, plots), given
    the last validation time; ``on_replan(trainer, epochs)`` records the new plan (config.yaml).
    """
    import lightning.pytorch as pl

    class TimeBudget(pl.Callback):
        def __init__(self):
            self.epoch_s: list[float] = []
            self.val_s = 0.0
            self.t_epoch = self.t_val = 0.0
            self.last_end: float | None = None
            self.regime: object = _UNSET

        def on_train_epoch_start(self, trainer, module):
            self.t_epoch = _now()

        def on_validation_epoch_start(self, trainer, module):
            self.t_val = _now()

        def on_validation_epoch_end(self, trainer, module):
            self.val_s = _now() - self.t_val

        def on_train_epoch_end(self, trainer, module):
            now = _now()
            # From the previous epoch's end: what runs after this hook (the module's own epoch-end
            # work, checkpoint writes) is then counted too.
            regime = getattr(module, "train_regime", None)
            if self.regime is not _UNSET and regime != self.regime:
                # The epochs now cost something else (the backbone was unfrozen): the earlier
                # times would mislead the plan; measure and re-plan from here.
                log.info("time budget: the epochs changed (%s -> %s); re-planning from new measurements", self.regime, regime)
                self.epoch_s = []
            self.regime = regime
            self.epoch_s.append(now - (self.t_epoch if self.last_end is None else self.last_end))
            self.last_end = now
            # The first epoch pays one-off costs (allocator warm-up, first calls): once there are
            # later ones, plan from those.
            per_epoch = statistics.median(self.epoch_s[1:] or self.epoch_s)
            done = trainer.current_epoch + 1
            remaining = budget_s - (now - t_start) - reserve_s(self.val_s)
            planned, stop = None, False
            if len(self.epoch_s) <= replan_after:
                planned = epochs_that_fit(remaining, per_epoch, done, cap)
            elif done < trainer.max_epochs and remaining < per_epoch:
                stop = True
            if getattr(trainer, "world_size", 1) > 1:
                # Each process measures its own clock: global rank 0's decision holds for all, so every
                # process trains the same epochs (different ones would leave one waiting for the others).
                planned, stop, per_epoch, remaining = trainer.strategy.broadcast((planned, stop, per_epoch, remaining), src=0)
            if planned is not None and planned != trainer.max_epochs:
                replan(trainer, planned)
                on_replan(trainer, planned)
                log.info("time budget: %d epochs fit (%.1f s each, %.0f s left)", planned, per_epoch, remaining)
            elif stop:
                # Slower than planned (a busy machine): stop now rather than overrun; best.ckpt stays.
                log.warning("time budget %s reached after epoch %d of %d; keeping the best checkpoint",
                            format_budget(budget_s), done, trainer.max_epochs)
                trainer.should_stop = True

    return TimeBudget()


def replan(trainer, epochs: int) -> None:
    """Set the trainer's epoch count and rebuild each per-step LR schedule for the new total.

    A schedule made by :func:`recogen.tasks.trainer.make_scheduler` has a rebuilder (:data:`SCHEDULE_REBUILDERS`);
    the new one is advanced to the step the old one had reached, so from there on the LR follows the
    schedule of the new length and ends exactly at the new last step (the steps already taken keep
    the rates they had: early in warm-up, a small jump).
    """
    trainer.fit_loop.max_epochs = epochs
    steps_per_epoch = max(1, int(trainer.num_training_batches))
    for sc in trainer.lr_scheduler_configs:
        rebuild = SCHEDULE_REBUILDERS.get(sc.scheduler)
        if rebuild is None:
            continue
        done = sc.scheduler.last_epoch
        new = rebuild(max(done + 1, epochs * steps_per_epoch))
        if new is None:
            continue
        new.last_epoch = done - 1
        with warnings.catch_warnings():
            # torch's "scheduler stepped before optimizer" check misfires on a scheduler built mid-run.
            warnings.simplefilter("ignore", UserWarning)
            new.step()
        sc.scheduler = new
