"""Max and average pooling (1D/2D/3D) and global pooling.

Shape rule per spatial axis as for convolution (spatial.py), with the stride defaulting to the
kernel; with ceil_mode the division rounds up, but a last window starting in the end padding is
dropped. Average pooling divides by the number of input (not padding) positions unless
`count_include_pad`. Global pooling reduces every spatial axis: [N, C, ...] -> [N, C] (or
[N, C, 1, ...] with `keepdims`). No parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar, Literal, Union

import numpy as np

from ..errors import CompileError, ShapeError
from .base import GLOBAL, Layer, Shape, Window, need_rank, product, register
from .spatial import (even_pads, onnx_pads, per_axis, resolve_pads, torch_pads, window_output,
                      window_transpose)

PoolPad = Union[Literal["valid", "same"], int, list[int], list[list[int]]]


class PoolBase(Layer):
    dims: ClassVar[int]
    draw_family: ClassVar[str] = "pool"
    onnx_op: ClassVar[str]
    kernel: int | list[int]
    stride: int | list[int] | None = None
    padding: PoolPad = "valid"
    ceil_mode: bool = False

    def geometry(self):
        k = per_axis(self.kernel, self.dims, "kernel")
        s = per_axis(self.stride, self.dims, "stride") if self.stride is not None else k
        return k, s, (1,) * self.dims

    def blocked(self, node, inputs, block):
        """onnxruntime pools 2D maps of whole blocks of channels in the blocked layout."""
        return self.dims == 2 and node.in_shapes[0][0] % block == 0

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
        pads, ceil = self.pads(shape), self.ceil_mode
        if self.drops_last_window(shape):
            pads, ceil = floor_pads(self, shape, self.infer([shape])), False
        return dict(kernel_shape=list(k), strides=list(s), pads=onnx_pads(pads),
                    ceil_mode=int(ceil))

    def drops_last_window(self, shape: Shape) -> bool:
        """ceil_mode, and its last window would start in the end padding: this pool drops that
        window (as PyTorch and onnxruntime at opset 22+ do), but ONNX's rule before opset 22
        keeps it. Such a pool is lowered in floor mode with the end padding grown to give the
        same windows, so the model means the same at every opset (and on every host)."""
        return self.dropped_window_axis(shape) is not None

    def dropped_window_axis(self, shape: Shape) -> int | None:
        """The first spatial axis whose last ceil_mode window would start in the end padding."""
        if not self.ceil_mode:
            return None
        k, s, _ = self.geometry()
        for axis, (n, kk, ss, (b, e)) in enumerate(zip(shape[1:], k, s, self.pads(shape))):
            if -(-(n + b + e - kk) // ss) * ss >= n + b:
                return axis
        return None

    def lower(self, g, xs, shapes, out):
        return g.op(self.onnx_op, [xs[0]], **self.attrs(shapes[0]))

    def torch_window(self, emit, k, s) -> tuple:
        """kernel and stride as the spec wrote them (the stride defaults to the kernel)."""
        return emit.axes(k, self.kernel), emit.axes(s, self.stride or self.kernel)

    def torch_padding(self, shape: Shape):
        """The padding a torch pool takes itself (both ends alike, at most half the kernel),
        or None."""
        k, pads = self.geometry()[0], self.pads(shape)
        if even_pads(pads) and all(2 * b <= kk for (b, _), kk in zip(pads, k)):
            return [b for b, _ in pads]
        return None


@dataclass(frozen=True)
class PoolIndices:
    """A max pool's argmax Indices output (flat over N, C and space), kept for a maxunpool that
    reads it and for the pool's own backward rule."""

    value: str


