"""Fully connected layers and flattening.

linear: [N, F] -> [N, features]; weight [features, F] and bias [features]:
F * features + features parameters. flatten: [N, C, ...] -> [N, C * ...].
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .base import GLOBAL, Layer, Param, Shape, need_rank, product, register


@register
class Linear(Layer):
    """y = x W^T + b over a flat input [N, F]."""
    op: Literal["linear"] = "linear"
    draw_family: ClassVar[str] = "dense"
    features: int = Field(ge=1)
    bias: bool = True

    def infer(self, shapes: list[Shape]) -> Shape:
        need_rank(self, shapes[0], (1,), "a flat input (add a flatten node before it)")
        return (self.features,)

    def params(self, shapes: list[Shape]) -> dict[str, Param]:
        f_in = shapes[0][0]
        out = {"weight": Param((self.features, f_in), "he", f_in)}
        if self.bias:
            out["bias"] = Param((self.features,))
        return out

    def macs(self, shapes, out) -> int:
        return shapes[0][0] * self.features

    def window(self, shapes):
        return GLOBAL

    def lower(self, g, xs, shapes, out):
        inputs = [xs[0], g.param("weight")] + ([g.param("bias")] if self.bias else [])
        return g.op("Gemm", inputs, transB=1)

    def vjp(self, g, xs, shapes, out, y, dy):
        """dX = dY W, dW = dY^T X, db = sum of dY over the batch."""
        grads = {"weight": g.op("Gemm", [dy, xs[0]], transA=1)}
        if self.bias:
            grads["bias"] = g.op("ReduceSum", [dy, g.ints([0])], keepdims=0)
        return [g.op("MatMul", [dy, g.param("weight")])], grads


@register
class Flatten(Layer):
    """[N, C, ...] -> [N, C * ...]."""
    op: Literal["flatten"] = "flatten"
    draw_family: ClassVar[str] = "dense"

    def infer(self, shapes: list[Shape]) -> Shape:
        return (product(shapes[0]),)

    def window(self, shapes):
        return GLOBAL if len(shapes[0]) > 1 else super().window(shapes)

    def lower(self, g, xs, shapes, out):
        return g.op("Flatten", [xs[0]], axis=1)

    def vjp(self, g, xs, shapes, out, y, dy):
        return [g.op("Reshape", [dy, g.ints([0, *shapes[0]])])], {}
