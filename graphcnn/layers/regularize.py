"""Stochastic depth (drop_path): the output shape is the input shape, no parameters.

Dropout itself lives with the activations (activation.py); both are activation.RandomMask,
whose training masks are a function of (training step, node id, index) only.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from .activation import RandomMask
from .base import register


@register
class DropPath(RandomMask):
    """Stochastic depth, as torchvision.ops.StochasticDepth(p=rate, mode="row"): in training
    each sample of the batch is zeroed whole with probability `rate` and the survivors are
    scaled by 1/(1 - rate) (at rate 1 every sample is zeroed, unscaled, as torchvision); the
    identity at inference. Sample n's mask is a function of (training step, node id, n): the
    same run gives the same masks on every host and after a resume. Shape rule: out = in.
    Backward: dx = dy times the same per-sample mask."""
    op: Literal["drop_path"] = "drop_path"
    rate: float = Field(ge=0, le=1)

    def mask_layout(self, g, xs, shapes):
        """One draw per sample, the mask shaped [N, 1, ...]."""
        batch = g.op("Squeeze", [g.op("Shape", xs, start=0, end=1)])
        return batch, g.ints([-1] + [1] * len(shapes[0]))
