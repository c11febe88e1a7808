"""Stochastic depth (drop_path) and channel dropout (dropout1d/2d/3d): the output shape is
the input shape, no parameters.

Dropout itself lives with the activations (activation.py); all are activation.RandomMask,
whose training masks are a function of (training step, node id, index) only.
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .activation import RandomMask
from .base import Shape, need_rank, register


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

    def torch(self, node, emit):
        helper = emit.helper("stochastic_depth", STOCHASTIC_DEPTH)
        return emit.call(helper, emit.x, self.rate, emit.code("self.training"))


STOCHASTIC_DEPTH = '''
def stochastic_depth(x, rate, training):
    """torchvision's StochasticDepth (mode "row"): in training each sample is zeroed whole
    with probability `rate`, the rest scaled by 1 / (1 - rate); the identity at inference."""
    if not training or rate == 0:
        return x
    keep = x.new_empty([x.shape[0]] + [1] * (x.dim() - 1)).bernoulli_(1 - rate)
    return x * keep / (1 - rate) if rate < 1 else x * keep
'''


class ChannelDropout(RandomMask):
    """Channel dropout, as torch.nn.Dropout1d/2d/3d: in training each channel of each sample
    (a whole feature map) is zeroed with probability `rate` and the kept ones are scaled by
    1/(1 - rate); the identity at inference. Map (n, c)'s mask is a function of (training
    step, node id, n * C + c). Shape rule: out = in, which must be [N, C, *spatial] with
    `spatial_rank` spatial axes. Backward: dx = dy times the same mask."""
    rate: float = Field(0.5, ge=0, lt=1)  # at 1 every map drops and the rest scale by 1/0
    spatial_rank: ClassVar[int]

    def infer(self, shapes: list[Shape]) -> Shape:
        need_rank(self, shapes[0], (self.spatial_rank + 1,),
                  "an input with channels and spatial axes")
        return shapes[0]

    def mask_layout(self, g, xs, shapes):
        """One draw per (sample, channel), the mask shaped [N, C, 1, ...]."""
        count = g.op("ReduceProd", [g.op("Shape", xs, start=0, end=2)], keepdims=0)
        return count, g.ints([-1, shapes[0][0]] + [1] * self.spatial_rank)

    def torch(self, node, emit):
        fn = f"F.dropout{self.spatial_rank}d"
        return emit.call(fn, emit.x, self.rate, emit.code("self.training"))


@register
class Dropout1d(ChannelDropout):
    """Channel dropout of [N, C, L] (torch.nn.Dropout1d)."""
    op: Literal["dropout1d"] = "dropout1d"
    spatial_rank: ClassVar[int] = 1


@register
class Dropout2d(ChannelDropout):
    """Channel dropout of [N, C, H, W] (torch.nn.Dropout2d)."""
    op: Literal["dropout2d"] = "dropout2d"
    spatial_rank: ClassVar[int] = 2


@register
class Dropout3d(ChannelDropout):
    """Channel dropout of [N, C, D, H, W] (torch.nn.Dropout3d)."""
    op: Literal["dropout3d"] = "dropout3d"
    spatial_rank: ClassVar[int] = 3
