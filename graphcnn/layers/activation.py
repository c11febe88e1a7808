"""Elementwise activations and softmax: the output shape is the input shape, no parameters."""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field

from .base import Layer, register


class Elementwise(Layer):
    """An op applied to each element; subclasses give the ONNX lowering."""


@register
class Relu(Elementwise):
    """max(x, 0)."""
    op: Literal["relu"] = "relu"

    def lower(self, g, xs, shapes, out):
        return g.op("Relu", xs)

    def vjp(self, g, xs, shapes, out, y, dy):
        # y >= 0, so Ceil(Clip(y, 0, 1)) is exactly the 0/1 mask. onnxruntime runs Clip and
        # Ceil vectorized on all threads; mask and product took 2.5 ms on a [64, 64, 32, 32]
        # batch (2 threads), Greater + Cast 3.9, Sign 8.3, Where 4x as long as Mul.
        mask = g.op("Ceil", [g.op("Clip", [y, g.scalar(0.0), g.scalar(1.0)])])
        return [g.op("Mul", [dy, mask])], {}


@register
class LeakyRelu(Elementwise):
    """x if x > 0 else alpha * x."""
    op: Literal["leaky_relu"] = "leaky_relu"
    alpha: float = Field(0.01, allow_inf_nan=False)

    def lower(self, g, xs, shapes, out):
        return g.op("LeakyRelu", xs, alpha=self.alpha)

    def vjp(self, g, xs, shapes, out, y, dy):
        positive = g.op("Greater", [xs[0], g.scalar(0.0)])
        slope = g.op("Where", [positive, g.scalar(1.0), g.scalar(self.alpha)])
        return [g.op("Mul", [dy, slope])], {}


@register
class Sigmoid(Elementwise):
    """1 / (1 + exp(-x))."""
    op: Literal["sigmoid"] = "sigmoid"

    def lower(self, g, xs, shapes, out):
        return g.op("Sigmoid", xs)

    def vjp(self, g, xs, shapes, out, y, dy):
        return [g.op("Mul", [dy, g.op("Mul", [y, g.op("Sub", [g.scalar(1.0), y])])])], {}


@register
class Tanh(Elementwise):
    """tanh(x)."""
    op: Literal["tanh"] = "tanh"

    def lower(self, g, xs, shapes, out):
        return g.op("Tanh", xs)

    def vjp(self, g, xs, shapes, out, y, dy):
        return [g.op("Mul", [dy, g.op("Sub", [g.scalar(1.0), g.op("Mul", [y, y])])])], {}


@register
class Gelu(Elementwise):
    """x * Phi(x), the exact (erf) form; written with Erf so that every opset and host runs it."""
    fp32_ops: ClassVar[frozenset[str]] = frozenset({"Erf"})  # erf saturates early in fp16
    op: Literal["gelu"] = "gelu"

    def lower(self, g, xs, shapes, out):
        scaled = g.op("Mul", [xs[0], g.scalar(1 / math.sqrt(2))])
        cdf = g.op("Mul", [g.op("Add", [g.op("Erf", [scaled]), g.scalar(1.0)]), g.scalar(0.5)])
        return g.op("Mul", [xs[0], cdf])

    def vjp(self, g, xs, shapes, out, y, dy):
        """d/dx x Phi(x) = Phi(x) + x phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi)."""
        x = xs[0]
        scaled = g.op("Mul", [x, g.scalar(1 / math.sqrt(2))])
        cdf = g.op("Mul", [g.op("Add", [g.op("Erf", [scaled]), g.scalar(1.0)]), g.scalar(0.5)])
        square = g.op("Mul", [x, g.op("Mul", [x, g.scalar(-0.5)])])
        pdf = g.op("Mul", [g.op("Exp", [square]), g.scalar(1 / math.sqrt(2 * math.pi))])
        return [g.op("Mul", [dy, g.op("Add", [cdf, g.op("Mul", [x, pdf])])])], {}


