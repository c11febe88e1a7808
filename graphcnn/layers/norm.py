"""Batch normalization, 1D/2D/3D.

y = (x - mean) / sqrt(var + eps) * weight + bias per channel. The shape is unchanged; trainable
parameters weight and bias [C] (2C, as PyTorch counts them); running_mean and running_var [C]
are state, not parameters. batchnorm1d takes [N, C] or [N, C, L].
lrn: local response normalization across channels (no parameters; see Lrn).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from ..errors import ShapeError
from .base import Layer, Param, Shape, need_rank, product, register


class BatchNormBase(Layer):
    ranks: ClassVar[tuple[int, ...]]
    fp32_ops: ClassVar[frozenset[str]] = frozenset({"BatchNormalization"})
    draw_family: ClassVar[str] = "norm"
    in_place: ClassVar[bool] = True  # folded into the conv before it, else run in place
    folds_into_conv: ClassVar[bool] = True
    eps: float = Field(1e-5, gt=0, allow_inf_nan=False)  # 1/sqrt(var + eps); var is 0 on a flat map
    momentum: float = Field(0.1, ge=0, le=1)  # new = (1 - momentum) * old + momentum * batch

    def infer(self, shapes: list[Shape]) -> Shape:
        need_rank(self, shapes[0], self.ranks, "an input with channels first")
        return shapes[0]

    def params(self, shapes: list[Shape]) -> dict[str, Param]:
        c = (shapes[0][0],)
        return {"weight": Param(c, "ones"), "bias": Param(c, "zeros"),
                "running_mean": Param(c, "zeros", trainable=False),
                "running_var": Param(c, "ones", trainable=False)}

    def lower(self, g, xs, shapes, out):
        names = ["weight", "bias", "running_mean", "running_var"]
        return g.op("BatchNormalization", [xs[0], *map(g.param, names)], epsilon=self.eps)

    def lower_train(self, g, xs, shapes, out):
        return batchnorm_train(g, xs[0], shapes[0], "", self.eps, self.momentum)

    def torch(self, node, emit):
        bn = emit.helper(*torch_batchnorm(len(node.in_shapes[0]) - 1 or 1))
        module = emit.module(bn, node.in_shapes[0][0], eps=emit.opt(self.eps, 1e-5),
                             momentum=emit.opt(self.momentum, 0.1))
        return emit.call(module, emit.x)

    def vjp(self, g, xs, shapes, out, y, dy):
        dx, grads = batchnorm_vjp(g, dy, shapes[0], "")
        return [dx], grads


NO_COUNTER = ('NoCounter', '''
class NoCounter:
    """A batchnorm without num_batches_tracked: graphcnn's weight files have no such counter,
    so state_dict() holds exactly the spec's weights (and goes back to `compile --weights`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_batches_tracked = None

    def _load_from_state_dict(self, *args, **kwargs):  # torch would add the counter back
        nn.Module._load_from_state_dict(self, *args, **kwargs)
