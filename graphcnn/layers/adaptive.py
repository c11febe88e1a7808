"""Adaptive average and max pooling (1D/2D/3D), as PyTorch's AdaptiveAvgPool / AdaptiveMaxPool.

adaptive_avgpool / adaptive_maxpool: [N, C, *L] -> [N, C, *size]; `size` is one int for every
spatial axis or one per axis (null keeps that axis's length, as PyTorch's None). On an axis of
length L with out bins, bin i covers positions [floor(i * L / out), ceil((i + 1) * L / out))
(PyTorch's start_index / end_index): the bins tile the axis when out divides L, overlap by one
position otherwise, and repeat positions when out > L. The output is the mean (the maximum) of
the box the bins span. No parameters; no MACs, as every pool here. Window: per axis the
longest bin, stride L / out; GLOBAL when size is 1 everywhere.

Lowering: size 1 everywhere: GlobalAveragePool / GlobalMaxPool ([N, C, 1, ...]; the same ONNX
at every input size, so `compile --dynamic` leaves a classifier's pool free); every L a
multiple of its out: AveragePool / MaxPool with kernel = stride = L / out, exactly those bins;
otherwise axis by axis (a box is the product of one bin per axis, and the mean and the maximum
of a box are taken one axis after another): the mean as a MatMul by a constant [L, out]
averaging matrix, the maximum as a Gather of a constant [out, k] table of each bin's positions
(the last repeated up to the longest bin, k) and a ReduceMax over that k axis.
Backward: average: dy times the transposed averaging matrix of each axis. Max: axis by axis in
reverse, each bin's gradient to the positions of the bin that equal its maximum (every tied
one, as global_maxpool's backward; PyTorch picks one, and float inputs make ties rare).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import Field

from ..errors import ShapeError
from .base import GLOBAL, Layer, Shape, Window, need_rank, register
from .resize import matmul_along, one_or_per_axis

Bins = Annotated[int, Field(ge=1)]


def bins(length: int, out: int) -> list[tuple[int, int]]:
    """(start, end) of each of the `out` bins over `length` positions."""
    return [(i * length // out, -(-(i + 1) * length // out)) for i in range(out)]


def membership(length: int, out: int) -> np.ndarray:
    """[out, length]: 1 where position p lies in bin i."""
    matrix = np.zeros((out, length), np.float32)
    for i, (start, end) in enumerate(bins(length, out)):
        matrix[i, start:end] = 1
    return matrix


class AdaptivePoolBase(Layer):
    draw_family: ClassVar[str] = "pool"
    global_op: ClassVar[str]
    pool_op: ClassVar[str]
    size: one_or_per_axis(Bins, Bins | None)

    def sizes(self, shape: Shape) -> tuple[int, ...]:
        rank = len(shape) - 1
        want = [self.size] * rank if isinstance(self.size, int) else list(self.size)
        if len(want) != rank:
            raise ShapeError(f"{self.op_name} size needs one value per spatial axis",
                             expected=f"{rank} values", received=str(self.size))
        return tuple(L if n is None else n for L, n in zip(shape[1:], want))

    def infer(self, shapes: list[Shape]) -> Shape:
        need_rank(self, shapes[0], (2, 3, 4), "a 1D, 2D or 3D input")
        return (shapes[0][0], *self.sizes(shapes[0]))

    def window(self, shapes: list[Shape]) -> Window | str:
        lengths, out = shapes[0][1:], self.sizes(shapes[0])
        if set(out) == {1}:
            return GLOBAL
        extent = tuple(max(e - s for s, e in bins(L, n)) for L, n in zip(lengths, out))
        return Window(extent, tuple(Fraction(L, n) for L, n in zip(lengths, out)))

    def blocked(self, node, inputs, block):
        """As the global or the strided pool it lowers to: 2D, whole blocks of channels (the
        global pool from a blocked input only); pooling axis by axis runs plain."""
        shape, out = node.in_shapes[0], node.shape
        if len(shape) != 3 or shape[0] % block:
            return False
        if set(out[1:]) == {1}:
            return inputs[0]
        return all(L % n == 0 for L, n in zip(shape[1:], out[1:]))

    def lower(self, g, xs, shapes, out):
        lengths = shapes[0][1:]
        if set(out[1:]) == {1}:
            return g.op(self.global_op, [xs[0]])
        if all(L % n == 0 for L, n in zip(lengths, out[1:])):
            kernel = [L // n for L, n in zip(lengths, out[1:])]
            return g.op(self.pool_op, [xs[0]], kernel_shape=kernel, strides=kernel)
        value = xs[0]
        for axis, L, n in self.pooled_axes(shapes[0], out):
            value = self.pool_axis(g, value, len(out) + 1, axis, L, n)
        return value

    def torch(self, node, emit):
        kind = "avg" if self.pool_op == "AveragePool" else "max"
        fn = f"F.adaptive_{kind}_pool{len(node.in_shapes[0]) - 1}d"
        return emit.call(fn, emit.x, self.size)

    @staticmethod
    def pooled_axes(shape: Shape, out: Shape) -> list[tuple[int, int, int]]:
        """(ONNX axis, L, out) of each spatial axis that is not kept as it is."""
        return [(axis, L, n) for axis, (L, n) in enumerate(zip(shape[1:], out[1:]), start=2)
                if L != n]

    def pool_axis(self, g, value: str, rank: int, axis: int, length: int, out: int) -> str:
        raise NotImplementedError


@register
class AdaptiveAvgPool(AdaptivePoolBase):
    """Mean over each adaptive bin box: [N, C, *L] -> [N, C, *size] (PyTorch AdaptiveAvgPoolNd)."""
    op: Literal["adaptive_avgpool"] = "adaptive_avgpool"
    global_op: ClassVar[str] = "GlobalAveragePool"
    pool_op: ClassVar[str] = "AveragePool"

    def pool_axis(self, g, value, rank, axis, length, out):
        return matmul_along(g, value, rank, axis, f"average{axis}", averaging(length, out).T)

    def vjp(self, g, xs, shapes, out, y, dy):
        """Per axis, dy times the averaging matrix [out, L]: each bin's gradient spread evenly."""
        dx = dy
        for axis, L, n in self.pooled_axes(shapes[0], out):
            dx = matmul_along(g, dx, len(out) + 1, axis, f"spread{axis}", averaging(L, n))
        return [dx], {}


