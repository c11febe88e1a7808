"""Elementwise activations and softmax: the output shape is the input shape; no parameters
but prelu's slope."""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from ..errors import ShapeError
from .base import Layer, Param, Shape, fmt_shape, register


class Elementwise(Layer):
    """An op applied to each element; subclasses give the ONNX lowering, and the PyTorch
    function of the same meaning (`torch_fn`) or their own `torch`."""
    torch_fn: ClassVar[str | None] = None
    in_place: ClassVar[bool] = True  # onnxruntime's unary activation kernels may run in place
    # Whether onnxruntime keeps its channel-blocked layout through this op (fused into the conv
    # before it, or run by an NCHWc kernel) when the input arrives blocked.
    nchwc: ClassVar[bool] = False

    def blocked(self, node, inputs, block):
        return self.nchwc and all(inputs)

    def torch(self, node, emit):
        if self.torch_fn is None:
            return super().torch(node, emit)
        return emit.call(self.torch_fn, emit.x)


@register
class Relu(Elementwise):
    """max(x, 0)."""
    torch_fn: ClassVar[str] = "F.relu"
    op: Literal["relu"] = "relu"
    nchwc: ClassVar[bool] = True

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
    nchwc: ClassVar[bool] = True
    alpha: float = Field(0.01, allow_inf_nan=False)

    def lower(self, g, xs, shapes, out):
        return g.op("LeakyRelu", xs, alpha=self.alpha)

    def torch(self, node, emit):
        return emit.call("F.leaky_relu", emit.x, self.alpha)

    def vjp(self, g, xs, shapes, out, y, dy):
        positive = g.op("Greater", [xs[0], g.scalar(0.0)])
        slope = g.op("Where", [positive, g.scalar(1.0), g.scalar(self.alpha)])
        return [g.op("Mul", [dy, slope])], {}


@register
class Sigmoid(Elementwise):
    """1 / (1 + exp(-x))."""
    torch_fn: ClassVar[str] = "torch.sigmoid"
    op: Literal["sigmoid"] = "sigmoid"
    nchwc: ClassVar[bool] = True

    def lower(self, g, xs, shapes, out):
        return g.op("Sigmoid", xs)

    def vjp(self, g, xs, shapes, out, y, dy):
        return [g.op("Mul", [dy, g.op("Mul", [y, g.op("Sub", [g.scalar(1.0), y])])])], {}


@register
class Tanh(Elementwise):
    """tanh(x)."""
    torch_fn: ClassVar[str] = "torch.tanh"
    op: Literal["tanh"] = "tanh"
    nchwc: ClassVar[bool] = True

    def lower(self, g, xs, shapes, out):
        return g.op("Tanh", xs)

    def vjp(self, g, xs, shapes, out, y, dy):
        return [g.op("Mul", [dy, g.op("Sub", [g.scalar(1.0), g.op("Mul", [y, y])])])], {}


@register
class Gelu(Elementwise):
    """x * Phi(x), the exact (erf) form; written with Erf so that every opset and host runs it."""
    torch_fn: ClassVar[str] = "F.gelu"
    fp32_ops: ClassVar[frozenset[str]] = frozenset({"Erf"})  # erf saturates early in fp16
    op: Literal["gelu"] = "gelu"

    def workspace(self, node):
        """x / sqrt(2) and its Erf (onnxruntime's Erf does not run in place)."""
        return [node.shape, node.shape]

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
    torch_fn: ClassVar[str] = "F.silu"
    op: Literal["silu"] = "silu"
    in_place: ClassVar[bool] = False  # onnxruntime fuses it into QuickGelu, which writes anew
    nchwc: ClassVar[bool] = True

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
    in_place: ClassVar[bool] = False
    fp32_ops: ClassVar[frozenset[str]] = frozenset({"Softmax"})
    probability_output: ClassVar[bool] = True

    def lower(self, g, xs, shapes, out):
        return g.op("Softmax", xs, axis=1)

    def torch(self, node, emit):
        return emit.call("torch.softmax", emit.x, 1)

    def vjp(self, g, xs, shapes, out, y, dy):
        """dx = y * (dy - sum_c dy * y)."""
        dot = g.op("ReduceSum", [g.op("Mul", [dy, y]), g.ints([1])], keepdims=1)
        return [g.op("Mul", [y, g.op("Sub", [dy, dot])])], {}


