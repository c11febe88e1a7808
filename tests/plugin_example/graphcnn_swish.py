"""swish_beta: y = x * sigmoid(beta_c * x), with a learned slope beta per channel (axis 1), a
graphcnn op shipped as a plugin (entry point `swish_beta` in group `graphcnn.layers`).

Shape rule: the output has the input's shape [N, C, ...] (rank 2 and up).
Parameter: beta [C], every element starting at the field `beta` (default 1.0; 1.0 is SiLU).
Gradients, with s = sigmoid(beta x):
    dx    = dy * (s + beta x s (1 - s))
    dbeta = the sum of dy * x^2 s (1 - s) over every axis but the channel's.

It imports only the layer contract (graphcnn.layers.base) and graphcnn.errors: plugins load
while graphcnn itself is being imported, so the rest of graphcnn is not there yet.
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from graphcnn.layers.base import Layer, Param, Shape, fmt_shape
from graphcnn.errors import ShapeError


class SwishBeta(Layer):
    """x * sigmoid(beta_c * x), beta learned per channel."""

    op: Literal["swish_beta"] = "swish_beta"
    beta: float = Field(1.0, gt=0, description="the initial slope of every channel")
    draw_family: ClassVar[str] = "norm"  # an existing fill of graphcnn's drawings

    def infer(self, shapes: list[Shape]) -> Shape:
        if len(shapes[0]) < 1:
            raise ShapeError("swish_beta needs a channel axis",
                             expected="[N, C, ...]", received=fmt_shape(shapes[0]))
        return shapes[0]

    def params(self, shapes: list[Shape]) -> dict[str, Param]:
        return {"beta": Param((shapes[0][0],), self.beta)}

    def lower(self, g, xs, shapes, out):
        x = xs[0]
        s = g.op("Sigmoid", [g.op("Mul", [x, self.slope(g, shapes[0])])])
        return g.op("Mul", [x, s])

    def vjp(self, g, xs, shapes, out, y, dy):
        x = xs[0]
        bx = g.op("Mul", [x, self.slope(g, shapes[0])])
        s = g.op("Sigmoid", [bx])
        ds = g.op("Mul", [s, g.op("Sub", [g.scalar(1.0), s])])  # sigmoid'(beta x)
        dx = g.op("Mul", [dy, g.op("Add", [s, g.op("Mul", [bx, ds])])])
        per_element = g.op("Mul", [dy, g.op("Mul", [g.op("Mul", [x, x]), ds])])
        axes = [0, *range(2, len(shapes[0]) + 1)]  # all but the channel axis
        return [dx], {"beta": g.op("ReduceSum", [per_element, g.ints(axes)], keepdims=0)}

    def slope(self, g, shape: Shape) -> str:
        """beta shaped [C, 1, ...] to broadcast along axis 1 of [N, C, ...]."""
        ones = [1] * (len(shape) - 1)
        return g.op("Reshape", [g.param("beta"), g.ints([shape[0], *ones])])
