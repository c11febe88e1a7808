"""Max and average pooling (1D/2D/3D) and global pooling.

Shape rule per spatial axis as for convolution (spatial.py), with the stride defaulting to the
kernel; with ceil_mode the division rounds up, but a last window starting in the end padding is
dropped. Average pooling divides by the number of input (not padding) positions unless
`count_include_pad`. Global pooling reduces every spatial axis: [N, C, ...] -> [N, C] (or
[N, C, 1, ...] with `keepdims`). No parameters.
"""
from __future__ import annotations

from fractions import Fraction
from typing import ClassVar, Literal, Union

from ..errors import ShapeError
from .base import GLOBAL, Layer, Shape, Window, need_rank, register
from .spatial import onnx_pads, per_axis, resolve_pads, window_output

PoolPad = Union[Literal["valid", "same"], int, list[int], list[list[int]]]


class PoolBase(Layer):
    dims: ClassVar[int]
    onnx_op: ClassVar[str]
    kernel: int | list[int]
    stride: int | list[int] | None = None
    padding: PoolPad = "valid"
    ceil_mode: bool = False

    def geometry(self):
        k = per_axis(self.kernel, self.dims, "kernel")
        s = per_axis(self.stride, self.dims, "stride") if self.stride is not None else k
        return k, s, (1,) * self.dims

    def pads(self, shape: Shape):
        k, s, d = self.geometry()
        return resolve_pads(self.padding, shape[1:], k, s, d)

    def infer(self, shapes: list[Shape]) -> Shape:
        x = shapes[0]
        need_rank(self, x, (self.dims + 1,), f"a {self.dims}D input")
        k, s, d = self.geometry()
        if min(k + s) < 1:
            raise ShapeError("kernel and stride must be at least 1",
                             received=f"kernel={list(k)}, stride={list(s)}")
        pads = self.pads(x)
        if any(max(p) >= kk for p, kk in zip(pads, k)):
            raise ShapeError("pooling padding must be smaller than the kernel",
                             expected=f"padding < kernel {list(k)}", received=str(pads))
        return (x[0], *window_output(self.op_name, x, k, s, d, pads, self.ceil_mode))

    def window(self, shapes: list[Shape]) -> Window:
        k, s, _ = self.geometry()
        return Window(k, tuple(map(Fraction, s)))

    def attrs(self, shape: Shape) -> dict:
        k, s, _ = self.geometry()
        return dict(kernel_shape=list(k), strides=list(s), pads=onnx_pads(self.pads(shape)),
                    ceil_mode=int(self.ceil_mode))

    def lower(self, g, xs, shapes, out):
        return g.op(self.onnx_op, [xs[0]], **self.attrs(shapes[0]))


class MaxPoolBase(PoolBase):
    onnx_op: ClassVar[str] = "MaxPool"


class AvgPoolBase(PoolBase):
    onnx_op: ClassVar[str] = "AveragePool"
    count_include_pad: bool = False

    def attrs(self, shape: Shape) -> dict:
        return {**super().attrs(shape), "count_include_pad": int(self.count_include_pad)}


@register
class MaxPool1d(MaxPoolBase):
    """Max pooling over [N, C, L]."""
    op: Literal["maxpool1d"] = "maxpool1d"
    dims: ClassVar[int] = 1


@register
class MaxPool2d(MaxPoolBase):
    """Max pooling over [N, C, H, W]."""
    op: Literal["maxpool2d"] = "maxpool2d"
    dims: ClassVar[int] = 2


@register
class MaxPool3d(MaxPoolBase):
    """Max pooling over [N, C, D, H, W]."""
    op: Literal["maxpool3d"] = "maxpool3d"
    dims: ClassVar[int] = 3


@register
class AvgPool1d(AvgPoolBase):
    """Average pooling over [N, C, L]."""
    op: Literal["avgpool1d"] = "avgpool1d"
    dims: ClassVar[int] = 1


@register
class AvgPool2d(AvgPoolBase):
    """Average pooling over [N, C, H, W]."""
    op: Literal["avgpool2d"] = "avgpool2d"
    dims: ClassVar[int] = 2


@register
class AvgPool3d(AvgPoolBase):
    """Average pooling over [N, C, D, H, W]."""
    op: Literal["avgpool3d"] = "avgpool3d"
    dims: ClassVar[int] = 3


class GlobalPoolBase(Layer):
    onnx_op: ClassVar[str]
    keepdims: bool = False

    def infer(self, shapes: list[Shape]) -> Shape:
        x = shapes[0]
        need_rank(self, x, (2, 3, 4), "a 1D, 2D or 3D input")
        return (x[0], *([1] * (len(x) - 1))) if self.keepdims else (x[0],)

    def window(self, shapes):
        return GLOBAL

    def lower(self, g, xs, shapes, out):
        y = g.op(self.onnx_op, [xs[0]])
        return y if self.keepdims else g.op("Flatten", [y], axis=1)


@register
class GlobalAvgPool(GlobalPoolBase):
    """Mean over all spatial positions: [N, C, ...] -> [N, C]."""
    op: Literal["global_avgpool"] = "global_avgpool"
    onnx_op: ClassVar[str] = "GlobalAveragePool"


@register
class GlobalMaxPool(GlobalPoolBase):
    """Maximum over all spatial positions: [N, C, ...] -> [N, C]."""
    op: Literal["global_maxpool"] = "global_maxpool"
    onnx_op: ClassVar[str] = "GlobalMaxPool"
