"""Fully connected layers and flattening.

linear: [N, F] -> [N, features]; weight [features, F] and bias [features]:
F * features + features parameters. flatten: [N, C, ...] -> [N, C * ...].
"""
from __future__ import annotations

from typing import Literal

from .base import GLOBAL, Layer, Param, Shape, need_rank, product, register


@register
class Linear(Layer):
    """y = x W^T + b over a flat input [N, F]."""
    op: Literal["linear"] = "linear"
    features: int
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


@register
class Flatten(Layer):
    """[N, C, ...] -> [N, C * ...]."""
    op: Literal["flatten"] = "flatten"

    def infer(self, shapes: list[Shape]) -> Shape:
        return (product(shapes[0]),)

    def window(self, shapes):
        return GLOBAL if len(shapes[0]) > 1 else super().window(shapes)

    def lower(self, g, xs, shapes, out):
        return g.op("Flatten", [xs[0]], axis=1)
