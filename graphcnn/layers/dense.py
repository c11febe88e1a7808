"""Fully connected layers and flattening.

linear: PyTorch's nn.Linear, on the last axis: [N, ..., F] -> [N, ..., features],
y = x W^T + b; weight [features, F] and bias [features]: F * features + features parameters
whatever the rank. MACs: the product of the other (non-batch) axes * F * features. Lowered
as Gemm on [N, F]; on more axes as MatMul by the transposed weight, then Add of the bias.
Receptive field: [N, F] is GLOBAL (every output reads every input). On more axes each output
reads one position of every axis but the last and the whole last axis: extent 1 there and F
on the last axis, stride 1 (positional, as the receptive field counts axes; on a channels-last
[N, H, W, C] tensor that is a 1x1 convolution's field in H and W, the whole of C).
flatten: [N, C, ...] -> [N, C * ...].
"""
from __future__ import annotations

from fractions import Fraction
from typing import ClassVar, Literal

from pydantic import Field

from .base import GLOBAL, Layer, Param, Shape, Window, product, register


@register
class Linear(Layer):
    """y = x W^T + b on the last axis (PyTorch nn.Linear): [N, ..., F] -> [N, ..., features]."""
    op: Literal["linear"] = "linear"
    draw_family: ClassVar[str] = "dense"
    features: int = Field(ge=1)
    bias: bool = True

    def infer(self, shapes: list[Shape]) -> Shape:
        return (*shapes[0][:-1], self.features)

    def params(self, shapes: list[Shape]) -> dict[str, Param]:
        f_in = shapes[0][-1]
        out = {"weight": Param((self.features, f_in), "he", f_in)}
        if self.bias:
            out["bias"] = Param((self.features,))
        return out

    def macs(self, shapes, out) -> int:
        return product(shapes[0]) * self.features

    def window(self, shapes):
        x = shapes[0]
        if len(x) == 1:
            return GLOBAL
        return Window((*[1] * (len(x) - 2), x[-1]), (Fraction(1),) * (len(x) - 1))

    def lower(self, g, xs, shapes, out):
        if len(shapes[0]) == 1:
            inputs = [xs[0], g.param("weight")] + ([g.param("bias")] if self.bias else [])
            return g.op("Gemm", inputs, transB=1)
        weight_t = g.op("Transpose", [g.param("weight")], perm=[1, 0])
        y = g.op("MatMul", [xs[0], weight_t])
        return g.op("Add", [y, g.param("bias")]) if self.bias else y

    def torch(self, node, emit):
        linear = emit.module("nn.Linear", node.in_shapes[0][-1], self.features,
                             bias=emit.opt(self.bias, True))
        return emit.call(linear, emit.x)

    def vjp(self, g, xs, shapes, out, y, dy):
        """dX = dY W, dW = dY^T X, db = sum of dY over the batch (on more axes: over every
        axis but the last, dY and X seen as [-1, features] and [-1, F])."""
        x, flat_dy = xs[0], dy
        if len(shapes[0]) > 1:
            flat_dy = g.op("Reshape", [dy, g.ints([-1, self.features])])
            x = g.op("Reshape", [xs[0], g.ints([-1, shapes[0][-1]])])
        grads = {"weight": g.op("Gemm", [flat_dy, x], transA=1)}
        if self.bias:
            grads["bias"] = g.op("ReduceSum", [flat_dy, g.ints([0])], keepdims=0)
        return [g.op("MatMul", [dy, g.param("weight")])], grads


@register
class Flatten(Layer):
    """[N, C, ...] -> [N, C * ...]."""
    op: Literal["flatten"] = "flatten"
    draw_family: ClassVar[str] = "dense"
    in_place: ClassVar[bool] = True  # a view of its input

    def infer(self, shapes: list[Shape]) -> Shape:
        return (product(shapes[0]),)

    def window(self, shapes):
        return GLOBAL if len(shapes[0]) > 1 else super().window(shapes)

    def lower(self, g, xs, shapes, out):
        return g.op("Flatten", [xs[0]], axis=1)

    def torch(self, node, emit):
        return emit.call(emit.x + ".flatten", 1)

    def vjp(self, g, xs, shapes, out, y, dy):
        return [g.op("Reshape", [dy, g.ints([0, *shapes[0]])])], {}
