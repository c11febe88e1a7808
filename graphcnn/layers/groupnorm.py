"""Normalisation by each sample's own statistics: layernorm, groupnorm, instancenorm.

Each is group normalisation over some axes of one sample, as PyTorch defines it:
y = (x - mean) / sqrt(var + eps) * weight + bias, with the mean and the biased variance over
the normalised axes and eps inside the root. Which axes:
- layernorm, `axis: channels`: over C at each position of [N, C, *spatial] (ConvNeXt's
  LayerNorm2d); `axis: last`: over the last axis (torch nn.LayerNorm(last size));
- groupnorm: over C/groups channels and every position (torch nn.GroupNorm);
- instancenorm: over every position of each channel (torch InstanceNorm1d/2d/3d without
  running statistics).
The shape is unchanged; with `affine` (torch's default: true for layernorm and groupnorm,
false for instancenorm) weight (ones) and bias (zeros) have C entries (layernorm `last`: the
last axis' size), 2C parameters. There are no running statistics, so training computes what
inference computes; the backward rule is norm_input_grad (shared). The normalising ONNX op
stays float32 under `--precision` (fp32_ops).
"""
from __future__ import annotations

from fractions import Fraction
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from ..errors import ShapeError
from .base import GLOBAL, Layer, Param, Shape, Window, fmt_shape, need_rank, register


class SampleNorm(Layer):
    """What the three share: parameters, the affine step and the backward rule. Subclasses
    say over which axes (of `view`: x itself, or groupnorm's [N, G, rest]) the statistics
    are taken, and which axis weight and bias follow."""
    draw_family: ClassVar[str] = "norm"
    eps: float = Field(1e-5, gt=0, allow_inf_nan=False)  # 1/sqrt(var + eps): var is 0 on a flat map
    affine: bool = True

    def stat_axes(self, shape: Shape) -> list[int]:
        """The axes of view(x) that the mean and variance are taken over."""
        raise NotImplementedError

    def affine_axis(self, shape: Shape) -> int:
        """The axis of [N, *shape] that weight and bias follow: the channels by default."""
        return 1

    def view(self, g, value: str, shape: Shape) -> str:
        return value

    def unview(self, g, value: str, shape: Shape) -> str:
        return value

    def params(self, shapes: list[Shape]) -> dict[str, Param]:
        if not self.affine:
            return {}
        size = (shapes[0][self.affine_axis(shapes[0]) - 1],)
        return {"weight": Param(size, "ones"), "bias": Param(size, "zeros")}

    def along_affine(self, g, name: str, shape: Shape) -> str:
        """Parameter `name` shaped to broadcast along the affine axis of [N, *shape]."""
        trailing = len(shape) - self.affine_axis(shape)
        if not trailing:
            return g.param(name)
        return g.op("Reshape", [g.param(name), g.ints([-1] + [1] * trailing)])

    def affine_inputs(self, g, size: int) -> tuple[str, str]:
        """The scale and bias inputs of an ONNX normalising op: weight and bias, or constant
        ones and zeros when not affine (the ops require them)."""
        return (g.param("weight"), g.param("bias")) if self.affine else unit_affine(g, size)

    def with_affine(self, g, y: str, shape: Shape) -> str:
        if not self.affine:
            return y
        y = g.op("Mul", [y, self.along_affine(g, "weight", shape)])
        return g.op("Add", [y, self.along_affine(g, "bias", shape)])

    def vjp(self, g, xs, shapes, out, y, dy):
        """dx = inv * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) over the normalised
        axes, dxhat = dy * weight; dweight = sum of dy * xhat and dbias = sum of dy over every
        axis but the affine one."""
        shape, axes = shapes[0], self.stat_axes(shapes[0])
        xhat, inv = normalized(g, self.view(g, xs[0], shape), axes, self.eps)
        dxhat = g.op("Mul", [dy, self.along_affine(g, "weight", shape)]) if self.affine else dy
        dx = self.unview(g, norm_input_grad(g, self.view(g, dxhat, shape), xhat, inv, axes), shape)
        if not self.affine:
            return [dx], {}
        others = g.ints([a for a in range(len(shape) + 1) if a != self.affine_axis(shape)])
        xhat = self.unview(g, xhat, shape)
        return [dx], {"weight": g.op("ReduceSum", [g.op("Mul", [dy, xhat]), others], keepdims=0),
                      "bias": g.op("ReduceSum", [dy, others], keepdims=0)}