''')


def torch_batchnorm(dims: int) -> tuple:
    """The (name, text, needs) of the generated file's BatchNorm{dims}d."""
    name = f"BatchNorm{dims}d"
    return name, f"class {name}(NoCounter, nn.{name}):\n    pass", (NO_COUNTER,)


@dataclass(frozen=True)
class BatchStats:
    """What a training-mode batchnorm keeps for its backward rule: x - mean, 1/sqrt(var + eps),
    the [N, 1, ...] real-row mask and the number of real positions per channel."""

    centered: str
    inv: str
    rows: str
    count: str


def batchnorm_train(g, x: str, shape: Shape, prefix: str, eps: float, momentum: float) -> str:
    """Training mode from primitive ops (CUDA refuses BatchNormalization's training_mode):
    statistics over the batch's real rows (g.batch_mask; padding rows neither count nor move
    the running statistics), running stats updated as PyTorch does, with the unbiased variance:
    new = (1 - momentum) * old + momentum * batch. Keeps BatchStats for the vjp.
    Full-size passes are the cost (the ops are memory-bound): the mask is applied after the
    spatial sums, on [N, C] values, and y comes from BatchNormalization in inference mode fed
    the batch's statistics, so a forward makes four elementwise passes over x."""
    rows = g.op("Reshape", [g.batch_mask, g.ints([-1] + [1] * len(shape))])
    count = g.op("Mul", [g.op("ReduceSum", [rows], keepdims=0), g.scalar(float(product(shape[1:])))])
    count = g.op("Max", [count, g.scalar(1.0)])
    mean = real_sum(g, spatial_sum(g, x, shape), rows, count)
    centered = g.op("Sub", [x, mean])
    var = real_sum(g, spatial_sum(g, g.op("Mul", [centered, centered]), shape), rows, count)
    inv = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [var, g.scalar(eps)])])])
    unbiased = g.op("Div", [count, g.op("Max", [g.op("Sub", [count, g.scalar(1.0)]), g.scalar(1.0)])])
    for stat, batch in (("running_mean", mean), ("running_var", g.op("Mul", [var, unbiased]))):
        old = g.param(prefix + stat)
        batch = g.op("Reshape", [batch, g.ints([-1])])
        moved = g.op("Mul", [g.op("Sub", [batch, old]), g.scalar(momentum)])
        g.new_state(prefix + stat, g.op("Add", [old, moved]))
    g.keep(BatchStats(centered, inv, rows, count))
    # y from the batch statistics by the inference-mode BatchNormalization op: one pass over
    # x where Mul and Add took two (and 1.6x as long)
    flat = g.ints([-1])
    return g.op("BatchNormalization", [x, g.param(prefix + "weight"), g.param(prefix + "bias"),
                                       g.op("Reshape", [mean, flat]),
                                       g.op("Reshape", [var, flat])], epsilon=eps)


def spatial_sum(g, value: str, shape: Shape) -> str:
    """[N, C, *spatial] -> [N, C, 1, ...] (a flat [N, C] input is its own sum)."""
    if len(shape) == 1:
        return value
    return g.op("ReduceSum", [value, g.ints(range(2, len(shape) + 1))], keepdims=1)


def real_sum(g, per_sample: str, rows: str, count: str) -> str:
    """The mean over the real rows of per-sample sums: [N, C, 1, ...] -> [1, C, 1, ...]."""
    masked = g.op("Mul", [per_sample, rows])
    return g.op("Div", [g.op("ReduceSum", [masked, g.ints([0])], keepdims=1), count])


def batchnorm_vjp(g, dy: str, shape: Shape, prefix: str):
    """dx = inv * (dxhat - rows * (mean(dxhat) + xhat * mean(dxhat * xhat))) with dxhat = w * dy,
    xhat = centered * inv and means over the real rows; a padding row only gets its own path
    inv * dxhat (it moved no statistic). Written as dx = a * dy - (centered * rc + rb) with
    a = inv * w, rb = rows * a * mean(dy), rc = rows * a * inv^2 * mean(dy * centered): four
    full-size passes after the sums instead of ten."""
    stats = g.kept(BatchStats)
    centered, inv, rows, count = stats.centered, stats.inv, stats.rows, stats.count
    by_sample = spatial_sum(g, dy, shape)                               # sum dy
    by_sample_c = spatial_sum(g, g.op("Mul", [dy, centered]), shape)   # sum dy * centered
    all_rows = g.ints([0, *range(2, len(shape) + 1)])
    grads = {prefix + "bias": g.op("ReduceSum", [by_sample, all_rows], keepdims=0),
             prefix + "weight": g.op("Mul", [g.op("ReduceSum", [by_sample_c, all_rows], keepdims=0),
                                             g.op("Reshape", [inv, g.ints([-1])])])}
    a = g.op("Mul", [inv, channel_vector(g, g.param(prefix + "weight"), shape)])
    shift = g.op("Mul", [a, real_sum(g, by_sample, rows, count)])
    # xhat * mean(dxhat * xhat) = centered * inv * (w * inv * mean(dy * centered)), times inv
    slope = g.op("Mul", [g.op("Mul", [a, g.op("Mul", [inv, inv])]), real_sum(g, by_sample_c, rows, count)])
    rb, rc = g.op("Mul", [rows, shift]), g.op("Mul", [rows, slope])
    correction = g.op("Add", [g.op("Mul", [centered, rc]), rb])
    return g.op("Sub", [g.op("Mul", [dy, a]), correction]), grads


def channel_vector(g, v: str, shape: Shape) -> str:
    """A [C] vector shaped [C, 1, ...] to broadcast over [N, C, *spatial]."""
    return v if len(shape) == 1 else g.op("Reshape", [v, g.ints([-1] + [1] * (len(shape) - 1))])


@register
class BatchNorm1d(BatchNormBase):
    """Batch normalization over [N, C] or [N, C, L]."""
    op: Literal["batchnorm1d"] = "batchnorm1d"
    ranks: ClassVar[tuple[int, ...]] = (1, 2)


@register
class BatchNorm2d(BatchNormBase):
    """Batch normalization over [N, C, H, W]."""
    op: Literal["batchnorm2d"] = "batchnorm2d"
    ranks: ClassVar[tuple[int, ...]] = (3,)

    def blocked(self, node, inputs, block):
        """Folded into a blocked conv, or run as a blocked depthwise conv."""
        return all(inputs)


@register
class BatchNorm3d(BatchNormBase):
    """Batch normalization over [N, C, D, H, W]."""
    op: Literal["batchnorm3d"] = "batchnorm3d"
    ranks: ClassVar[tuple[int, ...]] = (4,)


@register
class Lrn(Layer):
    """Local response normalization across channels (AlexNet): no parameters, shape unchanged.

    y_c = x_c / (k + alpha / size * sum of x_j^2 over j in [c - floor((size-1)/2),
    c + ceil((size-1)/2)])^beta, as ONNX LRN (its `bias` is our `k`).
    """
    op: Literal["lrn"] = "lrn"
    fp32_ops: ClassVar[frozenset[str]] = frozenset({"LRN"})
    draw_family: ClassVar[str] = "norm"
    size: int
    # k > 0 and alpha >= 0 keep the base k + alpha/size * sum(x^2) positive, so its power is
    # real; onnxruntime's LRN kernel also refuses alpha or beta that is not above 0
    alpha: float = Field(1e-4, gt=0, allow_inf_nan=False)
    beta: float = Field(0.75, gt=0, allow_inf_nan=False)
    k: float = Field(1.0, gt=0, allow_inf_nan=False)

    def infer(self, shapes: list[Shape]) -> Shape:
        need_rank(self, shapes[0], (2, 3, 4), "an input with channels and spatial axes")
        if self.size < 1 or self.size % 2 == 0:  # onnxruntime runs odd, centred windows only
            raise ShapeError("lrn size must be odd and positive", received=str(self.size))
        return shapes[0]

    def macs(self, shapes: list[Shape], out: Shape) -> int:
        return product(out) * self.size  # one square-and-add per window channel

    def lower(self, g, xs, shapes, out):
        x, shape = xs[0], shapes[0]
        if len(shape) != 3:  # onnxruntime's LRN takes 4D only: fold the spatial axes into one
            x = g.op("Reshape", [x, g.ints([0, shape[0], product(shape[1:]), 1])])
        y = g.op("LRN", [x], size=self.size, alpha=self.alpha, beta=self.beta, bias=self.k)
        return y if len(shape) == 3 else g.op("Reshape", [y, g.ints([0, *shape])])

    def torch(self, node, emit):
        return emit.call("F.local_response_norm", emit.x, self.size, self.alpha, self.beta,
                         self.k)

    def vjp(self, g, xs, shapes, out, y, dy):
        """With S = k + alpha/size * W(x^2) (W: the channel window sum), y = x S^-beta and
        dx = dy S^-beta - 2 alpha beta / size * x * W^T(dy x S^(-beta-1)); W^T sums over the
        mirrored window."""
        x, low = xs[0], (self.size - 1) // 2
        high = self.size - 1 - low
        window = self.channel_sum(g, g.op("Mul", [x, x]), shapes[0], low, high)
        s = g.op("Add", [g.scalar(self.k), g.op("Mul", [window, g.scalar(self.alpha / self.size)])])
        direct = g.op("Mul", [dy, g.op("Pow", [s, g.scalar(-self.beta)])])
        u = g.op("Mul", [g.op("Mul", [dy, x]), g.op("Pow", [s, g.scalar(-self.beta - 1)])])
        back = self.channel_sum(g, u, shapes[0], high, low)
        scale = g.scalar(-2 * self.alpha * self.beta / self.size)
        return [g.op("Add", [direct, g.op("Mul", [g.op("Mul", [x, back]), scale])])], {}

    def channel_sum(self, g, v: str, shape: Shape, before: int, after: int) -> str:
        """sum of v over channels [c - before, c + after]: a ones-kernel conv along channels."""
        column = g.op("Reshape", [v, g.ints([0, 1, shape[0], product(shape[1:])])])
        ones = g.array(f"ones{before}_{after}", np.ones((1, 1, self.size, 1), np.float32))
        summed = g.op("Conv", [column, ones], kernel_shape=[self.size, 1],
                      pads=[before, 0, after, 0])
        return g.op("Reshape", [summed, g.ints([0, *shape])])