class MaxPoolBase(PoolBase):
    onnx_op: ClassVar[str] = "MaxPool"

    def lower(self, g, xs, shapes, out):
        return self.emit(g, xs[0], self.attrs(shapes[0]))

    def lower_portable(self, g, xs, shapes, out):
        """Max pooling pads with -inf implicitly: larger end pads and floor mode are exact, and
        the Indices (for an unpool) still count over the unpadded input."""
        k, s, _ = self.geometry()
        pads = onnx_pads(floor_pads(self, shapes[0], out))
        return self.emit(g, xs[0], dict(kernel_shape=list(k), strides=list(s), pads=pads,
                                        ceil_mode=0))

    def emit(self, g, x: str, attrs: dict) -> str:
        """With a maxunpool (or the backward rule) reading this pool, also emit the argmax
        Indices and keep them."""
        if not g.wants(PoolIndices):
            return g.op("MaxPool", [x], **attrs)
        y, indices = g.op("MaxPool", [x], outputs=2, **attrs)
        g.keep(PoolIndices(indices))
        return y

    def lower_train(self, g, xs, shapes, out):
        g.want(g.node_id, PoolIndices)
        return self.lower(g, xs, shapes, out)

    def kept_bytes(self, node, kind):
        """The Indices: one int64 per output element."""
        return 8 * product(node.shape)

    def torch(self, node, emit):
        """F.max_poolNd (with its indices when a maxunpool reads them); padding it cannot
        take is -inf padded first, the end grown so that floor mode gives the same windows."""
        k, s, _ = self.geometry()
        fn, padding = f"F.max_pool{self.dims}d", self.torch_padding(node.in_shapes[0])
        if padding is not None:
            if emit.wants(PoolIndices):
                emit.keep(PoolIndices)
            return emit.call(fn, emit.x, *self.torch_window(emit, k, s),
                             padding=emit.opt(emit.axes(padding, self.padding), 0),
                             ceil_mode=emit.opt(self.ceil_mode, False),
                             return_indices=emit.opt(emit.wants(PoolIndices), False))
        if emit.wants(PoolIndices):  # indices into the padded input would not fit an unpool
            raise CompileError("a maxunpool reads this max pool's indices, and PyTorch's max "
                               "pool pads both ends alike by at most half the kernel",
                               received=str(self.pads(node.in_shapes[0])),
                               hint="pad evenly, at most kernel // 2, for export-torch")
        grown = floor_pads(self, node.in_shapes[0], node.shape)
        x = emit.call("F.pad", emit.x, torch_pads(grown), value=emit.code("-math.inf"))
        return emit.call(fn, x, *self.torch_window(emit, k, s))

    def vjp(self, g, xs, shapes, out, y, dy):
        """Each output's gradient added at its argmax (ScatterElements with add, not MaxUnpool,
        which overwrites where windows overlap). Indices count over the flattened input."""
        return [scatter_add(g, shapes[0], g.kept(PoolIndices).value, dy)], {}


def floor_pads(layer, shape, out) -> list[tuple[int, int]]:
    """Padding that makes floor mode give `out`'s window count: the end padding grows by the
    overhang of the last window (never to the kernel size: that window starts before the end
    padding, the drop rule)."""
    k, s, _ = layer.geometry()
    pads = layer.pads(shape)
    return [(b, max(e, (n - 1) * ss + kk - L - b))
            for L, n, kk, ss, (b, e) in zip(shape[1:], out[1:], k, s, pads)]


def scatter_add(g, shape, indices: str, dy: str) -> str:
    """dY added at the flat indices into zeros shaped [N, *shape]. The zeros are dY's first
    element times 0, expanded: zeros of a fixed shape (ConstantOfShape) are what onnxruntime
    folds into a constant the size of the pool's input, which each session of the step then
    holds (16 MiB for ResNet-18's stem at 64x64, batch 64: docs/benchmarks.md, Training
    memory); taken from dY, they also have its element type (a NaN or inf there spreads to
    the whole input gradient, in a step whose gradients hold one anyway)."""
    flat_dy = g.op("Reshape", [dy, g.ints([-1])])
    zero = g.op("Mul", [g.op("Slice", [flat_dy, g.ints([0]), g.ints([1])]), g.scalar(0.0)])
    rows = g.op("Slice", [g.op("Shape", [dy]), g.ints([0]), g.ints([1])])
    zeros = g.op("Expand", [zero, g.op("Mul", [rows, g.ints([product(shape)])])])
    added = g.op("ScatterElements", [zeros, g.op("Reshape", [indices, g.ints([-1])]), flat_dy],
                 axis=0, reduction="add")
    return g.op("Reshape", [added, g.ints([-1, *shape])])