@register
class Identity(Elementwise):
    """x."""
    op: Literal["identity"] = "identity"
    nchwc: ClassVar[bool] = True

    def lower(self, g, xs, shapes, out):
        return g.op("Identity", xs)

    def torch(self, node, emit):
        return emit.x

    def vjp(self, g, xs, shapes, out, y, dy):
        return [dy], {}


class RandomMask(Layer):
    """What dropout and drop_path share: the identity at inference; in training x times a
    keep mask drawn with hashed_uniform (kept where uniform >= rate) and scaled by
    1/(1 - rate) (by 1 at rate 1, where nothing is kept); the backward rule multiplies by the
    same mask. Subclasses say how many draws there are and what shape the mask takes."""
    rate: float
    in_place: ClassVar[bool] = True  # onnxruntime removes the inference Identity

    def blocked(self, node, inputs, block):
        return all(inputs)

    def mask_layout(self, g, xs, shapes) -> tuple[str, str]:
        """(a 0-d int64: the number of draws, the int64 shape the mask is reshaped to)."""
        raise NotImplementedError  # abstract: each subclass says which elements share a draw

    def lower(self, g, xs, shapes, out):
        return g.op("Identity", xs)

    def torch(self, node, emit):
        """torch draws its own masks (not the hashed ones): the same at inference only."""
        return emit.call("F.dropout", emit.x, self.rate, emit.code("self.training"))

    def lower_train(self, g, xs, shapes, out):
        if self.rate == 0:
            return g.op("Identity", xs)
        count, target = self.mask_layout(g, xs, shapes)
        keep = g.op("Cast", [g.op("GreaterOrEqual", [hashed_uniform(g, count),
                                                     g.scalar(self.rate)])], to=g.FLOAT)
        scale = 1 / (1 - self.rate) if self.rate < 1 else 1.0
        mask = g.op("Reshape", [g.op("Mul", [keep, g.scalar(scale)]), target])
        g.keep(KeepMask(mask))
        return g.op("Mul", [xs[0], mask])

    def vjp(self, g, xs, shapes, out, y, dy):
        if self.rate == 0:  # no mask was made: the identity
            return [dy], {}
        return [g.op("Mul", [dy, g.kept(KeepMask).value])], {}


@dataclass(frozen=True)
class KeepMask:
    """A training forward's scaled keep mask, for the backward rule."""

    value: str


@register
class Dropout(RandomMask):
    """Zeroes a fraction `rate` of the elements in training (scaling the rest by 1/(1-rate));
    the identity at inference.

    The training mask is a function of (training step, node id, element index) only, not a
    random op (see hashed_uniform): the same run gives the same masks on every host and after
    a resume, and a new step gives new masks. An element is kept when its uniform >= rate."""
    op: Literal["dropout"] = "dropout"
    rate: float = Field(0.5, ge=0, lt=1)  # at 1 every element drops and the rest scale by 1/0

    def mask_layout(self, g, xs, shapes):
        """One draw per element."""
        shape = g.op("Shape", xs)
        return g.op("ReduceProd", [shape], keepdims=0), shape


def hashed_uniform(g, count: str) -> str:
    """[count] floats in [0, 1) (count: a 0-d int64 value), a function of (training step, node
    id, index) only. Each index, salted with the step and the node, goes twice through the LCG
    h -> (1103515245 h + 12345) mod 2^31 (in int64, without overflow); the result is h / 2^31."""
    index = g.op("Range", [scalar_int(g, 0), count, scalar_int(g, 1)])
    salt = g.op("Mul", [g.step, g.ints([1 << 20])])
    node = g.ints([zlib.crc32(g.node_id.encode()) % (1 << 20)])
    h = g.op("Add", [index, g.op("Add", [salt, node])])
    for _ in range(2):
        h = g.op("Mod", [h, g.ints([1 << 31])])
        h = g.op("Add", [g.op("Mul", [h, g.ints([1103515245])]), g.ints([12345])])
    h = g.op("Mod", [h, g.ints([1 << 31])])
    return g.op("Div", [g.op("Cast", [h], to=g.FLOAT), g.scalar(float(1 << 31))])