def normalized(g, x: str, axes: list[int], eps: float) -> tuple[str, str]:
    """(x - mean) / sqrt(var + eps) and 1 / sqrt(var + eps), statistics over `axes`."""
    mean = g.op("ReduceMean", [x, g.ints(axes)], keepdims=1)
    centered = g.op("Sub", [x, mean])
    var = g.op("ReduceMean", [g.op("Mul", [centered, centered]), g.ints(axes)], keepdims=1)
    inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [var, g.scalar(eps)])])])
    return g.op("Mul", [centered, inv]), inv


def norm_input_grad(g, dxhat: str, xhat: str, inv: str, axes: list[int]) -> str:
    """The gradient of x through xhat = (x - mean) * inv, means over `axes`."""
    mean_d = g.op("ReduceMean", [dxhat, g.ints(axes)], keepdims=1)
    mean_dx = g.op("ReduceMean", [g.op("Mul", [dxhat, xhat]), g.ints(axes)], keepdims=1)
    inner = g.op("Sub", [g.op("Sub", [dxhat, mean_d]), g.op("Mul", [xhat, mean_dx])])
    return g.op("Mul", [inner, inv])


def unit_affine(g, size: int) -> tuple[str, str]:
    return (g.array("ones", np.ones(size, np.float32)),
            g.array("zeros", np.zeros(size, np.float32)))


def instance_norm(g, x: str, scale: str, bias: str, eps: float) -> str:
    """ONNX InstanceNormalization: statistics over axes 2.. of each [n, c], biased variance."""
    return g.op("InstanceNormalization", [x, scale, bias], epsilon=eps)


@register
class LayerNorm(SampleNorm):
    """Per position, over the channels (`axis: channels`, [N, C, *spatial]: ConvNeXt's
    LayerNorm2d) or over the last axis (`axis: last`: torch nn.LayerNorm(shape[-1])). Shape
    unchanged; weight and bias [C] (or [last size])."""
    op: Literal["layernorm"] = "layernorm"
    fp32_ops: ClassVar[frozenset[str]] = frozenset({"LayerNormalization"})
    axis: Literal["channels", "last"] = "channels"

    def on_last(self, shape: Shape) -> bool:
        return self.axis == "last" or len(shape) == 1

    def workspace(self, node):
        """Over the channels: the normalised map in channels-last order, held while it is
        transposed back."""
        return [] if self.on_last(node.in_shapes[0]) else [node.shape]

    def stat_axes(self, shape: Shape) -> list[int]:
        return [len(shape)] if self.on_last(shape) else [1]

    def affine_axis(self, shape: Shape) -> int:
        return self.stat_axes(shape)[0]

    def window(self, shapes: list[Shape]) -> Window:
        """Each output sees the whole last axis with `last`, else its own position."""
        extent = [1] * (len(shapes[0]) - 1)
        if extent and self.axis == "last":
            extent[-1] = shapes[0][-1]
        return Window(tuple(extent), (Fraction(1),) * len(extent))

    def lower(self, g, xs, shapes, out):
        """ONNX LayerNormalization over the last axis; `channels` moves C last and back."""
        x, shape = xs[0], shapes[0]
        if self.on_last(shape):
            return self.layer_norm(g, x, shape[-1])
        rank = len(shape) + 1
        moved = g.op("Transpose", [x], perm=[0, *range(2, rank), 1])
        y = self.layer_norm(g, moved, shape[0])
        return g.op("Transpose", [y], perm=[0, rank - 1, *range(1, rank - 1)])

    def torch(self, node, emit):
        """nn.LayerNorm over the last axis; `channels` moves C last and back."""
        shape = node.in_shapes[0]
        last = self.on_last(shape)
        norm = emit.module("nn.LayerNorm", shape[-1] if last else shape[0],
                           eps=emit.opt(self.eps, 1e-5),
                           elementwise_affine=emit.opt(self.affine, True))
        if last:
            return emit.call(norm, emit.x)
        return emit.call(norm, emit.x + ".movedim(1, -1)") + ".movedim(-1, 1)"

    def layer_norm(self, g, x: str, size: int) -> str:
        scale, bias = self.affine_inputs(g, size)
        return g.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=self.eps)