def averaging(length: int, out: int) -> np.ndarray:
    """[out, length]: row i averages bin i."""
    matrix = membership(length, out)
    return matrix / matrix.sum(axis=1, keepdims=True)


@register
class AdaptiveMaxPool(AdaptivePoolBase):
    """Maximum over each adaptive bin box: [N, C, *L] -> [N, C, *size] (PyTorch
    AdaptiveMaxPoolNd)."""
    op: Literal["adaptive_maxpool"] = "adaptive_maxpool"
    global_op: ClassVar[str] = "GlobalMaxPool"
    pool_op: ClassVar[str] = "MaxPool"

    def pool_axis(self, g, value, rank, axis, length, out):
        spans = bins(length, out)
        longest = max(e - s for s, e in spans)
        table = np.array([[min(s + j, e - 1) for j in range(longest)] for s, e in spans], np.int64)
        gathered = g.op("Gather", [value, g.array(f"bins{axis}", table)], axis=axis)
        return g.op("ReduceMax", [gathered, g.ints([axis + 1])], keepdims=0)

    def vjp(self, g, xs, shapes, out, y, dy):
        """The forward again axis by axis (its stages), then back through them in reverse."""
        rank, axes = len(out) + 1, self.pooled_axes(shapes[0], out)
        stages = [xs[0]]
        for axis, L, n in axes[:-1]:
            stages.append(self.pool_axis(g, stages[-1], rank, axis, L, n))
        stages.append(y)
        dx = dy
        for k in range(len(axes) - 1, -1, -1):
            dx = max_stage_vjp(g, stages[k], stages[k + 1], dx, rank, *axes[k])
        return [dx], {}


def max_stage_vjp(g, x: str, y: str, dy: str, rank: int, axis: int, length: int, out: int) -> str:
    """Through y = max over the bins of x along `axis`: with the axis moved last,
    dx[.., p] = sum_i member[i, p] * (x[.., p] == y[.., i]) * dy[.., i]."""
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], axis
    x_, y_, dy_ = (g.op("Transpose", [v], perm=perm) for v in (x, y, dy))
    equal = g.op("Equal", [g.op("Unsqueeze", [x_, g.ints([-2])]),
                           g.op("Unsqueeze", [y_, g.ints([-1])])])
    mask = g.op("Mul", [g.op("Cast", [equal], to=g.FLOAT),
                        g.array(f"members{axis}", membership(length, out))])
    dx = g.op("MatMul", [g.op("Unsqueeze", [dy_, g.ints([-2])]), mask])
    return g.op("Transpose", [g.op("Squeeze", [dx, g.ints([-2])])], perm=perm)