def scalar_int(g, value: int) -> str:
    """A 0-d int64 (Range wants scalars; g.ints makes 1-d tensors)."""
    return g.op("Squeeze", [g.ints([value])])


# PyTorch's activations, each exactly as torch.nn defines it, forward and backward (the
# backward rules follow the derivative formulas of torch's autograd, kinks included). In fp16
# all but Softplus stay within fp16's own rounding (1.2e-3 of max(|y|, 1) over -60..60).

SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def passes(g, dy: str, x: str, low: float | None, high: float | None, closed: bool = False):
    """dy where low < x < high (low <= x <= high when closed), else 0; None: no bound."""
    less, greater = ("LessOrEqual", "GreaterOrEqual") if closed else ("Less", "Greater")
    tests = [g.op(greater, [x, g.scalar(low)])] if low is not None else []
    tests += [g.op(less, [x, g.scalar(high)])] if high is not None else []
    inside = tests[0] if len(tests) == 1 else g.op("And", tests)
    return g.op("Where", [inside, dy, g.scalar(0.0)])


def elu_slope(g, x: str, scale: float, alpha: float) -> str:
    """d/dx of scale * elu(x, alpha): scale for x > 0, else scale * alpha * exp(min(x, 0))."""
    negative = g.op("Exp", [g.op("Min", [x, g.scalar(0.0)])])
    negative = g.op("Mul", [negative, g.scalar(scale * alpha)])
    return g.op("Where", [g.op("Greater", [x, g.scalar(0.0)]), g.scalar(scale), negative])


@register
class Relu6(Elementwise):
    """min(max(x, 0), 6) (torch.nn.ReLU6, hardtanh(x, 0, 6)); the gradient flows where
    0 < x < 6 (torch's hardtanh backward)."""
    torch_fn: ClassVar[str] = "F.relu6"
    op: Literal["relu6"] = "relu6"
    nchwc: ClassVar[bool] = True

    def lower(self, g, xs, shapes, out):
        return g.op("Clip", [xs[0], g.scalar(0.0), g.scalar(6.0)])

    def vjp(self, g, xs, shapes, out, y, dy):
        return [passes(g, dy, xs[0], 0.0, 6.0)], {}


@register
class Clip(Elementwise):
    """min(max(x, min), max) (torch.clamp): either bound may be left out, not both, and
    min <= max. The gradient flows where min <= x <= max (torch's clamp backward)."""
    op: Literal["clip"] = "clip"
    nchwc: ClassVar[bool] = True
    min: float | None = Field(None, allow_inf_nan=False)
    max: float | None = Field(None, allow_inf_nan=False, validate_default=True)

    @field_validator("max")
    @classmethod
    def _bounds(cls, high, info):
        low = info.data.get("min")  # absent when min itself was refused: that error shows
        if "min" in info.data and high is None and low is None:
            raise ValueError("clip needs `min`, `max` or both (torch.clamp's rule)")
        if None not in (low, high) and high < low:
            raise ValueError(f"max must be at least min ({low})")
        return high

    def lower(self, g, xs, shapes, out):
        bounds = [g.scalar(b) if b is not None else "" for b in (self.min, self.max)]
        return g.op("Clip", [xs[0], *bounds])

    def torch(self, node, emit):
        bounds = {k: v for k, v in (("min", self.min), ("max", self.max)) if v is not None}
        return emit.call("torch.clamp", emit.x, **bounds)

    def vjp(self, g, xs, shapes, out, y, dy):
        return [passes(g, dy, xs[0], self.min, self.max, closed=True)], {}


@register
class HardSigmoid(Elementwise):
    """relu6(x + 3) / 6 (torch.nn.Hardsigmoid), as ONNX HardSigmoid with alpha 1/6 and beta
    1/2: max(0, min(1, x/6 + 1/2)). Gradient 1/6 where -3 < x < 3, else 0 (torch's)."""
    torch_fn: ClassVar[str] = "F.hardsigmoid"
    op: Literal["hardsigmoid"] = "hardsigmoid"
    nchwc: ClassVar[bool] = True

    def lower(self, g, xs, shapes, out):
        return g.op("HardSigmoid", xs, alpha=1 / 6, beta=0.5)

    def vjp(self, g, xs, shapes, out, y, dy):
        return [passes(g, g.op("Mul", [dy, g.scalar(1 / 6)]), xs[0], -3.0, 3.0)], {}