class AvgPoolBase(PoolBase):
    onnx_op: ClassVar[str] = "AveragePool"
    count_include_pad: bool = False

    def attrs(self, shape: Shape) -> dict:
        return {**super().attrs(shape), "count_include_pad": int(self.count_include_pad)}

    def torch(self, node, emit):
        """F.avg_poolNd; padding it cannot take goes through avg_pool_padded (zeros padded
        first, each window divided by the positions it counts)."""
        k, s, _ = self.geometry()
        shape, padding = node.in_shapes[0], self.torch_padding(node.in_shapes[0])
        if padding is not None:
            return emit.call(f"F.avg_pool{self.dims}d", emit.x, *self.torch_window(emit, k, s),
                             padding=emit.opt(emit.axes(padding, self.padding), 0),
                             ceil_mode=emit.opt(self.ceil_mode, False),
                             count_include_pad=self.count_include_pad)
        helper = emit.helper("avg_pool_padded", AVG_POOL_PADDED)
        grown = floor_pads(self, shape, node.shape)
        return emit.call(helper, emit.x, *self.torch_window(emit, k, s),
                         torch_pads(self.pads(shape)), torch_pads(grown), self.count_include_pad)

    def lower(self, g, xs, shapes, out):
        # Grown end padding would change count_include_pad's divisors: pad explicitly instead
        if self.count_include_pad and self.drops_last_window(shapes[0]):
            return self.lower_padded(g, xs, shapes, out)
        return super().lower(g, xs, shapes, out)

    def lower_portable(self, g, xs, shapes, out):
        """Explicit zero padding and a divisor fix: the same divisors on every host."""
        return self.lower_padded(g, xs, shapes, out)

    def lower_padded(self, g, xs, shapes, out):
        """Explicit zero Pad, then AveragePool with no padding at all (every window full, so the
        divisor is the kernel size on every host), times prod(kernel) / the true divisor."""
        k, s, _ = self.geometry()
        pads = floor_pads(self, shapes[0], out)
        padded = g.op("Pad", [xs[0], g.ints([0, 0, *(b for b, _ in pads), 0, 0,
                                             *(e for _, e in pads)]), g.scalar(0.0)],
                      mode="constant")
        y = g.op("AveragePool", [padded], kernel_shape=list(k), strides=list(s))
        fix = float(np.prod(k)) / self.counts(shapes[0], out)
        if np.all(fix == 1):
            return y
        return g.op("Mul", [y, g.array("divisor_fix", fix.astype(np.float32))])

    def vjp(self, g, xs, shapes, out, y, dy):
        """Each output's gradient divided by its window's count, spread evenly over the window:
        a depthwise ConvTranspose with a ones kernel, cut or padded back to the input size."""
        k, s, _ = self.geometry()
        shape, pads = shapes[0], self.pads(shapes[0])
        scaled = g.op("Div", [dy, g.array("window_count", self.counts(shape, out))])
        ones = g.array("ones", np.ones((shape[0], 1, *k), np.float32))
        return [window_transpose(g, scaled, ones, kernel=k, strides=s, dilations=[1] * len(k),
                                 begins=[b for b, _ in pads], out=out[1:], sizes=shape[1:],
                                 groups=shape[0])], {}

    def counts(self, shape: Shape, out: Shape) -> np.ndarray:
        """Divisor per output window: its input positions, or with count_include_pad its
        positions inside the padded input (a ceil_mode window may reach past even that)."""
        k, s, _ = self.geometry()
        grid = np.ones((1,), np.float32)
        for n, m, kk, ss, (b, e) in zip(shape[1:], out[1:], k, s, self.pads(shape)):
            start = np.arange(m) * ss - b
            low, high = (-b, n + e) if self.count_include_pad else (0, n)
            axis = np.minimum(start + kk, high) - np.maximum(start, low)
            grid = np.multiply.outer(grid, axis.astype(np.float32))
        return grid.reshape((1, 1, *out[1:]))


