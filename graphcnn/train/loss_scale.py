"""Dynamic loss scaling inside the fp16 training step, as torch.cuda.amp.GradScaler does it.

fp16 gradients below 2^-24 flush to zero, so the backward pass is seeded with the loss's
gradient times a scale (carried tensor `amp.scale`, 2^16 at the start) and every parameter
gradient is divided by it again, in fp32, before the optimizer sees it. A step whose gradients
hold an inf or a NaN (the scale was too large) changes no parameter and no optimizer state
(a Where on one flag), halves the scale and reports `skipped` = 1; after `window` steps in a
row without one (`amp.good` counts them) the scale doubles. Batchnorm running statistics move
either way, as under torch's scaler (the forward pass updated them). As under torch, a skipped
step does not advance Adam's bias correction (the loop feeds the applied steps: loop.run_epoch).
A run resumed in another precision drops the scale or starts a fresh one
(loop.resume_checkpoint).
"""
from __future__ import annotations

import numpy as np

from .autodiff import TrainEmitter

SCALE, GOOD = "amp.scale", "amp.good"
STATE = (SCALE, GOOD)  # carried like optimizer state, and kept in checkpoints
# [1], not scalars: the loop uploads its tensors through np.ascontiguousarray, which makes a
# 0-d array 1-d (and the checkpoint would then disagree with the step)
SHAPE = (1,)
INITIAL = {SCALE: 2.0 ** 16, GOOD: 0.0}


def initial_values() -> dict[str, np.ndarray]:
    return {name: np.full(SHAPE, value, np.float32) for name, value in INITIAL.items()}


def scale_seeds(g: TrainEmitter, seeds: dict[str, str]) -> dict[str, str]:
    """The backward pass's seeds (d loss / d value) times the scale."""
    g.begin("amp", "scale/")
    return {value: g.op("Mul", [grad, SCALE]) for value, grad in seeds.items()}


def unscale(g: TrainEmitter, grads: dict[str, str]) -> tuple[dict[str, str], str]:
    """(the gradients divided by the scale, a bool scalar: all of them finite). A sum is inf
    or NaN when any element is, and the fp32 sum of fp16-sized values cannot overflow."""
    g.begin("amp", "unscale/")
    inverse = g.op("Reciprocal", [SCALE])
    plain = {name: g.op("Mul", [grad, inverse]) for name, grad in grads.items()}
    sums = [g.op("ReduceSum", [v], keepdims=0) for v in plain.values()]
    if not sums:
        return plain, g.op("Cast", [g.scalar(1.0)], to=g.BOOL)  # nothing to check: finite
    total = sums[0] if len(sums) == 1 else g.op("Sum", sums)
    bad = g.op("Or", [g.op("IsInf", [total]), g.op("IsNaN", [total])])
    return plain, g.op("Not", [bad])


def keep_if_skipped(g: TrainEmitter, new: dict[str, str], names: list[str],
                    finite: str) -> dict[str, str]:
    """`new` with each of `names` (parameters, optimizer state) kept as it was unless finite."""
    g.begin("amp", "guard/")
    return {**new, **{n: g.op("Where", [finite, new[n], n]) for n in names if new[n] != n}}


def next_scale(g: TrainEmitter, finite: str, window: int) -> tuple[dict[str, str], str]:
    """({amp.scale: new, amp.good: new}, int64 `skipped`): torch's _amp_update_scale_ with
    growth 2, backoff 0.5; a doubled scale that would be inf is not taken."""
    g.begin("amp", "update_scale/")
    zero, one = g.scalar(0.0), g.scalar(1.0)
    good = g.op("Where", [finite, g.op("Add", [GOOD, one]), zero])
    grow = g.op("GreaterOrEqual", [good, g.scalar(float(window))])
    doubled = g.op("Mul", [SCALE, g.scalar(2.0)])
    grown = g.op("Where", [g.op("IsInf", [doubled]), SCALE, doubled])
    kept = g.op("Where", [grow, grown, SCALE])
    scale = g.op("Where", [finite, kept, g.op("Mul", [SCALE, g.scalar(0.5)])])
    skipped = g.op("Cast", [g.op("Not", [finite])], to=g.INT64)
    return {SCALE: scale, GOOD: g.op("Where", [grow, zero, good])}, skipped
