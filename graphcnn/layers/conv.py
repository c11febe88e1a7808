"""Convolution, 1D/2D/3D.

Shape rule per spatial axis: out = floor((L + pad_begin + pad_end - dilation*(kernel-1) - 1)
/ stride) + 1 (see spatial.py for the padding modes). Channels: C_in -> `channels`, with C_in
and `channels` both divisible by `groups`. Parameters: weight [C_out, C_in/groups, *kernel] and
bias [C_out]: C_in/groups * C_out * prod(kernel) + C_out.
Circular padding wraps the input around, so a stride-1 circular conv is the circulant-matrix
product C(w)x of the chapter (and equals a product of Fourier transforms).
"""
from __future__ import annotations

from fractions import Fraction
from typing import ClassVar, Literal

from ..errors import ShapeError
from .base import Layer, Param, Shape, Window, fmt_shape, need_rank, product, register
from .spatial import PadSpec, onnx_pads, per_axis, resolve_pads, window_output


class ConvBase(Layer):
    dims: ClassVar[int]
    channels: int
    kernel: int | list[int]
    stride: int | list[int] = 1
    dilation: int | list[int] = 1
    groups: int = 1
    bias: bool = True
    padding: PadSpec = "valid"

    def geometry(self):
        """(kernel, stride, dilation) as per-axis tuples."""
        return (per_axis(self.kernel, self.dims, "kernel"), per_axis(self.stride, self.dims, "stride"),
                per_axis(self.dilation, self.dims, "dilation"))

    def pads(self, shape: Shape) -> list[tuple[int, int]]:
        k, s, d = self.geometry()
        return resolve_pads(self.padding, shape[1:], k, s, d)

    def check_channels(self, c_in: int) -> None:
        if self.channels < 1 or self.groups < 1:
            raise ShapeError("channels and groups must be positive",
                             received=f"channels={self.channels}, groups={self.groups}")
        if c_in % self.groups or self.channels % self.groups:
            raise ShapeError(f"groups={self.groups} must divide the input and output channels",
                             expected=f"channels divisible by {self.groups}",
                             received=f"C_in={c_in}, C_out={self.channels}")

    def infer(self, shapes: list[Shape]) -> Shape:
        x = shapes[0]
        need_rank(self, x, (self.dims + 1,), f"a {self.dims}D input")
        self.check_channels(x[0])
        k, s, d = self.geometry()
        if min(k + s + d) < 1:
            raise ShapeError("kernel, stride and dilation must be at least 1",
                             received=f"kernel={list(k)}, stride={list(s)}, dilation={list(d)}")
        pads = self.pads(x)
        if self.padding == "circular" and any(b > L or e > L for (b, e), L in zip(pads, x[1:])):
            raise ShapeError("circular padding wraps at most once around the input",
                             expected="dilation*(kernel-1) <= 2 * input length",
                             received=fmt_shape(x))
        return (self.channels, *window_output(self.op_name, x, k, s, d, pads))

    def params(self, shapes: list[Shape]) -> dict[str, Param]:
        k, _, _ = self.geometry()
        fan_in = shapes[0][0] // self.groups * product(k)
        out = {"weight": Param((self.channels, shapes[0][0] // self.groups, *k), "he", fan_in)}
        if self.bias:
            out["bias"] = Param((self.channels,))
        return out

    def macs(self, shapes: list[Shape], out: Shape) -> int:
        k, _, _ = self.geometry()
        return product(out) * (shapes[0][0] // self.groups) * product(k)

    def window(self, shapes: list[Shape]) -> Window:
        k, s, d = self.geometry()
        return Window(tuple(dd * (kk - 1) + 1 for kk, dd in zip(k, d)), tuple(map(Fraction, s)))

    def lower(self, g, xs, shapes, out):
        k, s, d = self.geometry()
        pads = self.pads(shapes[0])
        x = xs[0]
        if self.padding == "circular":
            x, pads = wrap_pad(g, x, shapes[0], pads), [(0, 0)] * self.dims
        inputs = [x, g.param("weight")] + ([g.param("bias")] if self.bias else [])
        return g.op("Conv", inputs, kernel_shape=list(k), strides=list(s), dilations=list(d),
                    pads=onnx_pads(pads), group=self.groups)


def wrap_pad(g, x: str, shape: Shape, pads: list[tuple[int, int]]) -> str:
    """Circular padding as Slice + Concat per axis: portable to every ONNX host."""
    for axis, ((begin, end), length) in enumerate(zip(pads, shape[1:]), start=2):
        parts = []
        if begin:
            parts.append(g.op("Slice", [x, g.ints([length - begin]), g.ints([length]), g.ints([axis])]))
        parts.append(x)
        if end:
            parts.append(g.op("Slice", [x, g.ints([0]), g.ints([end]), g.ints([axis])]))
        if len(parts) > 1:
            x = g.op("Concat", parts, axis=axis)
    return x


@register
class Conv1d(ConvBase):
    """1D convolution over [N, C, L]."""
    op: Literal["conv1d"] = "conv1d"
    dims: ClassVar[int] = 1


@register
class Conv2d(ConvBase):
    """2D convolution over [N, C, H, W]."""
    op: Literal["conv2d"] = "conv2d"
    dims: ClassVar[int] = 2


@register
class Conv3d(ConvBase):
    """3D convolution over [N, C, D, H, W]."""
    op: Literal["conv3d"] = "conv3d"
    dims: ClassVar[int] = 3
