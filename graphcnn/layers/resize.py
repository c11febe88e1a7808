"""resize: to another node's spatial size, to a fixed size or by a scale, as PyTorch's
F.interpolate (nearest, and linear: bilinear in 2D, trilinear in 3D), on any spatial rank.

[N, C, *L] -> [N, C, *out], with exactly one of
- like: a node id (inputs [previous, like]): out = that node's spatial size, read at run time
  from its Shape, so `compile --dynamic` leaves it free (FCN, DeepLab: `like: x`, the input);
- size: one length per spatial axis;
- scale: one float for every axis or one per axis, fractional allowed: out = floor(L * s) in
  double precision, as F.interpolate(scale_factor=s, recompute_scale_factor=None), which then
  also takes its source coordinates from 1/s rather than from L/out.
Source positions per axis, from PyTorch's CPU kernels (aten/src/ATen/native/UpSample.h and
cpu/UpSampleKernel.cpp), in float32 as there. r = float32(L) / out when the size is given,
r = float32(1 / s) when the scale is:
- nearest (torch 'nearest': ONNX asymmetric + floor): i = min(floor(o * r), L - 1), except
  out == L: i = o and out == 2L: i = o >> 1 (nearest_idx; they differ from the rule only when
  a scale is given). align_corners is refused for nearest, as PyTorch refuses it.
- linear, align_corners false: x = max(r * (o + 0.5) - 0.5, 0); align_corners true:
  r = (L - 1) / (out - 1) (0 when out = 1; the scale is then not used), x = r * o. Then
  i0 = min(floor(x), L - 1), i1 = min(i0 + 1, L - 1), w = x - i0 and
  y = (1 - w) in[i0] + w in[i1], axis by axis; out == L copies the axis
  (compute_source_index_and_lambda).
No parameters. MACs (linear): one multiply per corner of the interpolation cell, as upsample.
Window: extent 1 (nearest) or 2 (linear), stride L / out (the sampling step in the input).

Not lowered to ONNX Resize, which cannot say the same: with `sizes` onnxruntime's nearest
source is floor(o / (out / L)), not floor(o * (L / out)) (L = 2, out = 82, o = 41: 1, not 0),
and with `scales` it sizes the output in float32 (floor(90 * 0.7): 63, PyTorch 62). Instead
each axis computes its source indices (and weights) at run time from the Shape of the input,
by the float32 rules above, and Gathers along the axis: the same ONNX at every input size,
one meaning on every ONNX host. The backward is the transpose, per axis a constant [out, L]
matrix (0/1 for nearest, the interpolation weights for linear) that dy is multiplied by.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Annotated, ClassVar, Literal, Union

import numpy as np
from pydantic import Discriminator, Field, Tag, model_validator

from ..errors import ShapeError
from .base import FP32_ALL, Layer, Shape, Window, fmt_shape, product, register
from .resample import TORCH_LINEAR, spatial


def one_or_per_axis(one, entry=None):
    """`one` value for every spatial axis, or a list of `entry` values (default: `one`), one per
    axis; validated as the form given, so an error names the bad entry (a plain union would
    report the first form's complaint about the other)."""
    each = Annotated[list[entry if entry is not None else one], Tag("per_axis")]
    return Annotated[Union[Annotated[one, Tag("one")], each],
                     Discriminator(lambda v: "per_axis" if isinstance(v, list) else "one")]


Length = Annotated[int, Field(ge=1)]
Factor = Annotated[float, Field(gt=0, allow_inf_nan=False)]


@register
class Resize(Layer):
    """Resize the spatial axes to `like`'s size, to `size` or by `scale` (PyTorch's
    F.interpolate, nearest or linear; the module docstring gives the source positions)."""
    op: Literal["resize"] = "resize"
    draw_family: ClassVar[str] = "upsample"
    # the source positions are float32 arithmetic, as PyTorch's: in fp16 they would move
    fp32_ops: ClassVar[frozenset[str]] = FP32_ALL
    arity: ClassVar[tuple[int, int | None]] = (1, 2)
    skip_kind: ClassVar[str] = "crop"  # the `like` edge gives a size only, as crop's does
    like: str | None = None
    size: list[Length] | None = None
    scale: one_or_per_axis(Factor) | None = None
    mode: Literal["nearest", "linear"] = "nearest"
    align_corners: bool = False

    @model_validator(mode="after")
    def _one_target(self):
        if sum(v is not None for v in (self.like, self.size, self.scale)) != 1:
            raise ValueError("resize takes exactly one of `like` (a node id), `size` (a list) "
                             "or `scale`")
        if self.align_corners and self.mode == "nearest":
            raise ValueError("align_corners applies to mode: linear only (as in PyTorch)")
        return self

    def wiring(self, previous: str | None) -> list[str]:
        return super().wiring(previous) + ([self.like] if self.like else [])

    def shape_inputs(self) -> list[int]:
        return [1]  # `like`

    @property
    def in_place(self) -> bool:
        return self.mode == "linear"  # the last Add, over one of its two temporaries

    def workspace(self, node):
        """Linear: the two weighted gathers summed into the result (held as the last axis
        is interpolated); nearest: the map gathered along all but the last axis."""
        if self.mode == "linear":
            return [node.shape, node.shape]
        shape, out = node.in_shapes[0], node.shape
        return [(*out[:k + 1], *shape[k + 1:]) for k in range(1, len(out) - 1)]

    def factors(self, rank: int) -> tuple[float, ...]:
        if not isinstance(self.scale, list):
            return (self.scale,) * rank
        if len(self.scale) != rank:
            raise ShapeError("resize scale needs one value per spatial axis",
                             expected=f"{rank} values", received=str(self.scale))
        return tuple(self.scale)

    def factor(self, axis: int) -> float:
        """The scale of ONNX axis `axis` (2 = the first spatial axis)."""
        return self.scale[axis - 2] if isinstance(self.scale, list) else self.scale

    def target(self, shapes: list[Shape]) -> tuple[int, ...]:
        x = shapes[0]
        rank = spatial(self, x)
        if self.like is not None:
            want = tuple(shapes[1][1:])
        elif self.size is not None:
            want = tuple(self.size)
        else:
            want = tuple(math.floor(L * s) for L, s in zip(x[1:], self.factors(rank)))
        if len(want) != rank:
            what = f"node '{self.like}'" if self.like else "size"
            raise ShapeError(f"resize {what} needs one length per spatial axis of the input",
                             expected=f"{rank} spatial lengths", received=str(list(want)))
        if min(want) < 1:
            raise ShapeError("resize scale leaves an axis empty (out = floor(L * scale))",
                             expected="L * scale >= 1", received=f"{fmt_shape(x)} by {self.scale}")
        return want

    def infer(self, shapes: list[Shape]) -> Shape:
        return (shapes[0][0], *self.target(shapes))

    def macs(self, shapes, out) -> int:
        return product(out) * 2 ** (len(out) - 1) if self.mode == "linear" else 0

    def window(self, shapes: list[Shape]) -> Window:
        sizes = zip(shapes[0][1:], self.target(shapes))
        steps = tuple(Fraction(L, n) for L, n in sizes)
        return Window((2 if self.mode == "linear" else 1,) * len(steps), steps)

    def lower(self, g, xs, shapes, out):
        value, rank = xs[0], len(out) + 1
        for axis in range(2, rank):
            length = g.op("Shape", [xs[0]], start=axis, end=axis + 1)
            source = _Axis(g, axis, rank, length, self.runtime_size(g, xs, axis, length))
            ratio = self.runtime_ratio(g, source)
            value = source.nearest(value, ratio) if self.mode == "nearest" else \
                source.linear(value, ratio, self.align_corners)
        return value

    def torch(self, node, emit):
        """F.interpolate, whose rules this op follows (module docstring)."""
        if self.like is not None:
            target = {"size": emit.xs[1] + ".shape[2:]"}
        elif self.size is not None:
            target = {"size": list(self.size)}
        else:
            target = {"scale_factor": self.scale}
        if self.mode == "nearest":
            return emit.call("F.interpolate", emit.x, **target)
        return emit.call("F.interpolate", emit.x, **target, mode=TORCH_LINEAR[len(node.shape) - 1],
                         align_corners=self.align_corners)

    def runtime_size(self, g, xs, axis: int, length: str) -> str:
        """[1] int64: the output length on `axis` (like: its Shape; scale: floor(L * s))."""
        if self.like is not None:
            return g.op("Shape", [xs[1]], start=axis, end=axis + 1)
        if self.size is not None:
            return g.ints([self.size[axis - 2]])
        wide = g.op("Mul", [g.op("Cast", [length], to=g.DOUBLE),
                            g.array(f"scale{axis}", np.array([self.factor(axis)], np.float64))])
        return g.op("Cast", [wide], to=g.INT64)  # truncation: floor of a positive length

    def runtime_ratio(self, g, source: "_Axis") -> str:
        """[1] float32: input positions per output position (r above)."""
        if self.align_corners:
            steps = g.op("Max", [g.op("Sub", [source.size_f, g.scalar(1.0)]), g.scalar(1.0)])
            return g.op("Div", [g.op("Sub", [source.length_f, g.scalar(1.0)]), steps])
        if self.scale is None:
            return g.op("Div", [source.length_f, source.size_f])
        inverse = np.array([1 / self.factor(source.axis)], np.float64)  # cast as PyTorch does
        inverse = g.op("Cast", [g.array(f"inverse_scale{source.axis}", inverse)], to=g.FLOAT)
        size, length = source.size, source.length
        ratio = g.op("Where", [g.op("Equal", [size, length]), g.scalar(1.0), inverse])
        if self.mode == "nearest":
            double = g.op("Equal", [size, g.op("Mul", [length, g.ints([2])])])
            ratio = g.op("Where", [double, g.scalar(0.5), ratio])
        return ratio

    def vjp(self, g, xs, shapes, out, y, dy):
        """Per axis, dy times that axis's constant [out, L] resampling matrix (out == L is a
        copy by every rule above: no matrix)."""
        dx = dy
        for axis, (L, n) in enumerate(zip(shapes[0][1:], out[1:]), start=2):
            if n != L:
                matrix = self.matrix(L, n, axis)
                dx = matmul_along(g, dx, len(out) + 1, axis, f"resample{axis}", matrix)
        return [dx] + [None] * (len(xs) - 1), {}

    def matrix(self, length: int, size: int, axis: int) -> np.ndarray:
        """[size, length]: out[o] = sum_i M[o, i] in[i], by the float32 rules above."""
        ratio = self.ratio_value(length, size, axis)
        o = np.arange(size, dtype=np.float32)
        rows, matrix = np.arange(size), np.zeros((size, length), np.float32)
        if self.mode == "nearest":
            matrix[rows, np.minimum((o * ratio).astype(np.int64), length - 1)] = 1
            return matrix
        src = o * ratio if self.align_corners else \
            np.maximum((o + np.float32(0.5)) * ratio - np.float32(0.5), np.float32(0))
        low = np.minimum(src.astype(np.int64), length - 1)
        weight = src - low.astype(np.float32)
        np.add.at(matrix, (rows, low), 1 - weight)
        np.add.at(matrix, (rows, np.minimum(low + 1, length - 1)), weight)
        return matrix

    def ratio_value(self, length: int, size: int, axis: int) -> np.float32:
        if self.align_corners:
            return np.float32(length - 1) / np.float32(max(size - 1, 1))
        if self.scale is None:
            return np.float32(length) / np.float32(size)
        if size == length or (size == 2 * length and self.mode == "nearest"):
            return np.float32(length / size)  # PyTorch's copies: exactly 1 or 0.5
        return np.float32(1 / self.factor(axis))


class _Axis:
    """One spatial axis of a resize at run time: its input length and output length ([1]
    int64, and as float32) and the source positions computed from them."""

    def __init__(self, g, axis: int, rank: int, length: str, size: str):
        self.g, self.axis, self.rank, self.length, self.size = g, axis, rank, length, size
        self.length_f = g.op("Cast", [length], to=g.FLOAT)
        self.size_f = g.op("Cast", [size], to=g.FLOAT)
        self.last = g.op("Sub", [length, g.ints([1])])

    def positions(self, offset: float) -> str:
        """[out] float32: o + offset for o = 0 .. out - 1 (an int64 Range: onnxruntime's type
        inference refuses a float Range whose limit comes from a Shape)."""
        g = self.g
        scalars = [g.op("Squeeze", [v]) for v in (g.ints([0]), self.size, g.ints([1]))]
        o = g.op("Cast", [g.op("Range", scalars)], to=g.FLOAT)
        return g.op("Add", [o, g.scalar(offset)]) if offset else o

    def index(self, source: str) -> str:
        """min(floor(source), L - 1) as int64 (source >= 0: Cast truncates to the floor)."""
        return self.g.op("Min", [self.g.op("Cast", [source], to=self.g.INT64), self.last])

    def nearest(self, value: str, ratio: str) -> str:
        index = self.index(self.g.op("Mul", [self.positions(0.0), ratio]))
        return self.g.op("Gather", [value, index], axis=self.axis)

    def linear(self, value: str, ratio: str, align_corners: bool) -> str:
        g = self.g
        if align_corners:
            source = g.op("Mul", [self.positions(0.0), ratio])
        else:
            centre = g.op("Mul", [self.positions(0.5), ratio])
            source = g.op("Max", [g.op("Sub", [centre, g.scalar(0.5)]), g.scalar(0.0)])
        low = self.index(source)
        high = g.op("Min", [g.op("Add", [low, g.ints([1])]), self.last])
        weight = self.along(g.op("Sub", [source, g.op("Cast", [low], to=g.FLOAT)]))
        near = g.op("Mul", [g.op("Gather", [value, low], axis=self.axis),
                            g.op("Sub", [g.scalar(1.0), weight])])
        far = g.op("Mul", [g.op("Gather", [value, high], axis=self.axis), weight])
        return g.op("Add", [near, far])

    def along(self, weights: str) -> str:
        """[out] weights shaped to broadcast along the axis: [out, 1, ...]."""
        shape = self.g.ints([-1] + [1] * (self.rank - 1 - self.axis))
        return self.g.op("Reshape", [weights, shape])


def matmul_along(g, value: str, rank: int, axis: int, name: str, matrix: np.ndarray) -> str:
    """`value` (of `rank` axes) times the constant `matrix` [length, new length] on `axis`:
    that axis moved last, MatMul, moved back."""
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], axis
    moved = value if axis == rank - 1 else g.op("Transpose", [value], perm=perm)
    product_ = g.op("MatMul", [moved, g.array(name, np.ascontiguousarray(matrix))])
    return product_ if axis == rank - 1 else g.op("Transpose", [product_], perm=perm)
