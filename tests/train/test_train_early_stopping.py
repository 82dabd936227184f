"""Early stopping waits for the annealing half of the LR schedule: a stall near the peak LR is not a reason to stop."""

from __future__ import annotations

import pytest
import torch

from transferline.config import TrainParams
from transferline.model.training import (
    PATIENCE_LR_FRACTION,
    EarlyStopping,
    build_scheduler,
    first_patience_epoch,
)

STEPS = 43  # steps per epoch of the default data: 2800 train images at 400 a class, batch 64


def lr_at_end_of_each_epoch(params: TrainParams, steps: int) -> list[float]:
    """The LR of the last step of every epoch, as the real scheduler sets it (peak lr = 1)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, params, steps)
    lrs = []
    for _ in range(params.epochs):
        for step in range(steps):
            if step == steps - 1:
                lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    return lrs


def replay(stopper: EarlyStopping, accuracies: list[float]) -> int:
    """Feed val accuracies epoch by epoch as fit does; returns the number of epochs run."""
    for epoch, accuracy in enumerate(accuracies, start=1):
        stopper.update(epoch, accuracy, loss=1.0)
        if stopper.should_stop:
            return epoch
    return len(accuracies)


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])
@pytest.mark.parametrize(("epochs", "warmup"), [(10, 1), (3, 1), (20, 2.5), (6, 0), (2, 0.5)])
def test_the_first_counted_epoch_is_the_first_to_end_at_half_the_peak_lr_or_below(scheduler, epochs, warmup):
    params = TrainParams(epochs=epochs, warmup_epochs=warmup, scheduler=scheduler)
    lrs = lr_at_end_of_each_epoch(params, STEPS)
    first = first_patience_epoch(params, STEPS)
    assert lrs[first] <= PATIENCE_LR_FRACTION
    warmup_steps = round(warmup * STEPS)
    for epoch, lr in enumerate(lrs[:first]):
        still_rising = (epoch + 1) * STEPS - 1 < warmup_steps
        assert still_rising or lr > PATIENCE_LR_FRACTION, f"epoch {epoch + 1} decayed to {lr:.3f}, not counted"
    assert lrs.index(max(lrs)) < first  # counting starts after the peak, in the decay


def test_the_default_recipe_no_longer_stops_at_epoch_5_after_a_best_epoch_2():
    """The reported run: best val accuracy at epoch 2, three flat epochs, stopped at 5 of 10 near the peak LR."""
    params = TrainParams(epochs=10)  # the default then; the schedule and patience defaults are unchanged
    assert (params.warmup_epochs, params.early_stopping_patience) == (1.0, 3)
    counts_from = 1 + first_patience_epoch(params, STEPS)
    flat_after_epoch_2 = [0.85, 0.88, 0.87, 0.88, 0.86, 0.87, 0.87, 0.86, 0.88, 0.88]

    old_rule = EarlyStopping(3, counts_from=1)  # before: every epoch after the (absent) unfreezing counted
    assert replay(old_rule, flat_after_epoch_2) == 5

    stopper = EarlyStopping(3, counts_from=counts_from)
    assert counts_from == 6  # epochs 6..10 end at <= half the peak LR; 1..5 do not
    assert replay(stopper, flat_after_epoch_2) == 8  # still stops a run that has stopped learning
    assert stopper.best_epoch == 2 and stopper.bad_epochs == 3

    late_gain = [0.85, 0.88, 0.87, 0.88, 0.86, 0.87, 0.89, 0.89, 0.90, 0.91]  # what annealing usually brings
    stopper = EarlyStopping(3, counts_from=counts_from)
    assert replay(stopper, late_gain) == 10 and stopper.best_epoch == 10


def test_patience_counts_stalls_from_counts_from_only_and_resets_on_improvement():
    stopper = EarlyStopping(2, counts_from=3)
    assert stopper.update(1, 0.5, 1.0) and stopper.bad_epochs == 0
    assert not stopper.update(2, 0.4, 1.0) and stopper.bad_epochs == 0  # before counts_from: not counted
    assert not stopper.update(3, 0.4, 1.0) and stopper.bad_epochs == 1
    assert stopper.update(4, 0.5, 0.9) and stopper.bad_epochs == 0  # same accuracy, lower loss: better
    stopper.update(5, 0.5, 0.9)
    assert not stopper.should_stop
    stopper.update(6, 0.1, 2.0)
    assert stopper.should_stop and stopper.best_epoch == 4
    assert not EarlyStopping(None, counts_from=1, bad_epochs=99).should_stop
