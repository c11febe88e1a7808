"""Stochastic depth (drop_path): the output shape is the input shape, no parameters.

Dropout itself lives with the activations (activation.py); both draw their training masks
from activation.hashed_uniform, a function of (training step, node id, index) only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from .activation import hashed_uniform
from .base import Layer, register


@register
class DropPath(Layer):
    """Stochastic depth, as torchvision.ops.StochasticDepth(p=rate, mode="row"): in training
    each sample of the batch is zeroed whole with probability `rate` and the survivors are
    scaled by 1/(1 - rate) (at rate 1 every sample is zeroed, unscaled, as torchvision); the
    identity at inference. Sample n's mask is a function of (training step, node id, n): the
    same run gives the same masks on every host and after a resume. Shape rule: out = in.
    Backward: dx = dy times the same per-sample mask."""
    op: Literal["drop_path"] = "drop_path"
    rate: float = Field(ge=0, le=1)

    def lower(self, g, xs, shapes, out):
        return g.op("Identity", xs)

    def lower_train(self, g, xs, shapes, out):
        if self.rate == 0:
            return g.op("Identity", xs)
        batch = g.op("Squeeze", [g.op("Shape", xs, start=0, end=1)])
        uniform = hashed_uniform(g, batch)
        keep = g.op("Cast", [g.op("GreaterOrEqual", [uniform, g.scalar(self.rate)])], to=g.FLOAT)
        scale = 1 / (1 - self.rate) if self.rate < 1 else 1.0
        per_sample = g.ints([-1] + [1] * len(shapes[0]))
        mask = g.op("Reshape", [g.op("Mul", [keep, g.scalar(scale)]), per_sample])
        g.keep(DropPathMask(mask))
        return g.op("Mul", [xs[0], mask])

    def vjp(self, g, xs, shapes, out, y, dy):
        if self.rate == 0:  # no mask was made: the identity
            return [dy], {}
        return [g.op("Mul", [dy, g.kept(DropPathMask).value])], {}


@dataclass(frozen=True)
class DropPathMask:
    """The training forward's [N, 1, ...] sample mask, scaled by 1/(1 - rate), for the vjp."""

    value: str
