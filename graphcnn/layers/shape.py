"""Reshape and permute: rearrange the non-batch axes without computing anything.

- reshape: `shape` lists the sizes without the batch axis; a 0 copies the input's size on the
  same axis (0 = channels), one -1 takes what is left (ONNX Reshape's rule, allowzero 0). The
  element count must match. Lowered with the spec's own sizes and 0 for the batch, so a 0 or
  -1 keeps following the input's size: the model keeps a free batch and, under `--dynamic`,
  free spatial sizes (`[0, -1]` flattens the spatial axes of any size).
- permute: `perm` is a permutation of the non-batch axes, 0-based (0 = channels):
  out[i] = in[perm[i]]; ONNX Transpose with perm [0, perm+1...].
Both may move positions across axes, so the receptive field is reported as the whole input.
"""
from __future__ import annotations

from typing import ClassVar, Literal

from ..errors import ShapeError
from .base import GLOBAL, Layer, Shape, fmt_shape, product, register


@register
class Reshape(Layer):
    """View the non-batch axes with another shape (same number of elements): 0 copies the
    input's size on that axis, one -1 takes what is left."""
    op: Literal["reshape"] = "reshape"
    draw_family: ClassVar[str] = "dense"
    in_place: ClassVar[bool] = True  # a view of its input
    shape: list[int]

    def infer(self, shapes: list[Shape]) -> Shape:
        x, want = shapes[0], list(self.shape)
        if not want or want.count(-1) > 1 or any(d < -1 for d in want):
            raise ShapeError("reshape shape needs sizes of at least 1, 0 (copy) and at most "
                             "one -1", received=str(want))
        if len(x) <= max((i for i, d in enumerate(want) if d == 0), default=-1):
            raise ShapeError("reshape's 0 copies the input's size on the same axis, which "
                             "this input does not have", expected=f"0 only in the first "
                             f"{len(x)} places", received=f"{fmt_shape(x)} -> {self.shape}")
        want = [x[i] if d == 0 else d for i, d in enumerate(want)]
        count, known = product(x), product(d for d in want if d != -1)
        if -1 in want and count % known == 0:
            want[want.index(-1)] = count // known
        if product(want) != count or -1 in want:
            raise ShapeError(f"reshape cannot make {list(self.shape)} from {product(x)} "
                             "elements", expected=f"sizes whose product is {count}",
                             received=f"{fmt_shape(x)} -> {self.shape}")
        return tuple(want)

    def window(self, shapes: list[Shape]) -> str:
        return GLOBAL

    def lower(self, g, xs, shapes, out):
        return g.op("Reshape", [xs[0], g.ints([0, *self.shape])])

    def torch(self, node, emit):
        """x.reshape(batch, *shape), a 0 read from x as ONNX does."""
        sizes = [emit.fmt("{}.shape[" + str(i + 1) + "]", emit.x) if d == 0 else d
                 for i, d in enumerate(self.shape)]
        return emit.call(emit.x + ".reshape", emit.fmt("{}.shape[0]", emit.x), *sizes)

    def vjp(self, g, xs, shapes, out, y, dy):
        """dy back to the input's shape, read at run time (no size written in)."""
        return [g.op("Reshape", [dy, g.op("Shape", [xs[0]])])], {}


@register
class Permute(Layer):
    """Reorder the non-batch axes: out[i] = in[perm[i]] (0 = channels)."""
    op: Literal["permute"] = "permute"
    draw_family: ClassVar[str] = "dense"
    perm: list[int]

    def infer(self, shapes: list[Shape]) -> Shape:
        x = shapes[0]
        if sorted(self.perm) != list(range(len(x))):
            raise ShapeError("permute needs a permutation of the non-batch axes",
                             expected=f"each of 0..{len(x) - 1} once (0 = channels)",
                             received=f"perm={self.perm} for {fmt_shape(x)}")
        return tuple(x[p] for p in self.perm)

    def window(self, shapes: list[Shape]) -> str:
        return GLOBAL

    def lower(self, g, xs, shapes, out):
        return g.op("Transpose", [xs[0]], perm=[0, *(p + 1 for p in self.perm)])

    def torch(self, node, emit):
        return emit.call(emit.x + ".permute", 0, *(p + 1 for p in self.perm))

    def vjp(self, g, xs, shapes, out, y, dy):
        inverse = [self.perm.index(i) for i in range(len(self.perm))]
        return [g.op("Transpose", [dy], perm=[0, *(p + 1 for p in inverse)])], {}
