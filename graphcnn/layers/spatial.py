"""Sliding-window arithmetic shared by convolution and pooling.

Padding modes, per spatial axis, for input length L, kernel k, stride s, dilation d:
- valid: no padding; the output shrinks.
- same: output length ceil(L / s); total zero padding max((ceil(L/s)-1)*s + d*(k-1) + 1 - L, 0),
  split as evenly as possible with any odd element at the end (as TensorFlow / ONNX SAME_UPPER).
- full: d*(k-1) on both sides, so every partial overlap is computed.
- circular: as `same` with stride 1 (total d*(k-1)), but the padding wraps around the input.
- explicit: an int (all sides), a list with one int per axis, or one [begin, end] pair per axis.
Output length: floor((L + begin + end - d*(k-1) - 1) / s) + 1 (ceil instead of floor with ceil_mode).

What fills the padding (a conv's `padding_mode`, as torch's): zeros; reflect (the input mirrored
at its edge, the edge itself not repeated: needs padding < L); replicate (the edge position
repeated); circular (the other end of the input: needs padding <= L).
"""
from __future__ import annotations

from typing import Literal, Union

from ..errors import ShapeError
from .base import Shape, fmt_shape

PadSpec = Union[Literal["valid", "same", "full", "circular"], int, list[int], list[list[int]]]
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
ONNX_PAD_MODES = {"reflect": "reflect", "replicate": "edge"}
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
    the end padding is dropped (PyTorch's and onnxruntime's rule). A padded input shorter than
    the window still gives ceil_mode one position when the division rounds up to it (torch:
    maxpool1d kernel 2, stride 2 over one position), so a negative span is no early 0."""
    span = length + pads[0] + pads[1] - d * (k - 1) - 1
    n = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (n - 1) * s >= length + pads[0]:
        n -= 1
    return max(n, 0)


def window_output(op: str, shape, kernel, stride, dilation, pads, ceil_mode=False) -> list[int]:
    """Spatial output sizes, or a ShapeError that shows the formula with the numbers."""
    sizes = []
    for axis, (L, k, s, d, p) in enumerate(zip(shape[1:], kernel, stride, dilation, pads)):
        n = out_length(L, p, k, s, d, ceil_mode)
        if n < 1:
            rounding = "ceil" if ceil_mode else "floor"
            least = d * (k - 1) + 1 - p[0] - p[1] - (s - 1 if ceil_mode else 0)
            raise ShapeError(
                f"{op} output would have {n} positions on spatial axis {axis}",
                expected=f"an input of at least {least} positions on that axis",
                received=fmt_shape(shape),
                rule=f"{OUTPUT_RULE.replace('floor', rounding)} = {rounding}(({L} + {p[0]} + "
                     f"{p[1]} - {d}*({k}-1) - 1) / {s}) + 1 = {n}")
        sizes.append(n)
    return sizes


def onnx_pads(pads: list[tuple[int, int]]) -> list[int]:
    """ONNX order: all begins, then all ends."""
    return [p[0] for p in pads] + [p[1] for p in pads]


def torch_pads(pads: list[tuple[int, int]]) -> list[int]:
    """torch.nn.functional.pad's order: (begin, end) of the last axis first."""
    return [p for pair in reversed(pads) for p in pair]


def even_pads(pads: list[tuple[int, int]]) -> bool:
    """Whether every axis pads its two ends alike (what a torch layer's `padding` says)."""
    return all(b == e for b, e in pads)


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


def check_mode_pads(mode: str, pads: list[tuple[int, int]], shape: Shape) -> None:
    """torch's limits on filled padding: circular wraps at most once (padding <= L), reflect
    mirrors inside the input (padding < L)."""
    for (b, e), L in zip(pads, shape[1:]):
        if mode == "circular" and max(b, e) > L:
            raise ShapeError("circular padding wraps at most once around the input",
                             expected="padding at most the input length per axis (with "
                                      "padding: circular, dilation*(kernel-1) <= 2 * length)",
                             received=f"padding {pads} for {fmt_shape(shape)}")
        if mode == "reflect" and max(b, e) >= L:
            raise ShapeError("reflect padding mirrors the input inside its own length",
                             expected="padding less than the input length per axis",
                             received=f"padding {pads} for {fmt_shape(shape)}")