@register
class Silu(Elementwise):
    """x * sigmoid(x) (swish)."""
    op: Literal["silu"] = "silu"

    def lower(self, g, xs, shapes, out):
        return g.op("Mul", [xs[0], g.op("Sigmoid", xs)])

    def vjp(self, g, xs, shapes, out, y, dy):
        """d/dx x s(x) = s (1 + x (1 - s))."""
        sig = g.op("Sigmoid", xs)
        inner = g.op("Add", [g.scalar(1.0), g.op("Mul", [xs[0], g.op("Sub", [g.scalar(1.0), sig])])])
        return [g.op("Mul", [dy, g.op("Mul", [sig, inner])])], {}


@register
class Softmax(Elementwise):
    """exp(x) / sum(exp(x)) along the channel (feature) axis."""
    op: Literal["softmax"] = "softmax"
    fp32_ops: ClassVar[frozenset[str]] = frozenset({"Softmax"})
    probability_output: ClassVar[bool] = True

    def lower(self, g, xs, shapes, out):
        return g.op("Softmax", xs, axis=1)

    def vjp(self, g, xs, shapes, out, y, dy):
        """dx = y * (dy - sum_c dy * y)."""
        dot = g.op("ReduceSum", [g.op("Mul", [dy, y]), g.ints([1])], keepdims=1)
        return [g.op("Mul", [y, g.op("Sub", [dy, dot])])], {}


@register
class Identity(Elementwise):
    """x."""
    op: Literal["identity"] = "identity"

    def lower(self, g, xs, shapes, out):
        return g.op("Identity", xs)

    def vjp(self, g, xs, shapes, out, y, dy):
        return [dy], {}


@register
class Dropout(Elementwise):
    """Zeroes a fraction `rate` of the elements in training (scaling the rest by 1/(1-rate));
    the identity at inference.

    The training mask is a function of (training step, node id, element index) only, not a
    random op: the same run gives the same masks on every host and after a resume, and a new
    step gives new masks. Each element's index, salted with the step and the node, goes twice
    through the LCG h -> (1103515245 h + 12345) mod 2^31 (in int64, without overflow); an
    element is kept when h / 2^31 >= rate."""
    op: Literal["dropout"] = "dropout"
    rate: float = Field(0.5, ge=0, lt=1)  # at 1 every element drops and the rest scale by 1/0

    def lower(self, g, xs, shapes, out):
        return g.op("Identity", xs)

    def lower_train(self, g, xs, shapes, out):
        if self.rate == 0:
            return g.op("Identity", xs)
        shape = g.op("Shape", xs)
        count = g.op("ReduceProd", [shape], keepdims=0)
        index = g.op("Range", [scalar_int(g, 0), count, scalar_int(g, 1)])
        salt = g.op("Mul", [g.step, g.ints([1 << 20])])
        node = g.ints([zlib.crc32(g.node_id.encode()) % (1 << 20)])
        h = g.op("Add", [index, g.op("Add", [salt, node])])
        for _ in range(2):
            h = g.op("Mod", [h, g.ints([1 << 31])])
            h = g.op("Add", [g.op("Mul", [h, g.ints([1103515245])]), g.ints([12345])])
        h = g.op("Mod", [h, g.ints([1 << 31])])
        uniform = g.op("Div", [g.op("Cast", [h], to=g.FLOAT), g.scalar(float(1 << 31))])
        keep = g.op("Cast", [g.op("GreaterOrEqual", [uniform, g.scalar(self.rate)])], to=g.FLOAT)
        mask = g.op("Reshape", [g.op("Mul", [keep, g.scalar(1 / (1 - self.rate))]), shape])
        g.keep(DropoutMask(mask))
        return g.op("Mul", [xs[0], mask])

    def vjp(self, g, xs, shapes, out, y, dy):
        if self.rate == 0:  # no mask was made: the identity
            return [dy], {}
        return [g.op("Mul", [dy, g.kept(DropoutMask).value])], {}


@dataclass(frozen=True)
class DropoutMask:
    """The training forward's keep mask, scaled by 1/(1 - rate), for the backward rule."""

    value: str


def scalar_int(g, value: int) -> str:
    """A 0-d int64 (Range wants scalars; g.ints makes 1-d tensors)."""
    return g.op("Squeeze", [g.ints([value])])
