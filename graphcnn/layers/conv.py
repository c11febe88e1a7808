"""Convolution, 1D/2D/3D.

Shape rule per spatial axis: out = floor((L + pad_begin + pad_end - dilation*(kernel-1) - 1)
/ stride) + 1 (see spatial.py for the padding amounts). `padding_mode` (torch's Conv
padding_mode) says what fills that padding: zeros, reflect, replicate or circular (`padding:
circular` is short for the `same` amounts at stride 1 with padding_mode circular).
Channels: C_in -> `channels`, with C_in and `channels` both divisible by `groups`.
Parameters: weight [C_out, C_in/groups, *kernel] and bias [C_out]:
C_in/groups * C_out * prod(kernel) + C_out.
Circular padding wraps the input around, so a stride-1 circular conv is the circulant-matrix
product C(w)x of the chapter (and equals a product of Fourier transforms).
"""
from __future__ import annotations

import os
from fractions import Fraction
from typing import ClassVar, Literal

import numpy as np
from pydantic import field_validator

from ..errors import ShapeError
from .base import Layer, Param, Shape, Window, fmt_shape, need_rank, product, register
from .conv_phases import applies as phases_apply, input_grad_by_phases
from .spatial import (PaddingMode, PadSpec, check_mode_pads, even_pads, mode_pad, mode_pad_grad,
                      onnx_pads, out_length, per_axis, resolve_pads, torch_pads, window_output,
                      window_transpose)


