"""Resampling without weights: upsample, maxunpool, subsample, crop, pad (any spatial rank).

- upsample: out = L * scale per axis. `nearest` duplicates every input position `scale` times
  (input index floor(o / scale); ONNX Resize nearest, asymmetric, floor). `linear` interpolates
  between the two nearest inputs (bilinear in 2D, trilinear in 3D) at the source coordinate
  x = (o + 0.5) / scale - 0.5 clamped to [0, L-1] (align_corners: false, PyTorch's and ONNX's
  half_pixel), or x = o * (L-1) / (L*scale - 1) (align_corners: true: the corner samples meet).
- maxunpool: inputs [previous, pool]; puts each value back at the argmax position the maxpool
  `pool` recorded, zeros elsewhere; out = that pool's input shape. The pool's lowering emits
  its Indices when some maxunpool needs them (`needs`, asked before lowering starts).
- subsample: keeps positions 0, k, 2k, ...: out = ceil(L / k).
- crop: center crop to `size` or to the spatial size of the node `like` (inputs [previous,
  like]); the start offset per axis is floor((L - target) / 2).
- pad: constant `value` around each spatial axis (batch and channels unpadded): out = L + b + e.
"""
from __future__ import annotations

from fractions import Fraction
from typing import ClassVar, Literal

import numpy as np
from pydantic import model_validator

from ..errors import ShapeError
from .base import Layer, Shape, Window, fmt_shape, product, register
from .pool import MaxPoolBase, PoolIndices
from .spatial import _pair, per_axis, torch_pads


INT64_MAX = 2**63 - 1  # a Slice end meaning "to the end of the axis"
TORCH_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}  # F.interpolate's mode by rank


def spatial(layer: Layer, shape: Shape) -> int:
    """The number of spatial axes of a channels-first input, refusing flat inputs."""
    if len(shape) < 2:
        raise ShapeError(f"{layer.op_name} needs spatial axes", expected="[N, C, L] or more",
                         received=fmt_shape(shape))
    return len(shape) - 1


def identity_window(shape: Shape) -> Window:
    rank = len(shape) - 1
    return Window((1,) * rank, (Fraction(1),) * rank)