@register
class GroupNorm(SampleNorm):
    """Over each group of C/groups channels and all positions (torch nn.GroupNorm); [N, C]
    or [N, C, *spatial], C a multiple of groups. Shape unchanged; weight and bias [C]."""
    op: Literal["groupnorm"] = "groupnorm"
    fp32_ops: ClassVar[frozenset[str]] = frozenset({"InstanceNormalization"})
    groups: int = Field(ge=1)

    def infer(self, shapes: list[Shape]) -> Shape:
        if shapes[0][0] % self.groups:
            raise ShapeError("groupnorm needs channels divisible by groups",
                             expected=f"C a multiple of groups = {self.groups}",
                             received=fmt_shape(shapes[0]))
        return shapes[0]

    def stat_axes(self, shape: Shape) -> list[int]:
        return [2]

    def view(self, g, value: str, shape: Shape) -> str:
        """[N, C, *spatial] as [N, groups, C/groups * positions]."""
        return g.op("Reshape", [value, g.ints([0, self.groups, -1])])

    def unview(self, g, value: str, shape: Shape) -> str:
        return g.op("Reshape", [value, g.ints([-1, *shape])])

    def window(self, shapes: list[Shape]) -> str:
        return GLOBAL

    def lower(self, g, xs, shapes, out):
        """InstanceNormalization of the [N, groups, rest] view (onnxruntime's CPU provider has
        no GroupNormalization kernel), the shape taken back from x (no size is written into
        the model), then weight and bias per channel."""
        ones, zeros = unit_affine(g, self.groups)
        y = instance_norm(g, self.view(g, xs[0], shapes[0]), ones, zeros, self.eps)
        y = g.op("Reshape", [y, g.op("Shape", [xs[0]])])
        return self.with_affine(g, y, shapes[0])

    def torch(self, node, emit):
        norm = emit.module("nn.GroupNorm", self.groups, node.in_shapes[0][0],
                           eps=emit.opt(self.eps, 1e-5), affine=emit.opt(self.affine, True))
        return emit.call(norm, emit.x)


@register
class InstanceNorm(SampleNorm):
    """Over all positions of each channel (torch InstanceNorm1d/2d/3d, no running statistics):
    [N, C, L], [N, C, H, W] or [N, C, D, H, W]. Shape unchanged; weight and bias [C] when
    affine (default false, as torch)."""
    op: Literal["instancenorm"] = "instancenorm"
    fp32_ops: ClassVar[frozenset[str]] = frozenset({"InstanceNormalization"})
    affine: bool = False

    def infer(self, shapes: list[Shape]) -> Shape:
        need_rank(self, shapes[0], (2, 3, 4), "spatial axes to take statistics over")
        return shapes[0]

    def stat_axes(self, shape: Shape) -> list[int]:
        return list(range(2, len(shape) + 1))

    def window(self, shapes: list[Shape]) -> str:
        return GLOBAL

    def lower(self, g, xs, shapes, out):
        return instance_norm(g, xs[0], *self.affine_inputs(g, shapes[0][0]), self.eps)

    def torch(self, node, emit):
        shape = node.in_shapes[0]
        norm = emit.module(f"nn.InstanceNorm{len(shape) - 1}d", shape[0],
                           eps=emit.opt(self.eps, 1e-5), affine=emit.opt(self.affine, False))
        return emit.call(norm, emit.x)
