"""Elementwise activations and softmax: the output shape is the input shape, no parameters."""
from __future__ import annotations

import math
from typing import Literal

from .base import Layer, register


class Elementwise(Layer):
    """An op applied to each element; subclasses give the ONNX lowering."""


@register
class Relu(Elementwise):
    """max(x, 0)."""
    op: Literal["relu"] = "relu"

    def lower(self, g, xs, shapes, out):
        return g.op("Relu", xs)


@register
class LeakyRelu(Elementwise):
    """x if x > 0 else alpha * x."""
    op: Literal["leaky_relu"] = "leaky_relu"
    alpha: float = 0.01

    def lower(self, g, xs, shapes, out):
        return g.op("LeakyRelu", xs, alpha=self.alpha)


@register
class Sigmoid(Elementwise):
    """1 / (1 + exp(-x))."""
    op: Literal["sigmoid"] = "sigmoid"

    def lower(self, g, xs, shapes, out):
        return g.op("Sigmoid", xs)


@register
class Tanh(Elementwise):
    """tanh(x)."""
    op: Literal["tanh"] = "tanh"

    def lower(self, g, xs, shapes, out):
        return g.op("Tanh", xs)


@register
class Gelu(Elementwise):
    """x * Phi(x), the exact (erf) form; written with Erf so that every opset and host runs it."""
    op: Literal["gelu"] = "gelu"

    def lower(self, g, xs, shapes, out):
        scaled = g.op("Mul", [xs[0], g.scalar(1 / math.sqrt(2))])
        cdf = g.op("Mul", [g.op("Add", [g.op("Erf", [scaled]), g.scalar(1.0)]), g.scalar(0.5)])
        return g.op("Mul", [xs[0], cdf])


@register
class Silu(Elementwise):
    """x * sigmoid(x) (swish)."""
    op: Literal["silu"] = "silu"

    def lower(self, g, xs, shapes, out):
        return g.op("Mul", [xs[0], g.op("Sigmoid", xs)])


@register
class Softmax(Elementwise):
    """exp(x) / sum(exp(x)) along the channel (feature) axis."""
    op: Literal["softmax"] = "softmax"

    def lower(self, g, xs, shapes, out):
        return g.op("Softmax", xs, axis=1)


@register
class Identity(Elementwise):
    """x."""
    op: Literal["identity"] = "identity"

    def lower(self, g, xs, shapes, out):
        return g.op("Identity", xs)


@register
class Dropout(Elementwise):
    """Zeroes a fraction `rate` of the elements in training (scaling the rest by 1/(1-rate));
    the identity at inference."""
    op: Literal["dropout"] = "dropout"
    rate: float = 0.5

    def lower(self, g, xs, shapes, out):
        return g.op("Identity", xs)