@register
class Upsample(Layer):
    """Upsampling by an integer factor per spatial axis, nearest or (multi)linear."""
    op: Literal["upsample"] = "upsample"
    draw_family: ClassVar[str] = "upsample"
    scale: int | list[int]
    mode: Literal["nearest", "linear"] = "nearest"
    align_corners: bool = False

    def factors(self, shape: Shape) -> tuple[int, ...]:
        s = per_axis(self.scale, spatial(self, shape), "scale")
        if min(s) < 1:
            raise ShapeError("upsample scale must be at least 1", received=str(self.scale))
        return s

    def infer(self, shapes: list[Shape]) -> Shape:
        x = shapes[0]
        return (x[0], *(L * s for L, s in zip(x[1:], self.factors(x))))

    def blocked(self, node, inputs, block):
        """onnxruntime upsamples a blocked 2D map by whole factors in its blocked layout
        (nearest only)."""
        return self.mode == "nearest" and inputs[0] and len(node.shape) == 3

    def macs(self, shapes, out) -> int:
        """Linear: one multiply per corner of the interpolation cell."""
        return product(out) * 2 ** (len(out) - 1) if self.mode == "linear" else 0

    def window(self, shapes: list[Shape]) -> Window:
        s = self.factors(shapes[0])
        extent = 2 if self.mode == "linear" else 1
        return Window((extent,) * len(s), tuple(Fraction(1, f) for f in s))

    def lower(self, g, xs, shapes, out):
        scales = np.array([1, 1, *self.factors(shapes[0])], np.float32)
        if self.mode == "nearest":
            attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                         nearest_mode="floor")
        else:
            attrs = dict(mode="linear", coordinate_transformation_mode="align_corners"
                         if self.align_corners else "half_pixel")
        return g.op("Resize", [xs[0], "", g.array("scales", scales)], **attrs)

    def torch(self, node, emit):
        scale = emit.axes(self.factors(node.in_shapes[0]), self.scale)
        if self.mode == "nearest":
            return emit.call("F.interpolate", emit.x, scale_factor=scale)
        mode = TORCH_LINEAR[len(node.in_shapes[0]) - 1]
        return emit.call("F.interpolate", emit.x, scale_factor=scale, mode=mode,
                         align_corners=self.align_corners)

    def vjp(self, g, xs, shapes, out, y, dy):
        """nearest: each input position sums its `scale` copies (Reshape + ReduceSum); linear:
        per axis, dy times the transposed interpolation matrix of that axis."""
        x = shapes[0]
        if self.mode == "nearest":
            split = [0, x[0], *(v for L, f in zip(x[1:], self.factors(x)) for v in (L, f))]
            blocks = g.op("Reshape", [dy, g.ints(split)])
            return [g.op("ReduceSum", [blocks, g.ints(range(3, 2 * len(x), 2))], keepdims=0)], {}
        return [self.along_axes(g, dy, x, lambda L, f: self.interpolation(L, L * f))], {}

    def lower_portable(self, g, xs, shapes, out):
        """Resize's rounding and coordinate rules differ between ONNX hosts: nearest as
        Reshape + Expand ([N, C, L1, ...] -> [N, C, L1, 1, ...] -> [.., L1, s1, ..] ->
        [N, C, L1*s1, ..]); linear as the input times each axis's constant interpolation
        matrix (the transpose of what the backward rule multiplies by)."""
        x = shapes[0]
        if self.mode == "linear":
            return self.along_axes(g, xs[0], x, lambda L, f: self.interpolation(L, L * f).T)
        split = [0, 0, *(v for L in x[1:] for v in (L, 1))]
        wide = [1, 1, *(v for L, f in zip(x[1:], self.factors(x)) for v in (L, f))]
        y = g.op("Expand", [g.op("Reshape", [xs[0], g.ints(split)]), g.ints(wide)])
        return g.op("Reshape", [y, g.ints([0, 0, *out[1:]])])

    def along_axes(self, g, value: str, shape: Shape, matrix_of) -> str:
        """Per spatial axis with a factor above 1: that axis moved last, times the constant
        matrix_of(length, factor), moved back."""
        for axis, (L, f) in enumerate(zip(shape[1:], self.factors(shape)), start=2):
            if f == 1:
                continue
            perm = list(range(len(shape) + 1))
            perm[axis], perm[-1] = perm[-1], axis
            moved = g.op("Transpose", [value], perm=perm)
            weights = g.array(f"interp{axis}", matrix_of(L, f))
            value = g.op("Transpose", [g.op("MatMul", [moved, weights])], perm=perm)
        return value

    def interpolation(self, length: int, size: int) -> np.ndarray:
        """[size, length]: output o = sum_i A[o, i] x[i], by the source coordinates above."""
        o = np.arange(size, dtype=np.float64)
        if self.align_corners:
            src = o * (length - 1) / (size - 1) if size > 1 else np.zeros(size)
        else:
            src = np.clip((o + 0.5) * length / size - 0.5, 0, length - 1)
        low = np.floor(src).astype(int)
        high = np.minimum(low + 1, length - 1)
        matrix = np.zeros((size, length), np.float32)
        np.add.at(matrix, (np.arange(size), low), 1 - (src - low))
        np.add.at(matrix, (np.arange(size), high), src - low)
        return matrix


@register
class MaxUnpool(Layer):
    """The inverse placement of a maxpool: values go back to the argmax positions.
    Its window is the identity: the receptive field keeps the pool's jump (a coarse bound;
    window() sees shapes only, not the pool's stride)."""
    op: Literal["maxunpool"] = "maxunpool"
    draw_family: ClassVar[str] = "upsample"
    pool: str
    arity: ClassVar[tuple[int, int | None]] = (2, 2)
    skip_kind: ClassVar[str] = "unpool"

    def wiring(self, previous: str | None) -> list[str]:
        return super().wiring(previous) + [self.pool]

    def shape_inputs(self) -> list[int]:
        return [1]  # the pool's output is not read, its indices are (needs)

    def infer_with(self, shapes: list[Shape], sources: list) -> Shape:
        source = sources[1]
        if source is None or not isinstance(source.layer, MaxPoolBase):
            what = f"a {source.op} node" if source is not None else "a network input"
            raise ShapeError(f"maxunpool pool '{self.pool}' names {what}",
                             expected="the id of a maxpool1d/2d/3d node")
        if shapes[0] != source.shape:
            raise ShapeError("maxunpool input must be shaped like its pool's output",
                             expected=fmt_shape(source.shape), received=fmt_shape(shapes[0]))
        return source.in_shapes[0]

    def infer(self, shapes: list[Shape]) -> Shape:
        raise ShapeError("maxunpool needs its pool node's geometry (checker without infer_with)")

    def needs(self, inputs: list[str]) -> list[tuple[str, type]]:
        return [(inputs[1], PoolIndices)]

    def window(self, shapes: list[Shape]) -> Window:
        return identity_window(shapes[0])

    def lower(self, g, xs, shapes, out):
        """Scatter into zeros by MaxPool's flat indices (they count over N, C and space).
        ONNX MaxUnpool would say the same, but ONNX shape inference cannot size its output
        from a runtime output_shape and onnx.reference sizes it from the pool attributes."""
        batch = g.op("Slice", [g.op("Shape", [xs[0]]), g.ints([0]), g.ints([1])])
        zeros = g.op("ConstantOfShape", [g.op("Mul", [batch, g.ints([product(out)])])])
        flat = [g.op("Reshape", [v, g.ints([-1])]) for v in (xs[0], g.kept(PoolIndices, xs[1]).value)]
        y = g.op("ScatterElements", [zeros, flat[1], flat[0]], axis=0)
        return g.op("Reshape", [y, g.ints([-1, *out])])

    def torch(self, node, emit):
        """F.max_unpoolNd with its pool's indices and geometry, to the pool's input size."""
        pool = emit.source(1).layer
        k, s, _ = pool.geometry()
        padding = pool.torch_padding(node.shape) or [0] * len(k)
        size = [(L - 1) * ss - 2 * p + kk for L, ss, p, kk in zip(node.in_shapes[0][1:], s, padding, k)]
        return emit.call(f"F.max_unpool{len(k)}d", emit.x, emit.kept(PoolIndices, 1),
                         emit.axes(k), emit.axes(s), padding=emit.opt(emit.axes(padding), 0),
                         output_size=emit.opt(list(node.shape[1:]), size))

    def vjp(self, g, xs, shapes, out, y, dy):
        """Each input value reads back the gradient at its argmax position (the pool input
        only supplied positions: no gradient flows into it from here)."""
        flat = [g.op("Reshape", [v, g.ints([-1])]) for v in (dy, g.kept(PoolIndices, xs[1]).value)]
        picked = g.op("GatherElements", flat, axis=0)
        return [g.op("Reshape", [picked, g.ints([-1, *shapes[0]])]), None], {}