def mode_pad(g, x: str, shape: Shape, pads: list[tuple[int, int]], mode: str) -> str:
    """x padded by `pads` with what `mode` fills in: circular by wrap_pad, reflect and
    replicate by ONNX Pad (modes reflect and edge)."""
    if mode == "circular":
        return wrap_pad(g, x, shape, pads)
    if not any(sum(pads, ())):
        return x
    axes = g.ints(range(2, len(pads) + 2))
    return g.op("Pad", [x, g.ints(onnx_pads(pads)), "", axes], mode=ONNX_PAD_MODES[mode])


def mode_pad_grad(g, dx: str, shape: Shape, pads: list[tuple[int, int]], mode: str) -> str:
    """The adjoint of mode_pad: the gradient at each padded position goes back onto the input
    position it copies (the circular margins onto the other end, the reflected ones mirrored
    one in from the edge, the replicated ones onto the edge)."""
    if mode == "circular":
        return unwrap_grad(g, dx, shape, pads)
    margins = _reflected_margins if mode == "reflect" else _replicated_margins
    for axis, ((begin, end), length) in enumerate(zip(pads, shape[1:]), start=2):
        if begin or end:
            axes = g.ints([axis])
            inner = g.op("Slice", [dx, g.ints([begin]), g.ints([begin + length]), axes])
            dx = g.op("Sum", [inner, *margins(g, dx, axes, begin, end, length)])
    return dx


def _reflected_margins(g, dx: str, axes: str, begin: int, end: int, length: int) -> list[str]:
    """Padded position begin - 1 - k copies input k + 1, position begin + length + k copies
    input length - 2 - k: each margin reversed, then set one position in from its edge."""
    parts = []
    if begin:
        head = g.op("Slice", [dx, g.ints([begin - 1]), g.ints([-2**63]), axes, g.ints([-1])])
        parts.append(g.op("Pad", [head, g.ints([1, length - 1 - begin]), "", axes]))
    if end:
        last = begin + length + end - 1
        tail = g.op("Slice", [dx, g.ints([last]), g.ints([begin + length - 1]), axes,
                              g.ints([-1])])
        parts.append(g.op("Pad", [tail, g.ints([length - 1 - end, 1]), "", axes]))
    return parts


def _replicated_margins(g, dx: str, axes: str, begin: int, end: int, length: int) -> list[str]:
    """Every begin-margin position copies input 0, every end-margin one input length - 1."""
    parts = []
    if begin:
        head = g.op("Slice", [dx, g.ints([0]), g.ints([begin]), axes])
        head = g.op("ReduceSum", [head, axes], keepdims=1)
        parts.append(g.op("Pad", [head, g.ints([0, length - 1]), "", axes]))
    if end:
        tail = g.op("Slice", [dx, g.ints([begin + length]), g.ints([begin + length + end]), axes])
        tail = g.op("ReduceSum", [tail, axes], keepdims=1)
        parts.append(g.op("Pad", [tail, g.ints([length - 1, 0]), "", axes]))
    return parts


def unwrap_grad(g, dx: str, shape: Shape, pads: list[tuple[int, int]]) -> str:
    """Backward of wrap_pad: the wrapped margins add onto the positions they were copied from."""
    for axis, ((begin, end), length) in enumerate(zip(pads, shape[1:]), start=2):
        if not begin and not end:
            continue
        axes = g.ints([axis])
        parts = [g.op("Slice", [dx, g.ints([begin]), g.ints([begin + length]), axes])]
        if begin:
            head = g.op("Slice", [dx, g.ints([0]), g.ints([begin]), axes])
            parts.append(g.op("Pad", [head, g.ints([length - begin, 0]), "", axes]))
        if end:
            tail = g.op("Slice", [dx, g.ints([begin + length]), g.ints([begin + length + end]), axes])
            parts.append(g.op("Pad", [tail, g.ints([0, length - end]), "", axes]))
        dx = g.op("Sum", parts)
    return dx


def wrap_pad(g, x: str, shape: Shape, pads: list[tuple[int, int]]) -> str:
    """Circular padding as Slice + Concat per axis: portable to every ONNX host."""
    for axis, ((begin, end), length) in enumerate(zip(pads, shape[1:]), start=2):
        parts = []
        if begin:
            # the last `begin` positions, counted from the end: the same Slice fits any length
            parts.append(g.op("Slice", [x, g.ints([-begin]), g.ints([2**63 - 1]), g.ints([axis])]))
        parts.append(x)
        if end:
            parts.append(g.op("Slice", [x, g.ints([0]), g.ints([end]), g.ints([axis])]))
        if len(parts) > 1:
            x = g.op("Concat", parts, axis=axis)
    return x
