"""Batch normalization, 1D/2D/3D.

y = (x - mean) / sqrt(var + eps) * weight + bias per channel. The shape is unchanged; trainable
parameters weight and bias [C] (2C, as PyTorch counts them); running_mean and running_var [C]
are state, not parameters. batchnorm1d takes [N, C] or [N, C, L].
"""
from __future__ import annotations

from typing import ClassVar, Literal

from .base import Layer, Param, Shape, need_rank, register


class BatchNormBase(Layer):
    ranks: ClassVar[tuple[int, ...]]
    eps: float = 1e-5
    momentum: float = 0.1

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


@register
class BatchNorm3d(BatchNormBase):
    """Batch normalization over [N, C, D, H, W]."""
    op: Literal["batchnorm3d"] = "batchnorm3d"
    ranks: ClassVar[tuple[int, ...]] = (4,)