@register
class Subsample(Layer):
    """Keep every `factor`-th position on each spatial axis, starting at 0."""
    op: Literal["subsample"] = "subsample"
    draw_family: ClassVar[str] = "pool"
    factor: int | list[int]

    def factors(self, shape: Shape) -> tuple[int, ...]:
        k = per_axis(self.factor, spatial(self, shape), "factor")
        if min(k) < 1:
            raise ShapeError("subsample factor must be at least 1", received=str(self.factor))
        return k

    def infer(self, shapes: list[Shape]) -> Shape:
        x = shapes[0]
        return (x[0], *(-(-L // k) for L, k in zip(x[1:], self.factors(x))))

    def window(self, shapes: list[Shape]) -> Window:
        k = self.factors(shapes[0])
        return Window((1,) * len(k), tuple(map(Fraction, k)))

    def lower(self, g, xs, shapes, out):
        x = shapes[0]
        axes = range(2, len(x) + 1)
        ends = g.ints([INT64_MAX] * len(axes))  # to the end of any length: dynamic sizes
        return g.op("Slice", [xs[0], g.ints([0] * len(axes)), ends, g.ints(axes),
                              g.ints(self.factors(x))])

    def torch(self, node, emit):
        factors = self.factors(node.in_shapes[0])
        return emit.fmt("{}[:, :, " + ", ".join(["::{}"] * len(factors)) + "]", emit.x, *factors)

    def vjp(self, g, xs, shapes, out, y, dy):
        """Gradients back at every k-th position, zeros between: a depthwise ConvTranspose
        with a single-tap ones kernel and stride k, zero-padded at the end to the input size."""
        x, k = shapes[0], self.factors(shapes[0])
        ones = g.array("ones", np.ones((x[0], 1, *[1] * len(k)), np.float32))
        dx = g.op("ConvTranspose", [dy, ones], kernel_shape=[1] * len(k), strides=list(k),
                  group=x[0])
        short = [L - ((m - 1) * kk + 1) for L, m, kk in zip(x[1:], out[1:], k)]
        pads = [0] * len(k) + short
        return [g.op("Pad", [dx, g.ints(pads), "", g.ints(range(2, len(x) + 1))])], {}


@register
class Crop(Layer):
    """Center crop to `size`, or to the spatial size of the node `like` (U-Net skips)."""
    op: Literal["crop"] = "crop"
    draw_family: ClassVar[str] = "crop"
    like: str | None = None
    size: list[int] | None = None
    arity: ClassVar[tuple[int, int | None]] = (1, 2)
    skip_kind: ClassVar[str] = "crop"

    @model_validator(mode="after")
    def _one_target(self):
        if (self.like is None) == (self.size is None):
            raise ValueError("crop takes exactly one of `like` (a node id) or `size` (a list)")
        return self

    def wiring(self, previous: str | None) -> list[str]:
        return super().wiring(previous) + ([self.like] if self.like else [])

    def shape_inputs(self) -> list[int]:
        return [1]  # `like`

    def target(self, shapes: list[Shape]) -> tuple[int, ...]:
        x = shapes[0]
        rank = spatial(self, x)
        want = tuple(shapes[1][1:]) if self.like else tuple(self.size)
        if len(want) != rank:
            raise ShapeError("crop target needs one size per spatial axis",
                             expected=f"{rank} sizes", received=str(list(want)))
        if any(t > L or t < 1 for t, L in zip(want, x[1:])):
            raise ShapeError("crop target is larger than the input (or below 1)",
                             expected=f"sizes between 1 and {list(x[1:])}",
                             received=str(list(want)), hint="use op: pad to enlarge")
        if self.like and any((L - t) % 2 for t, L in zip(want, x[1:])):
            # an odd margin would shift the cropped map half a position off the `like` map's
            # center: the skip would join misaligned features (U-Net's tiling rule)
            raise ShapeError(f"crop like '{self.like}' needs an even margin on every axis to "
                             "center the crop exactly", expected="input - target even",
                             received=f"{list(x[1:])} -> {list(want)}")
        return want

    def offsets(self, shapes: list[Shape]) -> list[int]:
        return [(L - t) // 2 for L, t in zip(shapes[0][1:], self.target(shapes))]

    def infer(self, shapes: list[Shape]) -> Shape:
        return (shapes[0][0], *self.target(shapes))

    def window(self, shapes: list[Shape]) -> Window:
        return identity_window(shapes[0])

    def lower(self, g, xs, shapes, out):
        starts = self.offsets(shapes)
        # ends counted from the far side (negative) when there is a margin there: the same
        # Slice then fits every input size with the same margins (dynamic spatial axes)
        ends = [-(L - b - t) if L - b - t else INT64_MAX
                for L, b, t in zip(shapes[0][1:], starts, out[1:])]
        return g.op("Slice", [xs[0], g.ints(starts), g.ints(ends),
                              g.ints(range(2, len(out) + 1))])

    def torch(self, node, emit):
        """center_crop(x, size) (a helper), the size read from `like` at run time."""
        size = emit.xs[1] + ".shape[2:]" if self.like else self.size
        return emit.call(emit.helper("center_crop", CENTER_CROP), emit.x, size)

    def vjp(self, g, xs, shapes, out, y, dy):
        """dy zero-padded back to the input's size; `like` only gave a size."""
        starts = self.offsets(shapes)
        ends = [L - b - t for L, b, t in zip(shapes[0][1:], starts, out[1:])]
        dx = g.op("Pad", [dy, g.ints(starts + ends), "", g.ints(range(2, len(out) + 1))])
        return [dx] + [None] * (len(xs) - 1), {}


@register
class Pad(Layer):
    """Constant padding of the spatial axes: an int, one per axis, or [begin, end] per axis."""
    op: Literal["pad"] = "pad"
    draw_family: ClassVar[str] = "crop"
    pads: int | list[int | list[int]]
    value: float = 0.0

    def pairs(self, shape: Shape) -> list[tuple[int, int]]:
        rank = spatial(self, shape)
        if isinstance(self.pads, int):
            out = [(self.pads, self.pads)] * rank
        elif len(self.pads) != rank:
            raise ShapeError("pads needs one entry per spatial axis", expected=f"{rank} entries",
                             received=str(self.pads))
        else:
            out = [_pair(p) for p in self.pads]
        if min(sum(out, ())) < 0:
            raise ShapeError("pads must be at least 0", received=str(self.pads),
                             hint="use op: crop to shrink")
        return out

    def infer(self, shapes: list[Shape]) -> Shape:
        x = shapes[0]
        return (x[0], *(L + b + e for L, (b, e) in zip(x[1:], self.pairs(x))))

    def window(self, shapes: list[Shape]) -> Window:
        return identity_window(shapes[0])

    def lower(self, g, xs, shapes, out):
        pairs = self.pairs(shapes[0])
        pads = [0, 0] + [b for b, _ in pairs] + [0, 0] + [e for _, e in pairs]
        return g.op("Pad", [xs[0], g.ints(pads), g.scalar(self.value)], mode="constant")

    def torch(self, node, emit):
        pads = torch_pads(self.pairs(node.in_shapes[0]))
        return emit.call("F.pad", emit.x, pads, value=emit.opt(self.value, 0.0))

    def vjp(self, g, xs, shapes, out, y, dy):
        pairs, x = self.pairs(shapes[0]), shapes[0]
        starts = [b for b, _ in pairs]
        ends = [b + L for (b, _), L in zip(pairs, x[1:])]
        return [g.op("Slice", [dy, g.ints(starts), g.ints(ends), g.ints(range(2, len(x) + 1))])], {}


CENTER_CROP = '''
def center_crop(x, size):
    """The middle `size` positions of each spatial axis (floor((L - size) / 2) cut first)."""
    starts = [(n - s) // 2 for n, s in zip(x.shape[2:], size)]
    return x[(slice(None), slice(None), *(slice(b, b + s) for b, s in zip(starts, size)))]
'''