class ConvBase(Layer):
    dims: ClassVar[int]
    draw_family: ClassVar[str] = "conv"
    channels: int
    kernel: int | list[int]
    stride: int | list[int] = 1
    dilation: int | list[int] = 1
    groups: int = 1
    bias: bool = True
    padding: PadSpec = "valid"
    padding_mode: PaddingMode = "zeros"

    @field_validator("padding_mode")
    @classmethod
    def _one_fill(cls, mode, info):
        if info.data.get("padding") == "circular" and mode not in ("zeros", "circular"):
            raise ValueError("`padding: circular` wraps around the input; give the amount "
                             f"(same, full, numbers) to pad with {mode}")
        return mode

    @property
    def fill(self) -> str:
        """What fills the padding: the padding_mode (`padding: circular` means circular)."""
        return "circular" if self.padding == "circular" else self.padding_mode

    def geometry(self):
        """(kernel, stride, dilation) as per-axis tuples."""
        return (per_axis(self.kernel, self.dims, "kernel"), per_axis(self.stride, self.dims, "stride"),
                per_axis(self.dilation, self.dims, "dilation"))

    def pads(self, shape: Shape) -> list[tuple[int, int]]:
        k, s, d = self.geometry()
        return resolve_pads(self.padding, shape[1:], k, s, d)

    fuses_add: ClassVar[bool] = True

    def blocked(self, node, inputs, block):
        """onnxruntime's NCHWc rule for 2D convs: output channels padded to a block; input
        channels whole blocks (fewer than a block: read in NCHW), per group when grouped
        (depthwise: one input channel per output channel)."""
        c_in, c_out, groups = node.in_shapes[0][0], self.channels, self.groups
        if self.dims != 2:
            return False
        if groups == 1:
            return c_in < block or c_in % block == 0
        depthwise = c_in == groups == c_out
        return c_out % block == 0 and (depthwise or (
            (c_in // groups) % block == 0 and (c_out // groups) % block == 0))

    def workspace(self, node):
        """The padded input, when the padding is not zeros (a Pad before the Conv)."""
        if self.fill == "zeros":
            return []
        shape = node.in_shapes[0]
        return [(shape[0], *(n + a + b for n, (a, b) in zip(shape[1:], self.pads(shape))))]

    def check_channels(self, c_in: int) -> None:
        if self.channels < 1 or self.groups < 1:
            raise ShapeError("channels and groups must be positive",
                             received=f"channels={self.channels}, groups={self.groups}")
        if c_in % self.groups or self.channels % self.groups:
            raise ShapeError(f"groups={self.groups} must divide the input and output channels",
                             expected=f"channels divisible by {self.groups}",
                             received=f"C_in={c_in}, C_out={self.channels}")

    def infer(self, shapes: list[Shape]) -> Shape:
        x = shapes[0]
        need_rank(self, x, (self.dims + 1,), f"a {self.dims}D input")
        self.check_channels(x[0])
        k, s, d = self.geometry()
        if min(k + s + d) < 1:
            raise ShapeError("kernel, stride and dilation must be at least 1",
                             received=f"kernel={list(k)}, stride={list(s)}, dilation={list(d)}")
        pads = self.pads(x)
        check_mode_pads(self.fill, pads, x)
        return (self.channels, *window_output(self.op_name, x, k, s, d, pads))

    def params(self, shapes: list[Shape]) -> dict[str, Param]:
        k, _, _ = self.geometry()
        fan_in = shapes[0][0] // self.groups * product(k)
        out = {"weight": Param((self.channels, shapes[0][0] // self.groups, *k), "he", fan_in)}
        if self.bias:
            out["bias"] = Param((self.channels,))
        return out

    def macs(self, shapes: list[Shape], out: Shape) -> int:
        k, _, _ = self.geometry()
        return product(out) * (shapes[0][0] // self.groups) * product(k)

    def window(self, shapes: list[Shape]) -> Window:
        k, s, d = self.geometry()
        return Window(tuple(dd * (kk - 1) + 1 for kk, dd in zip(k, d)), tuple(map(Fraction, s)))

    def lower(self, g, xs, shapes, out):
        k, s, d = self.geometry()
        pads = self.pads(shapes[0])
        x = xs[0]
        if self.fill != "zeros":
            x, pads = mode_pad(g, x, shapes[0], pads, self.fill), [(0, 0)] * self.dims
        inputs = [x, g.param("weight")] + ([g.param("bias")] if self.bias else [])
        return g.op("Conv", inputs, kernel_shape=list(k), strides=list(s), dilations=list(d),
                    pads=onnx_pads(pads), group=self.groups)

    def torch(self, node, emit):
        """nn.ConvNd with the same padding when both ends of every axis get the same (or
        `padding: same` at stride 1), else F.pad first (torch pads both ends alike)."""
        k, s, d = self.geometry()
        pads, x = self.pads(node.in_shapes[0]), emit.x
        if self.padding == "same" and set(s) == {1}:
            padding = "same"
        elif even_pads(pads):
            padding = emit.axes((b for b, _ in pads), self.padding)
        else:
            mode = {"zeros": "constant"}.get(self.fill, self.fill)
            x, padding = emit.call("F.pad", x, torch_pads(pads), mode=emit.opt(mode, "constant")), 0
        conv = emit.module(f"nn.Conv{self.dims}d", node.in_shapes[0][0], self.channels,
                           emit.axes(k, self.kernel), stride=emit.opt(emit.axes(s, self.stride), 1),
                           padding=emit.opt(padding, 0),
                           dilation=emit.opt(emit.axes(d, self.dilation), 1),
                           groups=emit.opt(self.groups, 1), bias=emit.opt(self.bias, True),
                           padding_mode=emit.opt(self.fill if padding else "zeros", "zeros"))
        return emit.call(conv, x)

    def vjp(self, g, xs, shapes, out, y, dy):
        """dX by ConvTranspose with the forward geometry, dW by a conv over the batch. Filled
        padding (not zeros): both on the padded input, then dX through the pad's adjoint."""
        k, s, d = self.geometry()
        x, shape, pads = xs[0], shapes[0], self.pads(shapes[0])
        if self.fill != "zeros":
            x = mode_pad(g, x, shape, pads, self.fill)
            shape = (shape[0], *(n + b + e for n, (b, e) in zip(shape[1:], pads)))
            pads, filled = [(0, 0)] * self.dims, pads
        dx = conv_input_grad(g, dy, g.param("weight"), shape, out, (k, s, d), pads, self.groups)
        if self.fill != "zeros":
            dx = mode_pad_grad(g, dx, shapes[0], filled, self.fill)
        grads = {"weight": conv_weight_grad(g, x, dy, shape, out, (k, s, d), pads, self.groups)}
        if self.bias:
            grads["bias"] = g.op("ReduceSum", [dy, g.ints([0, *range(2, self.dims + 2)])],
                                 keepdims=0)
        return [dx], grads


def conv_input_grad(g, dy: str, w: str, shape: Shape, out: Shape, geometry, pads, groups):
    """The transpose of the conv, back to the input's size (rows no window reached get 0).
    With stride 1 it is itself a conv, of dY with the flipped, in/out-swapped kernel and pads
    keff - 1 - pad: onnxruntime's Conv uses both cores where its ConvTranspose used one
    (a [64, 16, 32, 32] 3x3 dX: 2.8 against 5.7 ms on 2 threads, 5.2 against 4.7 on one).
    A strided 2-D one is a stride-1 Conv over the stride's phases (layers/conv_phases.py)."""
    k, s, d = geometry
    reach = [dd * (kk - 1) for kk, dd in zip(k, d)]
    flipped_pads = [(r - b, r - e) for r, (b, e) in zip(reach, pads)]
    if all(ss == 1 for ss in s) and all(b >= 0 and e >= 0 for b, e in flipped_pads):
        return g.op("Conv", [dy, flipped_kernel(g, w, shape[0], out[0], k, groups)],
                    kernel_shape=list(k), dilations=list(d), pads=onnx_pads(flipped_pads),
                    group=groups)
    if phases_apply(k, s, d, pads, groups, shape[0] * out[0]):
        return input_grad_by_phases(g, dy, w, shape, out, k, s, pads)
    return window_transpose(g, dy, w, kernel=k, strides=s, dilations=d,
                            begins=[b for b, _ in pads], out=out[1:], sizes=shape[1:],
                            groups=groups)


def flipped_kernel(g, w: str, c_in: int, c_out: int, k, groups: int) -> str:
    """[C_out, C_in/g, *k] -> [C_in, C_out/g, *k] per group, every spatial axis reversed. The
    reversal is a MatMul of the taps by the exchange matrix (exact: each output is one weight
    times 1 plus zeros): onnxruntime's Slice with step -1 copies element by element (11 ms
    for a [512, 512, 3, 3] filter, against about 1 ms)."""
    taps = product(k)
    per_group = g.op("Reshape", [w, g.ints([groups, c_out // groups, c_in // groups, taps])])
    swapped = g.op("Transpose", [per_group], perm=[0, 2, 1, 3])
    if taps > 1:
        exchange = g.array(f"exchange{taps}", np.eye(taps, dtype=np.float32)[::-1].copy())
        swapped = g.op("MatMul", [swapped, exchange])
    return g.op("Reshape", [swapped, g.ints([c_in, c_out // groups, *k])])


def conv_weight_grad(g, x: str, dy: str, shape: Shape, out: Shape, geometry, pads, groups):
    """dW[o, i, t] = sum over batch and positions p of dY[n, o, p] * X[n, i, p*s + t*d - pad]:
    X unfolded into its patches, then per group the weight-gradient GEMM
    [C_in/g * taps, P] x [P, C_out/g] (batched over the samples, then summed; one GEMM over
    batch and positions where positions are few); a small 2-D image's is one Conv instead
    (weight_grad_form)."""
    if groups == 1 and weight_grad_form(g, out) == "conv":
        return weight_grad_by_conv(g, x, dy, shape, out, geometry, pads)
    k = geometry[0]
    taps, positions, c_in, c_out = product(k), product(out[1:]), shape[0], out[0]
    patches = first_windows(g, unfold(g, x, shape, geometry, pads), shape, out, geometry, pads)
    cols = g.op("Reshape", [patches, g.ints([0, groups, c_in // groups * taps, positions])])
    per_group = g.op("Reshape", [dy, g.ints([0, groups, c_out // groups, positions])])
    if positions * FEW_POSITIONS <= c_out // groups:
        summed = one_gemm(g, cols, per_group)
    else:
        products = g.op("MatMul", [cols, g.op("Transpose", [per_group], perm=[0, 1, 3, 2])])
        summed = g.op("ReduceSum", [products, g.ints([0])], keepdims=0)
    weight = g.op("Transpose", [summed], perm=[0, 2, 1])
    return g.op("Reshape", [weight, g.ints([c_out, c_in // groups, *k])])


def weight_grad_form(g, out: Shape) -> str:
    """"conv" (one Conv with the batch as channels, weight_grad_by_conv) for a 2-D conv with
    at most SMALL_IMAGE output positions, else "unfold" (unfold + GEMM); GRAPHCNN_WEIGHT_GRAD
    (conv or unfold) forces one, to measure. On the CPU the conv runs in NCHWc (the step's
    convs are blocked, runtime/blocked.py); against the unfold, isolated, batch 64, 3x3 (ms,
    2 threads): 512 channels at 2x2 16.0 against 36.3, 256 at 4x4 18.9 against 24.8, but 128 at
    8x8 22.5 against 19.4 and 16 at 32x32 15.4 against 12.6. On CUDA, where cuDNN convolves
    directly and the unfold writes nine times the input, the conv may win everywhere: that
    waits for a measurement on a GPU (docs/cuda.md), and both providers get the same rule."""
    forced = os.environ.get("GRAPHCNN_WEIGHT_GRAD")
    if forced in ("conv", "unfold"):
        return forced
    return "conv" if len(out) == 3 and product(out[1:]) <= SMALL_IMAGE else "unfold"


SMALL_IMAGE = 16  # output positions (4x4) up to which a 2-D weight gradient is one Conv


def weight_grad_by_conv(g, x: str, dy: str, shape: Shape, out: Shape, geometry, pads) -> str:
    """dW[o, c, t] = sum over n, p of dY[n, o, p] X[n, c, p*s + t*d] as one Conv with the batch
    as its channels: input X^T [C, N, *S], kernel dY^T [O, N, *P], the forward's stride as the
    dilation and its dilation as the stride; output [C, O, *k'] (k' can exceed k where the
    forward conv leaves the last rows unread: cut)."""
    k, s, d = geometry
    dims = len(k)
    swap = [1, 0, *range(2, dims + 2)]
    xt, dyt = g.op("Transpose", [x], perm=swap), g.op("Transpose", [dy], perm=swap)
    found = [(n + b + e - ss * (p - 1) - 1) // dd + 1
             for n, (b, e), ss, p, dd in zip(shape[1:], pads, s, out[1:], d)]
    w = g.op("Conv", [xt, dyt], kernel_shape=list(out[1:]), strides=list(d), dilations=list(s),
             pads=onnx_pads(pads))
    if found != list(k):
        w = g.op("Slice", [w, g.ints([0] * dims), g.ints(k), g.ints(range(2, dims + 2))])
    return g.op("Transpose", [w], perm=swap)


# Per sample, the weight-gradient GEMM contracts over the output positions only. With few
# positions and many channels (a ResNet's last stage: 2x2 positions, 512 channels) the batched
# products [N, C_in * taps, C_out] dwarf both operands: ResNet-18's stage-4 weight gradient
# spent 55 ms in the GEMM and 51 in summing its products where one GEMM over batch and
# positions together took 73 ms for both (isolated, [64, 512, 2, 2]); at 4x4 positions 57
# against 80 ms; at 8x8 the batched form wins (49 against 58 ms for 128 channels).
FEW_POSITIONS = 8


def one_gemm(g, cols: str, per_group: str) -> str:
    """[groups, C_in/g * taps, C_out/g]: one GEMM per group contracting batch and positions
    together, both operands moved so that batch and positions are adjacent (positions stay
    innermost: the moves copy whole rows)."""
    moved = g.op("Transpose", [cols], perm=[1, 2, 0, 3])          # [g, K, N, P]
    rows = g.op("Reshape", [moved, g.ints([0, 0, -1])])             # [g, K, N * P]
    grads = g.op("Transpose", [per_group], perm=[1, 2, 0, 3])       # [g, O, N, P]
    flat = g.op("Reshape", [grads, g.ints([0, 0, -1])])             # [g, O, N * P]
    return g.op("MatMul", [rows, g.op("Transpose", [flat], perm=[0, 2, 1])])


def first_windows(g, patches: str, shape: Shape, out: Shape, geometry, pads) -> str:
    """The unfolded windows at dY's positions only. A transposed conv's weight gradient
    unfolds dY by the forward geometry (X and dY swap roles), and with an output_padding of
    a stride or more that gives windows past X's last row: X has nothing there, so they are
    cut (left in, the reshape to X's positions failed)."""
    k, s, d = geometry
    found = [out_length(n, p, kk, ss, dd) for n, p, kk, ss, dd in zip(shape[1:], pads, k, s, d)]
    if found == list(out[1:]):
        return patches
    dims = len(k)
    return g.op("Slice", [patches, g.ints([0] * dims), g.ints(out[1:]),
                          g.ints(range(2, dims + 2))])


def unfold(g, x: str, shape: Shape, geometry, pads) -> str:
    """[N, C * taps, *out]: channel c * taps + t holds kernel tap t of every window (C order
    over the kernel axes, as the weight stores it). A depthwise conv with one-hot kernels, so
    stride, dilation and padding act exactly as in the forward conv."""
    k, s, d = geometry
    taps, dims = product(k), len(k)
    if taps == 1 and not any(sum(pads, ())):
        if max(s) == 1:
            return x
        return g.op("Slice", [x, g.ints([0] * dims), g.ints(shape[1:]), g.ints(range(2, dims + 2)),
                              g.ints(s)])
    if dims == 1 and shape[0] > 1:
        return sliced_taps(g, x, shape, geometry, pads)
    eye = np.tile(np.eye(taps, dtype=np.float32).reshape(taps, 1, *k), (shape[0],) + (1,) * (dims + 1))
    kernel = g.array("unfold" + "x".join(map(str, (shape[0], *k))), eye)
    return g.op("Conv", [x, kernel], kernel_shape=list(k), strides=list(s), dilations=list(d),
                pads=onnx_pads(pads), group=shape[0])


def sliced_taps(g, x: str, shape: Shape, geometry, pads) -> str:
    """The 1-D unfold as one strided Slice per tap, stacked tap-innermost: onnxruntime runs
    the one-hot depthwise conv as a tiny GEMM per sample and channel (MNIST-1D's [100, 15, 19]
    unfold: 0.81 against 0.62 ms; [100, 15, 9]: 0.68 against 0.28 ms, 2 threads)."""
    (k,), (s,), (d,) = geometry
    (before, after), = pads
    length = out_length(shape[1], pads[0], k, s, d)
    if before or after:
        x = g.op("Pad", [x, g.ints([0, 0, before, 0, 0, after])])
    axis, step = g.ints([2]), g.ints([s])
    taps = [g.op("Unsqueeze", [g.op("Slice", [x, g.ints([t * d]), g.ints([t * d + s * (length - 1) + 1]),
                                              axis, step]), axis]) for t in range(k)]
    stacked = taps[0] if k == 1 else g.op("Concat", taps, axis=2)   # [N, C, k, L]
    return g.op("Reshape", [stacked, g.ints([0, shape[0] * k, length])])


@register
class Conv1d(ConvBase):
    """1D convolution over [N, C, L]."""
    op: Literal["conv1d"] = "conv1d"
    dims: ClassVar[int] = 1


@register
class Conv2d(ConvBase):
    """2D convolution over [N, C, H, W]."""
    op: Literal["conv2d"] = "conv2d"
    dims: ClassVar[int] = 2


@register
class Conv3d(ConvBase):
    """3D convolution over [N, C, D, H, W]."""
    op: Literal["conv3d"] = "conv3d"
    dims: ClassVar[int] = 3


class ConvTransposeBase(Layer):
    """Transposed convolution (the adjoint of conv with the same geometry), 1D/2D/3D.

    Per spatial axis: out = (L-1)*stride - pad_begin - pad_end + dilation*(kernel-1)
    + output_padding + 1, and output_padding < stride or < dilation (PyTorch's and ONNX's rule:
    it only picks among the input lengths a conv would map to the same size). Weight
    [C_in, C_out/groups, *kernel] (ONNX / PyTorch layout), bias [C_out]. He init uses the
    forward fan-in: each output sums about C_in/groups * prod(kernel) / prod(stride) products.
    """
    draw_family: ClassVar[str] = "upsample"
    dims: ClassVar[int]
    channels: int
    kernel: int | list[int]
    stride: int | list[int] = 1
    padding: int | list[int | list[int]] = 0
    output_padding: int | list[int] = 0
    dilation: int | list[int] = 1
    groups: int = 1
    bias: bool = True

    # the same per-axis reading and channel rule as conv, borrowed rather than inherited so
    # that conv's other methods (lowering, gradients) never apply to the transpose by accident
    geometry = ConvBase.geometry
    check_channels = ConvBase.check_channels

    def pads(self, shape: Shape) -> list[tuple[int, int]]:
        k, s, d = self.geometry()
        return resolve_pads(self.padding, shape[1:], k, s, d)

    def infer(self, shapes: list[Shape]) -> Shape:
        x = shapes[0]
        need_rank(self, x, (self.dims + 1,), f"a {self.dims}D input")
        self.check_channels(x[0])
        k, s, d = self.geometry()
        extra = per_axis(self.output_padding, self.dims, "output_padding")
        pads = self.pads(x)
        if min(k + s + d) < 1 or min(extra + sum(pads, ())) < 0:
            raise ShapeError("kernel, stride and dilation must be at least 1, padding and "
                             "output_padding at least 0", received=f"kernel={list(k)}, "
                             f"stride={list(s)}, dilation={list(d)}, padding={pads}")
        for axis, (op, ss, dd) in enumerate(zip(extra, s, d)):
            if op >= ss and op >= dd:
                raise ShapeError(f"output_padding {op} on spatial axis {axis} is too large",
                                 expected=f"output_padding < stride ({ss}) or < dilation ({dd})")
            if op - pads[axis][1] >= ss:  # see runtime_padding: onnxruntime refuses the rest
                raise ShapeError(f"output_padding {op} on spatial axis {axis} is at least the "
                                 f"stride ({ss}) and more than the end padding "
                                 f"({pads[axis][1]}); onnxruntime cannot run it",
                                 expected="output_padding - pad_end < stride")
        return (self.channels, *self.sizes(x, k, s, d, pads, extra))

    def runtime_padding(self, shape: Shape):
        """(pads, output_padding) for ONNX. onnxruntime wants output_padding < stride; since
        output_padding only cuts less off the end, output_padding p with end padding e equals
        end padding e - min(p, e) with output_padding p - min(p, e)."""
        _, s, _ = self.geometry()
        extra = per_axis(self.output_padding, self.dims, "output_padding")
        pads, out = [], []
        for (b, e), op, ss in zip(self.pads(shape), extra, s):
            moved = min(op, e) if op >= ss else 0
            pads.append((b, e - moved))
            out.append(op - moved)
        return pads, out

    def sizes(self, x: Shape, k, s, d, pads, extra) -> list[int]:
        out = []
        for axis, (L, kk, ss, dd, (b, e), op) in enumerate(zip(x[1:], k, s, d, pads, extra)):
            n = (L - 1) * ss - b - e + dd * (kk - 1) + op + 1
            if n < 1:
                raise ShapeError(f"{self.op_name} output would have {n} positions on spatial "
                                 f"axis {axis}", expected="less padding", received=fmt_shape(x),
                                 rule=f"out = (L-1)*stride - pad_begin - pad_end + dilation*"
                                      f"(kernel-1) + output_padding + 1 = ({L}-1)*{ss} - {b} - "
                                      f"{e} + {dd}*({kk}-1) + {op} + 1 = {n}")
            out.append(n)
        return out

    def params(self, shapes: list[Shape]) -> dict[str, Param]:
        k, s, _ = self.geometry()
        c_in, per_group = shapes[0][0], self.channels // self.groups
        fan_in = max(1, c_in // self.groups * product(k) // product(s))
        out = {"weight": Param((c_in, per_group, *k), "he", fan_in)}
        if self.bias:
            out["bias"] = Param((self.channels,))
        return out

    def macs(self, shapes: list[Shape], out: Shape) -> int:
        k, _, _ = self.geometry()
        return product(shapes[0]) * (self.channels // self.groups) * product(k)

    def window(self, shapes: list[Shape]) -> Window:
        """An output sees ceil(span / stride) neighbouring inputs; positions step by 1/stride."""
        k, s, d = self.geometry()
        extent = tuple(-(-(dd * (kk - 1) + 1) // ss) for kk, ss, dd in zip(k, s, d))
        return Window(extent, tuple(Fraction(1, ss) for ss in s))

    def lower(self, g, xs, shapes, out):
        k, s, d = self.geometry()
        pads, extra = self.runtime_padding(shapes[0])
        inputs = [xs[0], g.param("weight")] + ([g.param("bias")] if self.bias else [])
        return g.op("ConvTranspose", inputs, kernel_shape=list(k), strides=list(s),
                    dilations=list(d), pads=onnx_pads(pads),
                    output_padding=list(extra), group=self.groups)

    def torch(self, node, emit):
        """nn.ConvTransposeNd; padding that differs at the two ends of an axis is cut from
        the unpadded result instead (torch cuts both ends alike)."""
        k, s, d = self.geometry()
        pads = self.pads(node.in_shapes[0])
        even = even_pads(pads)
        extra = per_axis(self.output_padding, self.dims, "output_padding")
        up = emit.module(f"nn.ConvTranspose{self.dims}d", node.in_shapes[0][0], self.channels,
                         emit.axes(k, self.kernel), stride=emit.opt(emit.axes(s, self.stride), 1),
                         padding=emit.opt(emit.axes((b for b, _ in pads), self.padding)
                                          if even else 0, 0),
                         output_padding=emit.opt(emit.axes(extra, self.output_padding), 0),
                         groups=emit.opt(self.groups, 1), bias=emit.opt(self.bias, True),
                         dilation=emit.opt(emit.axes(d, self.dilation), 1))
        y = emit.call(up, emit.x)
        if even:
            return y
        cuts = ", ".join(f"{b}:{b + n}" for (b, _), n in zip(pads, node.shape[1:]))
        return emit.fmt("{}[:, :, " + cuts + "]", y)

    def lower_portable(self, g, xs, shapes, out):
        """Hosts disagree on output_padding: with end pad e an output_padding o means o more
        positions the conv computes when e covers them (pad e - o instead); the rest lies past
        every kernel tap: zeros (a Pad), then the bias is added."""
        k, s, d = self.geometry()
        extra = per_axis(self.output_padding, self.dims, "output_padding")
        pads = self.pads(shapes[0])
        inner = [(b, e - min(e, o)) for (b, e), o in zip(pads, extra)]
        rest = [o - min(e, o) for (_, e), o in zip(pads, extra)]
        y = g.op("ConvTranspose", [xs[0], g.param("weight")], kernel_shape=list(k),
                 strides=list(s), dilations=list(d), pads=onnx_pads(inner), group=self.groups)
        if any(rest):
            y = g.op("Pad", [y, g.ints([0] * (self.dims + 2) + [0, 0, *rest]), g.scalar(0.0)],
                     mode="constant")
        if self.bias:
            bias = g.op("Reshape", [g.param("bias"), g.ints([self.channels, *[1] * self.dims])])
            y = g.op("Add", [y, bias])
        return y

    def vjp(self, g, xs, shapes, out, y, dy):
        """The adjoint of the transpose is the conv with the same geometry and weight: dX =
        Conv(dY, W); dW by the same batch-as-channels conv as for conv, input and output
        swapping roles. An output_padding of a stride or more leaves extra rows to cut."""
        k, s, d = self.geometry()
        pads, shape = self.pads(shapes[0]), shapes[0]
        dx = g.op("Conv", [dy, g.param("weight")], kernel_shape=list(k), strides=list(s),
                  dilations=list(d), pads=onnx_pads(pads), group=self.groups)
        reached = window_output(self.op_name, out, k, s, d, pads)
        if list(reached) != list(shape[1:]):
            dx = g.op("Slice", [dx, g.ints([0] * self.dims), g.ints(shape[1:]),
                                g.ints(range(2, self.dims + 2))])
        grads = {"weight": conv_weight_grad(g, dy, xs[0], out, shape, (k, s, d), pads, self.groups)}
        if self.bias:
            grads["bias"] = g.op("ReduceSum", [dy, g.ints([0, *range(2, self.dims + 2)])],
                                 keepdims=0)
        return [dx], grads


@register
class ConvTranspose1d(ConvTransposeBase):
    """Transposed 1D convolution over [N, C, L] (learned upsampling)."""
    op: Literal["conv_transpose1d"] = "conv_transpose1d"
    dims: ClassVar[int] = 1


@register
class ConvTranspose2d(ConvTransposeBase):
    """Transposed 2D convolution over [N, C, H, W] (learned upsampling)."""
    op: Literal["conv_transpose2d"] = "conv_transpose2d"
    dims: ClassVar[int] = 2


@register
class ConvTranspose3d(ConvTransposeBase):
    """Transposed 3D convolution over [N, C, D, H, W] (learned upsampling)."""
    op: Literal["conv_transpose3d"] = "conv_transpose3d"
    dims: ClassVar[int] = 3
