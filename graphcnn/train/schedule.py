"""The learning rate of each step, from the recipe's `schedule:` (spec/training.py).

The rate is an input of the compiled training step, so a schedule is a function of the step
number alone, computed here and fed each step: a resumed run continues on the same curve.
Each schedule equals one of PyTorch's (tests/test_train_schedule.py runs them side by side):
step and multistep as StepLR and MultiStepLR stepped once an epoch; cosine as LinearLR warmup
from lr / W to lr over the first W steps, then CosineAnnealingLR(T_max = the remaining steps,
eta_min = min_lr) stepped every step; onecycle as OneCycleLR(max_lr = lr, anneal cos, two
phases) without its momentum cycle (the momentum is compiled into the step).
"""
from __future__ import annotations

import math

from ..spec.training import ScheduleSection


def lr_at(schedule: ScheduleSection, lr: float, step: int, per_epoch: int, epochs: int) -> float:
    """The learning rate of optimizer step `step` (1-based) of a run of `epochs` epochs of
    `per_epoch` steps."""
    t, total = step - 1, per_epoch * epochs
    epoch = t // per_epoch
    kind = schedule.kind
    if kind == "onecycle":
        return one_cycle(schedule, lr, t, total)
    warmup = int(round(schedule.warmup * per_epoch))
    if t < warmup:
        return lr * (t + 1) / warmup
    if kind == "step":
        return lr * schedule.gamma ** (epoch // schedule.step_size)
    if kind == "multistep":
        return lr * schedule.gamma ** sum(epoch >= m for m in schedule.milestones)
    if kind == "cosine":
        span = max(total - warmup, 1)
        return cosine(lr, schedule.min_lr, min(t - warmup, span) / span)
    return lr


def cosine(start: float, end: float, share: float) -> float:
    """From `start` at share 0 to `end` at share 1 along half a cosine."""
    return end + (start - end) * (1 + math.cos(math.pi * share)) / 2


def one_cycle(schedule: ScheduleSection, max_lr: float, t: int, total: int) -> float:
    """torch's OneCycleLR (two phases, cos annealing) at 0-based step t of `total`."""
    initial = max_lr / schedule.div_factor
    final = initial / schedule.final_div_factor
    peak = float(schedule.pct_start * total) - 1
    if t <= peak:
        return cosine(initial, max_lr, t / peak if peak > 0 else 1.0)
    return cosine(max_lr, final, (t - peak) / max(total - 1 - peak, 1e-12))