@register
class HardSwish(Elementwise):
    """x * relu6(x + 3) / 6 (torch.nn.Hardswish), as x * HardSigmoid(x) (onnxruntime's CPU
    provider has no HardSwish kernel). Gradient (torch's): 0 below -3, x/3 + 1/2 up to 3, 1."""
    torch_fn: ClassVar[str] = "F.hardswish"
    op: Literal["hardswish"] = "hardswish"
    nchwc: ClassVar[bool] = True

    def lower(self, g, xs, shapes, out):
        return g.op("Mul", [xs[0], g.op("HardSigmoid", xs, alpha=1 / 6, beta=0.5)])

    def vjp(self, g, xs, shapes, out, y, dy):
        x = xs[0]
        ramp = g.op("Add", [g.op("Mul", [x, g.scalar(1 / 3)]), g.scalar(0.5)])
        slope = g.op("Where", [g.op("Greater", [x, g.scalar(3.0)]), g.scalar(1.0), ramp])
        slope = g.op("Where", [g.op("Less", [x, g.scalar(-3.0)]), g.scalar(0.0), slope])
        return [g.op("Mul", [dy, slope])], {}


@register
class Mish(Elementwise):
    """x * tanh(softplus(x)) (torch.nn.Mish), from Softplus, Tanh and Mul (onnxruntime's CPU
    provider has no Mish kernel). d/dx = t + x * sigmoid(x) * (1 - t^2), t = tanh(softplus(x)).
    Softplus stays fp32 (see Softplus): in fp16, mish(-7.6) = -0.0038 came out 0 or -0.0074."""
    torch_fn: ClassVar[str] = "F.mish"
    op: Literal["mish"] = "mish"
    fp32_ops: ClassVar[frozenset[str]] = frozenset({"Softplus"})

    def workspace(self, node):
        """softplus(x), made tanh in place, which x is then multiplied by."""
        return [node.shape]

    def lower(self, g, xs, shapes, out):
        return g.op("Mul", [xs[0], g.op("Tanh", [g.op("Softplus", xs)])])

    def vjp(self, g, xs, shapes, out, y, dy):
        t = g.op("Tanh", [g.op("Softplus", xs)])
        sech2 = g.op("Sub", [g.scalar(1.0), g.op("Mul", [t, t])])
        slope = g.op("Add", [t, g.op("Mul", [g.op("Mul", [xs[0], g.op("Sigmoid", xs)]), sech2])])
        return [g.op("Mul", [dy, slope])], {}


@register
class Elu(Elementwise):
    """x if x > 0 else alpha * (exp(x) - 1) (torch.nn.ELU). Gradient 1 for x > 0, else
    alpha * exp(x) (torch's: so 0 at x = 0 gets alpha)."""
    op: Literal["elu"] = "elu"
    alpha: float = Field(1.0, allow_inf_nan=False)

    def lower(self, g, xs, shapes, out):
        return g.op("Elu", xs, alpha=self.alpha)

    def torch(self, node, emit):
        return emit.call("F.elu", emit.x, self.alpha)

    def vjp(self, g, xs, shapes, out, y, dy):
        return [g.op("Mul", [dy, elu_slope(g, xs[0], 1.0, self.alpha)])], {}


@register
class Selu(Elementwise):
    """scale * (x if x > 0 else alpha * (exp(x) - 1)) with torch.nn.SELU's alpha
    1.6732632423543772 and scale 1.0507009873554805 (ONNX Selu's gamma). Gradient scale for
    x > 0, else scale * alpha * exp(x)."""
    torch_fn: ClassVar[str] = "F.selu"
    op: Literal["selu"] = "selu"

    def lower(self, g, xs, shapes, out):
        return g.op("Selu", xs, alpha=SELU_ALPHA, gamma=SELU_SCALE)

    def vjp(self, g, xs, shapes, out, y, dy):
        return [g.op("Mul", [dy, elu_slope(g, xs[0], SELU_SCALE, SELU_ALPHA)])], {}


