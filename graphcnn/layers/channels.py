"""Channel-wise ops: a learned per-channel scale, splitting the channels into parts, and
ShuffleNet's channel shuffle. Inputs are channels first, [N, C] or [N, C, *spatial].

- scale: y = x * gamma, gamma [C] broadcast along every axis but the channels (ConvNeXt's
  layer scale). C parameters, all `init` at first.
- split / chunk: one node with several outputs, its parts. A split node `s` makes the nodes
  `s.0`, `s.1`, ... (Layer.parts; spec expansion creates them), each the slice of the
  channels that torch.split / torch.chunk returns at that index; later nodes name a part in
  `inputs:` (`s.1`), and naming `s` alone is an error that lists the parts. A part's output
  is [N, size, *spatial]; no parameters, no MACs; backward: the part's gradient padded with
  zeros to all C channels (the parts' gradients add up to the input's; an unused part adds
  nothing).
- channel_shuffle: torchvision's channel_shuffle, output channel j * g + i = input channel
  i * (C / g) + j.
"""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import Field, PrivateAttr

from ..errors import ShapeError
from .base import Layer, Param, Shape, fmt_shape, register

CHANNEL_AXIS = [1]


def channel_vector(g, v: str, shape: Shape) -> str:
    """A [C] vector shaped [C, 1, ...] to broadcast over [N, C, *spatial]."""
    if len(shape) == 1:
        return v
    return g.op("Reshape", [v, g.ints([-1] + [1] * (len(shape) - 1))])


def all_but_channels(shape: Shape) -> list[int]:
    return [0, *range(2, len(shape) + 1)]


@register
class Scale(Layer):
    """y = x * gamma per channel, gamma [C] (ConvNeXt's layer scale); shape unchanged.

    `init` is gamma's starting value. torch has no default; ours is 1.0 (the layer starts as
    the identity); ConvNeXt passes 1e-6.
    """
    op: Literal["scale"] = "scale"
    draw_family: ClassVar[str] = "norm"
    in_place: ClassVar[bool] = True
    init: float = Field(1.0, allow_inf_nan=False)

    def params(self, shapes: list[Shape]) -> dict[str, Param]:
        return {"weight": Param((shapes[0][0],), self.init)}

    def lower(self, g, xs, shapes, out):
        return g.op("Mul", [xs[0], channel_vector(g, g.param("weight"), shapes[0])])

    def torch(self, node, emit):
        scale = emit.module(emit.helper("Scale", SCALE), node.in_shapes[0][0],
                            init=emit.opt(self.init, 1.0))
        return emit.call(scale, emit.x)

    def vjp(self, g, xs, shapes, out, y, dy):
        """dx = dy * gamma; dgamma = the sum of dy * x over every axis but the channels."""
        dx = g.op("Mul", [dy, channel_vector(g, g.param("weight"), shapes[0])])
        dw = g.op("ReduceSum", [g.op("Mul", [dy, xs[0]]), g.ints(all_but_channels(shapes[0]))],
                  keepdims=0)
        return [dx], {"weight": dw}


class ChannelParts(Layer):
    """What split and chunk share: parts `<id>.k`, each the channels [start, stop) of part k."""
    draw_family: ClassVar[str] = "dense"
    _part: int | None = PrivateAttr(None)  # set on the layer of each part node by parts()

    def count(self) -> int:
        """How many parts the spec asks for."""
        raise NotImplementedError

    def bounds(self, channels: int) -> list[tuple[int, int]]:
        """(start, stop) of each part for this many input channels, or a ShapeError."""
        raise NotImplementedError

    def parts(self) -> list[Layer]:
        if self._part is not None:
            return []
        return [self.at_part(k) for k in range(self.count())]

    def at_part(self, k: int) -> "ChannelParts":
        part = self.model_copy()
        part._part = k
        return part

    def span(self, shape: Shape) -> tuple[int, int]:
        if self._part is None:  # expansion replaced the node by its parts
            raise ShapeError(f"{self.op_name} is read through its parts `<id>.0`, `<id>.1`, ...")
        spans = self.bounds(shape[0])
        if self._part >= len(spans):
            raise ShapeError(f"{self.op_name} part {self._part} is empty: torch.chunk makes "
                             f"{len(spans)} parts of {spans[0][1]} channels from {shape[0]}",
                             expected=f"at most {len(spans)} chunks", received=str(self.count()),
                             hint="use split with explicit sizes, or fewer chunks")
        return spans[self._part]

    def infer(self, shapes: list[Shape]) -> Shape:
        start, stop = self.span(shapes[0])
        return (stop - start, *shapes[0][1:])

    def lower(self, g, xs, shapes, out):
        start, stop = self.span(shapes[0])
        return g.op("Slice", [xs[0], g.ints([start]), g.ints([stop]), g.ints(CHANNEL_AXIS)])

    def torch(self, node, emit):
        """x.split(sizes, 1)[k] / x.chunk(chunks, 1)[k]: torch's own parts."""
        self.span(node.in_shapes[0])  # refuses a part past the last
        method, arg = self.torch_parts()
        return emit.call(emit.x + method, arg, 1) + f"[{self._part}]"

    def torch_parts(self) -> tuple[str, object]:
        """The tensor method that makes the parts, and its first argument."""
        raise NotImplementedError

    def vjp(self, g, xs, shapes, out, y, dy):
        start, stop = self.span(shapes[0])
        pads = g.ints([start, shapes[0][0] - stop])
        return [g.op("Pad", [dy, pads, "", g.ints(CHANNEL_AXIS)])], {}

    def describe(self) -> str:
        return f"{super().describe()}, part={self._part}"