AVG_POOL_PADDED = '''
def avg_pool_padded(x, kernel, stride, pads, grown, count_include_pad):
    """Average pooling with padding torch's pools do not take (uneven, or over half the
    kernel): zeros padded by `grown` (`pads` with the end grown so that floor mode gives the
    windows), each window's sum divided by its input positions, or with count_include_pad
    by its positions inside the input padded by `pads`."""
    pool = getattr(F, f"avg_pool{x.dim() - 2}d")
    counted, rest = torch.ones_like(x[:1, :1]), grown
    if count_include_pad:
        counted = F.pad(counted, pads, value=1.0)
        rest = [g - p for g, p in zip(grown, pads)]
    return pool(F.pad(x, grown), kernel, stride) / pool(F.pad(counted, rest), kernel, stride)
'''


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
    draw_family: ClassVar[str] = "pool"
    keepdims: bool = False

    def infer(self, shapes: list[Shape]) -> Shape:
        x = shapes[0]
        need_rank(self, x, (2, 3, 4), "a 1D, 2D or 3D input")
        return (x[0], *([1] * (len(x) - 1))) if self.keepdims else (x[0],)

    def window(self, shapes):
        return GLOBAL

    def blocked(self, node, inputs, block):
        """onnxruntime pools a blocked 2D map of whole blocks of channels as it is."""
        shape = node.in_shapes[0]
        return inputs[0] and len(shape) == 3 and shape[0] % block == 0

    def lower(self, g, xs, shapes, out):
        y = g.op(self.onnx_op, [xs[0]])
        return y if self.keepdims else g.op("Flatten", [y], axis=1)

    def torch(self, node, emit):
        axes = tuple(range(2, len(node.in_shapes[0]) + 1))
        method = "mean" if self.onnx_op == "GlobalAveragePool" else "amax"
        return emit.call(emit.x + f".{method}", axes, keepdim=emit.opt(self.keepdims, False))

    def spread(self, g, x: str, shape: Shape, dy: str) -> str:
        """dy [N, C] or [N, C, 1, ...] broadcast to x's shape."""
        per_channel = g.op("Reshape", [dy, g.ints([0, shape[0], *[1] * (len(shape) - 1)])])
        return g.op("Expand", [per_channel, g.op("Shape", [x])])


@register
class GlobalAvgPool(GlobalPoolBase):
    """Mean over all spatial positions: [N, C, ...] -> [N, C]."""
    op: Literal["global_avgpool"] = "global_avgpool"
    onnx_op: ClassVar[str] = "GlobalAveragePool"

    def vjp(self, g, xs, shapes, out, y, dy):
        size = float(np.prod(shapes[0][1:]))
        return [g.op("Mul", [self.spread(g, xs[0], shapes[0], dy), g.scalar(1 / size)])], {}


@register
class GlobalMaxPool(GlobalPoolBase):
    """Maximum over all spatial positions: [N, C, ...] -> [N, C]."""
    op: Literal["global_maxpool"] = "global_maxpool"
    onnx_op: ClassVar[str] = "GlobalMaxPool"

    def vjp(self, g, xs, shapes, out, y, dy):
        """The gradient goes to the maximum's position (to every tied one, which float inputs
        make rare; PyTorch picks one)."""
        at_max = g.op("Equal", [xs[0], self.spread(g, xs[0], shapes[0], y)])
        mask = g.op("Cast", [at_max], to=g.FLOAT)
        return [g.op("Mul", [mask, self.spread(g, xs[0], shapes[0], dy)])], {}