@register
class Softplus(Elementwise):
    """log(1 + exp(beta * x)) / beta, and x itself where beta * x > threshold
    (torch.nn.Softplus). Gradient sigmoid(beta * x), 1 above the threshold (torch's).
    Softplus stays fp32: log(exp(x) + 1) in fp16 is inf from x = 11.1 on (below torch's
    threshold 20) and 0 or 0.001 below x = -7.6 (1 + exp(x) rounds to 1); onnxruntime's CPU
    fp16 kernel gives inf from x = 89."""
    op: Literal["softplus"] = "softplus"
    fp32_ops: ClassVar[frozenset[str]] = frozenset({"Softplus"})
    in_place: ClassVar[bool] = False  # Where writes anew
    beta: float = Field(1.0, gt=0, allow_inf_nan=False)
    threshold: float = Field(20.0, allow_inf_nan=False)

    def workspace(self, node):
        """The smooth branch, held while Where picks between it and x."""
        return [node.shape]

    def lower(self, g, xs, shapes, out):
        scaled = self.scaled(g, xs[0])
        smooth = g.op("Softplus", [scaled])
        if self.beta != 1:
            smooth = g.op("Div", [smooth, g.scalar(self.beta)])
        return g.op("Where", [self.linear(g, scaled), xs[0], smooth])

    def torch(self, node, emit):
        return emit.call("F.softplus", emit.x, self.beta, self.threshold)

    def vjp(self, g, xs, shapes, out, y, dy):
        scaled = self.scaled(g, xs[0])
        slope = g.op("Where", [self.linear(g, scaled), g.scalar(1.0), g.op("Sigmoid", [scaled])])
        return [g.op("Mul", [dy, slope])], {}

    def scaled(self, g, x: str) -> str:
        return x if self.beta == 1 else g.op("Mul", [x, g.scalar(self.beta)])

    def linear(self, g, scaled: str) -> str:
        return g.op("Greater", [scaled, g.scalar(self.threshold)])


@register
class PRelu(Elementwise):
    """x if x > 0 else a * x (torch.nn.PReLU), with a learned slope a: one shared
    (`channels: 1`, torch's num_parameters=1) or one per channel (`channels: C`, C the input's
    axis 1), broadcast along axis 1. Parameter: weight [channels], initialised to 0.25 (torch).
    Gradients (torch's): dx = dy where x > 0, else a * dy; da = sum of dy * min(x, 0) over
    every axis but the channel's (over every axis for one shared slope)."""
    op: Literal["prelu"] = "prelu"
    channels: int = Field(1, ge=1)

    def infer(self, shapes: list[Shape]) -> Shape:
        x = shapes[0]
        if not x or self.channels not in (1, x[0]):
            raise ShapeError("prelu has one shared slope or one per channel (axis 1)",
                             expected=f"channels: 1 or {x[0] if x else 'C'}",
                             received=f"channels: {self.channels} for {fmt_shape(x)}")
        return x

    def params(self, shapes: list[Shape]) -> dict[str, Param]:
        return {"weight": Param((self.channels,), 0.25)}

    def lower(self, g, xs, shapes, out):
        return g.op("PRelu", [xs[0], self.slope(g, shapes[0])])

    def torch(self, node, emit):
        return emit.call(emit.module("nn.PReLU", self.channels), emit.x)

    def vjp(self, g, xs, shapes, out, y, dy):
        x, rank = xs[0], len(shapes[0]) + 1
        scaled = g.op("Mul", [dy, self.slope(g, shapes[0])])
        dx = g.op("Where", [g.op("Greater", [x, g.scalar(0.0)]), dy, scaled])
        axes = range(rank) if self.channels == 1 else [0, *range(2, rank)]
        negative = g.op("Mul", [dy, g.op("Min", [x, g.scalar(0.0)])])
        da = g.op("ReduceSum", [negative, g.ints(axes)], keepdims=0)
        return [dx], {"weight": g.op("Reshape", [da, g.ints([self.channels])])}

    def slope(self, g, shape: Shape) -> str:
        """The weight shaped [C, 1, ...] to broadcast along axis 1 ([1] broadcasts anywhere)."""
        if self.channels == 1 or len(shape) == 1:
            return g.param("weight")
        ones = [1] * (len(shape) - 1)
        return g.op("Reshape", [g.param("weight"), g.ints([self.channels, *ones])])
