"""Sliding-window arithmetic shared by convolution and pooling.

Padding modes, per spatial axis, for input length L, kernel k, stride s, dilation d:
- valid: no padding; the output shrinks.
- same: output length ceil(L / s); total zero padding max((ceil(L/s)-1)*s + d*(k-1) + 1 - L, 0),
  split as evenly as possible with any odd element at the end (as TensorFlow / ONNX SAME_UPPER).
- full: d*(k-1) on both sides, so every partial overlap is computed.
- circular: as `same` with stride 1 (total d*(k-1)), but the padding wraps around the input.
- explicit: an int (all sides), a list with one int per axis, or one [begin, end] pair per axis.
Output length: floor((L + begin + end - d*(k-1) - 1) / s) + 1 (ceil instead of floor with ceil_mode).
"""
from __future__ import annotations

from typing import Literal, Union

from ..errors import ShapeError
from .base import fmt_shape

PadSpec = Union[Literal["valid", "same", "full", "circular"], int, list[int], list[list[int]]]
OUTPUT_RULE = "out = floor((L + pad_begin + pad_end - dilation*(kernel-1) - 1) / stride) + 1"


def per_axis(value: int | list[int], dims: int, name: str) -> tuple[int, ...]:
    """An int means the same on every axis; a list must give one value per axis."""
    if isinstance(value, int):
        return (value,) * dims
    if len(value) != dims:
        raise ShapeError(f"{name} needs one value per spatial axis",
                         expected=f"{dims} values", received=str(list(value)))
    return tuple(value)


def resolve_pads(padding: PadSpec, lengths, kernel, stride, dilation) -> list[tuple[int, int]]:
    """(begin, end) zero padding per axis for a padding spec."""
    dims = len(lengths)
    if padding == "valid":
        return [(0, 0)] * dims
    if padding == "full":
        return [(d * (k - 1),) * 2 for k, d in zip(kernel, dilation)]
    if padding in ("same", "circular"):
        steps = stride if padding == "same" else (1,) * dims
        return [_same(L, k, s, d) for L, k, s, d in zip(lengths, kernel, steps, dilation)]
    if isinstance(padding, int):
        pads = [(padding, padding)] * dims
    elif len(padding) != dims:
        raise ShapeError("padding needs one entry per spatial axis",
                         expected=f"{dims} entries", received=str(padding))
    else:
        pads = [_pair(p) for p in padding]
    if any(b < 0 or e < 0 for b, e in pads):  # ONNX refuses them: say so at the node
        raise ShapeError("padding must not be negative", expected="padding >= 0",
                         received=str(padding))
    return pads


def _same(length: int, k: int, s: int, d: int) -> tuple[int, int]:
    out = -(-length // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - length, 0)
    return total // 2, total - total // 2


def _pair(p) -> tuple[int, int]:
    if isinstance(p, int):
        return p, p
    if len(p) != 2:
        raise ShapeError("explicit padding per axis is an int or [begin, end]", received=str(p))
    return int(p[0]), int(p[1])


def out_length(length: int, pads: tuple[int, int], k: int, s: int, d: int,
               ceil_mode: bool = False) -> int:
    """Output length of a sliding window; with ceil_mode, a last window that would start in
    the end padding is dropped (PyTorch's and onnxruntime's rule)."""
    span = length + pads[0] + pads[1] - d * (k - 1) - 1
    if span < 0:
        return 0
    n = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (n - 1) * s >= length + pads[0]:
        n -= 1
    return n


def window_output(op: str, shape, kernel, stride, dilation, pads, ceil_mode=False) -> list[int]:
    """Spatial output sizes, or a ShapeError that shows the formula with the numbers."""
    sizes = []
    for axis, (L, k, s, d, p) in enumerate(zip(shape[1:], kernel, stride, dilation, pads)):
        n = out_length(L, p, k, s, d, ceil_mode)
        if n < 1:
            rule = OUTPUT_RULE.replace("floor", "ceil") if ceil_mode else OUTPUT_RULE
            raise ShapeError(
                f"{op} output would have {n} positions on spatial axis {axis}",
                expected=f"an input of at least {d * (k - 1) + 1 - p[0] - p[1]} positions "
                         "on that axis",
                received=fmt_shape(shape),
                rule=f"{rule} = floor(({L} + {p[0]} + {p[1]} - {d}*({k}-1) - 1) / {s}) + 1 = {n}")
        sizes.append(n)
    return sizes


def onnx_pads(pads: list[tuple[int, int]]) -> list[int]:
    """ONNX order: all begins, then all ends."""
    return [p[0] for p in pads] + [p[1] for p in pads]


def window_transpose(g, dy: str, w: str, *, kernel, strides, dilations, begins, out, sizes,
                     groups: int) -> str:
    """The adjoint of a strided window operation: ConvTranspose of `dy` (spatial sizes `out`)
    with kernel `w`, output row r*s + t*d - begin, cut or zero-padded to the input's `sizes`.
    Pads stay equal at both ends of every axis, because onnxruntime's CUDA provider moves a
    ConvTranspose with unequal pads to the CPU (seen with 1.31); output_padding, a Slice and a
    Pad do the rest, and for the usual symmetric convs none of them is needed."""
    pads, extra, starts, ends, haves, short = [], [], [], [], [], []
    for n, m, k, s, d, b in zip(sizes, out, kernel, strides, dilations, begins):
        full = (m - 1) * s + d * (k - 1) + 1  # rows the unpadded transpose writes
        p = min(b, (full - 1) // 2)
        op = min(max(b + n - (full - p), 0), s - 1)
        haves.append(full - 2 * p + op)  # output rows; the first is input row p - b
        pads.append((p, p))
        extra.append(op)
        starts.append(b - p)
        ends.append(min(haves[-1], b - p + n))
        short.append(b - p + n - ends[-1])
    dx = g.op("ConvTranspose", [dy, w], kernel_shape=list(kernel), strides=list(strides),
              dilations=list(dilations), pads=onnx_pads(pads), group=groups,
              output_padding=extra)
    axes = g.ints(range(2, len(sizes) + 2))
    if any(starts) or ends != haves:
        dx = g.op("Slice", [dx, g.ints(starts), g.ints(ends), axes])
    if any(short):
        dx = g.op("Pad", [dx, g.ints([0] * len(sizes) + short), "", axes])
    return dx