@register
class Split(ChannelParts):
    """torch.split(x, sizes, dim=1): part k holds channels sum(sizes[:k]) .. sum(sizes[:k+1]);
    the sizes must add up to C. Output of part k: [N, sizes[k], *spatial]."""
    op: Literal["split"] = "split"
    sizes: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)

    def count(self) -> int:
        return len(self.sizes)

    def torch_parts(self):
        return ".split", self.sizes

    def bounds(self, channels: int) -> list[tuple[int, int]]:
        if sum(self.sizes) != channels:
            raise ShapeError("split sizes must add up to the input's channels",
                             expected=f"sizes summing to {channels}",
                             received=f"{self.sizes} (sum {sum(self.sizes)})")
        ends = np.cumsum(self.sizes).tolist()
        return list(zip([0, *ends[:-1]], ends))


@register
class Chunk(ChannelParts):
    """torch.chunk(x, chunks, dim=1): parts of ceil(C / chunks) channels, the last one smaller.
    Output of part k: [N, min(C, (k+1) s) - k s, *spatial] with s = ceil(C / chunks). As in
    torch, C may give fewer parts than `chunks` (C = 5, chunks = 4: 2, 2, 1): a part past the
    last is refused."""
    op: Literal["chunk"] = "chunk"
    chunks: int = Field(ge=1)

    def count(self) -> int:
        return self.chunks

    def torch_parts(self):
        return ".chunk", self.chunks

    def bounds(self, channels: int) -> list[tuple[int, int]]:
        size = -(-channels // self.chunks)
        return [(start, min(start + size, channels)) for start in range(0, channels, size)]


@register
class ChannelShuffle(Layer):
    """torchvision's channel_shuffle: x viewed [N, g, C/g, *spatial], the two channel axes
    swapped, viewed back; so output channel j * g + i is input channel i * (C/g) + j. Shape
    unchanged, C a multiple of g. Lowered as one Gather of the channels in that order (no
    size is written into the model: `--dynamic` works); backward: Gather by the inverse."""
    op: Literal["channel_shuffle"] = "channel_shuffle"
    draw_family: ClassVar[str] = "dense"
    groups: int = Field(ge=1)

    def infer(self, shapes: list[Shape]) -> Shape:
        if shapes[0][0] % self.groups:
            raise ShapeError("channel_shuffle needs channels divisible by groups",
                             expected=f"C a multiple of {self.groups}", received=fmt_shape(shapes[0]))
        return shapes[0]

    def order(self, channels: int) -> np.ndarray:
        """Input channel of each output channel."""
        return np.arange(channels).reshape(self.groups, -1).T.reshape(-1)

    def lower(self, g, xs, shapes, out):
        order = g.array("order", self.order(shapes[0][0]).astype(np.int64))
        return g.op("Gather", [xs[0], order], axis=1)

    def torch(self, node, emit):
        return emit.call(emit.helper("channel_shuffle", CHANNEL_SHUFFLE), emit.x, self.groups)

    def vjp(self, g, xs, shapes, out, y, dy):
        inverse = np.argsort(self.order(shapes[0][0])).astype(np.int64)
        return [g.op("Gather", [dy, g.array("inverse", inverse)], axis=1)], {}


SCALE = '''
class Scale(nn.Module):
    """y = x * weight, one weight per channel (axis 1): ConvNeXt's layer scale."""

    def __init__(self, channels, init=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(init)))

    def forward(self, x):
        return x * self.weight.view(-1, *[1] * (x.dim() - 2))
'''

CHANNEL_SHUFFLE = '''
def channel_shuffle(x, groups):
    """torchvision's channel_shuffle: the channels viewed [groups, C / groups], transposed."""
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)
'''
