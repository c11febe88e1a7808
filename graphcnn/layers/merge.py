"""Nodes that join branches: the chapter's three kinds of skip connection.

- add (residual): h = x + f[x]. All inputs must have one shape. With `project`, the last input
  (the skip) first goes through a 1x1 conv (stride chosen so the sizes meet; `conv_bn` adds a
  batchnorm), the ResNet projection shortcut: C_skip * C_out (+ 2 C_out) parameters.
- concat: inputs joined on the channel axis (DenseNet, U-Net); spatial sizes must agree.
- mul: elementwise product of two inputs with broadcasting (the squeeze-excitation gate): an
  [N, C] input is read as [N, C, 1, ...]; then on each axis the sizes are equal or one is 1.
- highway: y = H(x) * T(x) + x * C(x), T = sigmoid(W_T x + b_T), C = 1 - T (`carry: coupled`)
  or C = sigmoid(W_C x + b_C) (`carry: learned`). Inputs: [H(x), x]. W is a linear map for flat
  inputs and a `gate_kernel` conv with same padding otherwise: C*C*prod(k) + C per gate.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar, Literal

from pydantic import Field

from ..errors import InputsDisagree, ShapeError
from .base import Layer, Param, Shape, Window, fmt_shape, product, register
from .conv import conv_input_grad, conv_weight_grad
from .norm import batchnorm_train, batchnorm_vjp, torch_batchnorm
from .spatial import onnx_pads, resolve_pads


class Merge(Layer):
    arity: ClassVar[tuple[int, int | None]] = (2, None)
    draw_family: ClassVar[str] = "merge"
    skip: str | list[str] | None = None

    def wiring(self, previous: str | None) -> list[str]:
        extra = [self.skip] if isinstance(self.skip, str) else list(self.skip or [])
        return super().wiring(previous) + extra

    def window(self, shapes: list[Shape]) -> Window:
        return super().window(shapes[:1])


def refuse_broadcast(op: str, first: Shape, other: Shape) -> None:
    """Unequal shapes that would broadcast (every axis equal or 1 on one side): the user meant
    a gate, which this elementwise merge does not do; no input size changes that."""
    if len(first) != len(other) or first == other:
        return
    axes = [f"axis {i + 1} ({'channels' if i == 0 else 'spatial'}): {p} vs {q}"
            for i, (p, q) in enumerate(zip(first, other)) if p != q]
    if all(1 in (p, q) for p, q in zip(first, other) if p != q):
        raise InputsDisagree(f"{op} inputs disagree on " + ", ".join(axes) + f"; {op} does not "
                             "broadcast", expected="equal shapes",
                             received=f"{fmt_shape(first)} and {fmt_shape(other)}",
                             hint="to scale by a per-channel gate use `mul`")


@register
class Add(Merge):
    """Residual sum h = x + f[x] of equally shaped inputs (optionally projecting the skip)."""
    op: Literal["add"] = "add"
    skip_kind: ClassVar[str] = "residual"
    fp32_ops: ClassVar[frozenset[str]] = frozenset({"BatchNormalization"})  # project: conv_bn
    project: Literal[False, True, "conv", "conv_bn"] = False
    in_place: ClassVar[bool] = True

    def blocked(self, node, inputs, block):
        return all(inputs)

    def workspace(self, node):
        """The projected skip."""
        return [node.shape] if self.projection else []

    @property
    def projection(self) -> str | None:
        return "conv" if self.project is True else (self.project or None)

    def infer(self, shapes: list[Shape]) -> Shape:
        if self.projection:
            shapes = shapes[:-1] + [self.projected(shapes[0], shapes[-1])]
        for shape in shapes[1:]:
            refuse_broadcast("add", shapes[0], shape)
            if shape != shapes[0]:
                hint = "" if self.projection else "add `project: conv_bn` (or a 1x1 conv) on the skip"
                raise ShapeError("residual inputs disagree",
                                 expected=f"every input shaped {fmt_shape(shapes[0])}",
                                 received=" vs ".join(map(fmt_shape, shapes)), hint=hint or None)
        return shapes[0]

    def strides(self, main: Shape, skip: Shape) -> list[int]:
        return [max(1, -(-s // m)) for m, s in zip(main[1:], skip[1:])]

    def projected(self, main: Shape, skip: Shape) -> Shape:
        if len(skip) < 2:  # the projection is a 1x1 conv: it needs spatial axes to lower
            raise ShapeError("project needs a skip input with spatial axes (it is a 1x1 conv)",
                             expected="[N, C, L], [N, C, H, W] or [N, C, D, H, W]",
                             received=fmt_shape(skip), hint="for flat inputs put a linear node "
                             "on the skip branch instead")
        if len(main) != len(skip):
            raise ShapeError("residual inputs differ in rank", received=f"{fmt_shape(main)} "
                             f"vs skip {fmt_shape(skip)}")
        sizes = [(s - 1) // st + 1 for s, st in zip(skip[1:], self.strides(main, skip))]
        return (main[0], *sizes)

    def params(self, shapes: list[Shape]) -> dict[str, Param]:
        if not self.projection:
            return {}
        c_out, c_in = shapes[0][0], shapes[-1][0]
        out = {"project.weight": Param((c_out, c_in, *([1] * (len(shapes[0]) - 1))), "he", c_in)}
        if self.projection == "conv_bn":
            out.update({"project.bn.weight": Param((c_out,), "ones"),
                        "project.bn.bias": Param((c_out,)),
                        "project.bn.running_mean": Param((c_out,), trainable=False),
                        "project.bn.running_var": Param((c_out,), "ones", trainable=False)})
        return out

    def macs(self, shapes, out) -> int:
        return product(out) * shapes[-1][0] if self.projection else 0

    def lower(self, g, xs, shapes, out):
        xs = list(xs)
        if self.projection:
            xs[-1] = self.lower_projection(g, xs[-1], shapes[0], shapes[-1])
        return g.op("Add", xs) if len(xs) == 2 else g.op("Sum", xs)

    def torch(self, node, emit):
        """a + b (+ ...); a projected skip goes through `self.<id>.project` (a ModuleDict
        holds it, so its parameters are named <id>.project.weight, as here)."""
        xs = list(emit.xs)
        if self.projection:
            project = emit.module("nn.ModuleDict", {"project": self.torch_projection(node, emit)})
            xs[-1] = emit.call(project + ".project", xs[-1])
        return emit.fmt(" + ".join(["{}"] * len(xs)), *xs)

    def torch_projection(self, node, emit):
        main, skip = node.in_shapes[0], node.in_shapes[-1]
        dims, stride = len(main) - 1, emit.axes(self.strides(main, skip))
        if self.projection == "conv_bn":
            return emit.call(emit.helper(*torch_conv_bn(dims)), skip[0], main[0], stride)
        return emit.call(f"nn.Conv{dims}d", skip[0], main[0], 1, stride=stride, bias=False)

    def lower_projection(self, g, skip: str, main: Shape, skip_shape: Shape) -> str:
        rank = len(main) - 1
        y = g.op("Conv", [skip, g.param("project.weight")], kernel_shape=[1] * rank,
                 strides=self.strides(main, skip_shape), pads=[0] * (2 * rank))
        if self.projection == "conv_bn":
            names = ["weight", "bias", "running_mean", "running_var"]
            y = g.op("BatchNormalization", [y, *(g.param(f"project.bn.{n}") for n in names)],
                     epsilon=1e-5)
        return y

    def lower_train(self, g, xs, shapes, out):
        if self.projection != "conv_bn":
            return self.lower(g, xs, shapes, out)
        rank = len(shapes[0]) - 1
        y = g.op("Conv", [xs[-1], g.param("project.weight")], kernel_shape=[1] * rank,
                 strides=self.strides(shapes[0], shapes[-1]), pads=[0] * (2 * rank))
        y = batchnorm_train(g, y, shapes[0], "project.bn.", 1e-5, 0.1)
        return g.op("Add", [*xs[:-1], y]) if len(xs) == 2 else g.op("Sum", [*xs[:-1], y])

    def vjp(self, g, xs, shapes, out, y, dy):
        """Every input gets dy; a projected skip gets it through the (batchnorm and) 1x1 conv."""
        if not self.projection:
            return [dy] * len(xs), {}
        grads, main, skip = {}, shapes[0], shapes[-1]
        if self.projection == "conv_bn":
            dy_proj, grads = batchnorm_vjp(g, dy, main, "project.bn.")
        else:
            dy_proj = dy
        rank = len(main) - 1
        geometry = ((1,) * rank, tuple(self.strides(main, skip)), (1,) * rank)
        pads = [(0, 0)] * rank
        dskip = conv_input_grad(g, dy_proj, g.param("project.weight"), skip, main, geometry, pads, 1)
        grads["project.weight"] = conv_weight_grad(g, xs[-1], dy_proj, skip, main, geometry, pads, 1)
        return [dy] * (len(xs) - 1) + [dskip], grads


def torch_conv_bn(dims: int) -> tuple:
    """The (name, text, needs) of the generated file's ConvBn{dims}d."""
    name = f"ConvBn{dims}d"
    text = f'''
class {name}(nn.Conv{dims}d):
    """A 1x1 convolution without bias, then a batchnorm: the projected skip of
    `add` with `project: conv_bn` (parameters project.weight and project.bn.*)."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__(in_channels, out_channels, 1, stride, bias=False)
        self.bn = BatchNorm{dims}d(out_channels)

    def forward(self, x):
        return self.bn(super().forward(x))
'''
    return name, text, (torch_batchnorm(dims),)


@register
class Concat(Merge):
    """Inputs joined on the channel axis; spatial sizes must agree."""
    op: Literal["concat"] = "concat"
    skip_kind: ClassVar[str] = "concat"

    def blocked(self, node, inputs, block):
        """onnxruntime concatenates blocked inputs of whole blocks of channels as they are."""
        return all(inputs) and all(shape[0] % block == 0 for shape in node.in_shapes)

    def infer(self, shapes: list[Shape]) -> Shape:
        first = shapes[0]
        for shape in shapes[1:]:
            if len(shape) != len(first) or shape[1:] != first[1:]:
                raise ShapeError("concat inputs disagree on their spatial size",
                                 expected="every input shaped " + fmt_shape(("*", *first[1:])),
                                 received=" vs ".join(map(fmt_shape, shapes)),
                                 hint="crop the larger input (op: crop) or pad the smaller")
        return (sum(s[0] for s in shapes), *first[1:])

    def lower(self, g, xs, shapes, out):
        return g.op("Concat", list(xs), axis=1)

    def torch(self, node, emit):
        return emit.call("torch.cat", list(emit.xs), 1)

    def vjp(self, g, xs, shapes, out, y, dy):
        parts = g.op("Split", [dy, g.ints([s[0] for s in shapes])], outputs=len(xs), axis=1)
        return list(parts), {}


@register
class Mul(Merge):
    """y = a * b elementwise, a from the previous node (or inputs[0]) and b from `skip`.

    Shape rule: an [N, C] input next to a spatial one is read as [N, C, 1, ...] (aligned on
    the channels, not on the last axis as numpy would); then the ranks must agree, and on each
    axis the sizes are equal or one of them is 1, which broadcasts (ONNX Mul's rule). The
    output takes the larger size per axis. Backward: dy times the other input, summed over
    the axes this input was broadcast along.
    """
    op: Literal["mul"] = "mul"
    skip_kind: ClassVar[str] = "gate"
    arity: ClassVar[tuple[int, int | None]] = (2, 2)
    in_place: ClassVar[bool] = True  # onnxruntime's Mul writes over its first input

    def blocked(self, node, inputs, block):
        """Blocked inputs of one shape only: a broadcast gate (squeeze-excitation) runs plain."""
        return all(inputs) and len(set(node.in_shapes)) == 1

    def infer(self, shapes: list[Shape]) -> Shape:
        a, b = (aligned(s, max(shapes, key=len)) for s in shapes)
        read = " and ".join(fmt_shape(s) + (f" (as {fmt_shape(v)})" if v != s else "")
                            for s, v in zip(shapes, (a, b)))
        if len(a) != len(b):
            raise ShapeError("mul inputs differ in rank", expected="equal ranks, or one input "
                             "[N, C] (read as [N, C, 1, ...])", received=read)
        bad = [f"axis {i + 1} ({'channels' if i == 0 else 'spatial'}): {p} vs {q}"
               for i, (p, q) in enumerate(zip(a, b)) if p != q and 1 not in (p, q)]
        if bad:
            raise ShapeError("mul inputs disagree on " + ", ".join(bad),
                             expected="on every axis equal sizes, or 1 on one side", received=read)
        return tuple(max(p, q) for p, q in zip(a, b))

    def window(self, shapes: list[Shape]) -> Window:
        return Layer.window(self, [max(shapes, key=len)])

    def lower(self, g, xs, shapes, out):
        return g.op("Mul", [self.expanded(g, x, s, out) for x, s in zip(xs, shapes)])

    def torch(self, node, emit):
        """a * b, an [N, C] input indexed [:, :, None, ...] to align on the channels."""
        ends = [", None" * (len(node.shape) - len(s)) for s in node.in_shapes]
        parts = ["{}" + (f"[:, :{end}]" if end else "") for end in ends]
        return emit.fmt(" * ".join(parts), *emit.xs)

    def expanded(self, g, x: str, shape: Shape, out: Shape) -> str:
        """An [N, C] input as [N, C, 1, ...] to broadcast against the output."""
        if len(shape) == len(out):
            return x
        return g.op("Reshape", [x, g.ints([-1, shape[0], *[1] * (len(out) - 1)])])

    def vjp(self, g, xs, shapes, out, y, dy):
        a, b = (self.expanded(g, x, s, out) for x, s in zip(xs, shapes))
        return [self.reduced(g, g.op("Mul", [dy, b]), shapes[0], out),
                self.reduced(g, g.op("Mul", [dy, a]), shapes[1], out)], {}

    def reduced(self, g, grad: str, shape: Shape, out: Shape) -> str:
        """The gradient summed over the axes `shape` was broadcast along, in its own shape."""
        axes = [i + 1 for i, (p, q) in enumerate(zip(aligned(shape, out), out)) if p != q]
        if axes:
            grad = g.op("ReduceSum", [grad, g.ints(axes)], keepdims=1)
        if len(shape) != len(out):
            grad = g.op("Reshape", [grad, g.ints([-1, shape[0]])])
        return grad


def aligned(shape: Shape, other: Shape) -> Shape:
    """A flat [C] next to a spatial shape as [C, 1, ...]; any other shape as it is."""
    return shape + (1,) * (len(other) - 1) if len(shape) == 1 else shape


@dataclass(frozen=True)
class HighwayGates:
    """A highway node's transform and carry gate values, kept for its backward rule."""

    transform: str
    carry: str


@register
class Highway(Merge):
    """y = H(x) * T(x) + x * C(x) with inputs [H(x), x] (H from the previous node, x from `skip`)."""
    op: Literal["highway"] = "highway"
    skip_kind: ClassVar[str] = "highway"
    arity: ClassVar[tuple[int, int | None]] = (2, 2)
    carry: Literal["coupled", "learned"] = "coupled"
    gate_kernel: int = Field(1, ge=1)
    # Srivastava et al. start the transform gate mostly closed
    gate_bias: float = Field(-1.0, allow_inf_nan=False)
    in_place: ClassVar[bool] = True

    def workspace(self, node):
        """The gates T(x) and C(x) (1 - T, or a second gate), held while the sum is formed."""
        return [node.shape, node.shape]

    def gates(self) -> list[str]:
        return ["transform", "carry"] if self.carry == "learned" else ["transform"]

    def infer(self, shapes: list[Shape]) -> Shape:
        h, x = shapes
        refuse_broadcast("highway", x, h)
        if h != x:
            raise ShapeError("highway needs H(x) shaped like x",
                             expected=fmt_shape(x), received=fmt_shape(h),
                             rule="y = H(x) * T(x) + x * C(x) is elementwise")
        return x

    def params(self, shapes: list[Shape]) -> dict[str, Param]:
        x = shapes[1]
        kernel = [self.gate_kernel] * (len(x) - 1)
        fan_in = x[0] * product(kernel)
        out = {}
        for gate in self.gates():
            out[f"{gate}.weight"] = Param((x[0], x[0], *kernel), "he", fan_in)
            out[f"{gate}.bias"] = Param((x[0],), self.gate_bias if gate == "transform" else 0.0)
        return out

    def macs(self, shapes, out) -> int:
        return len(self.gates()) * product(out) * shapes[1][0] * self.gate_kernel ** (len(out) - 1)

    def window(self, shapes: list[Shape]) -> Window:
        rank = len(shapes[1]) - 1
        return Window((self.gate_kernel,) * rank, (Fraction(1),) * rank)

    def lower(self, g, xs, shapes, out):
        h, x = xs
        t = g.op("Sigmoid", [self.lower_gate(g, "transform", x, shapes[1])])
        if self.carry == "learned":
            c = g.op("Sigmoid", [self.lower_gate(g, "carry", x, shapes[1])])
        else:
            c = g.op("Sub", [g.scalar(1.0), t])
        g.keep(HighwayGates(t, c))  # for the vjp
        return g.op("Add", [g.op("Mul", [h, t]), g.op("Mul", [x, c])])

    def vjp(self, g, xs, shapes, out, y, dy):
        """dH = dy T; through the gates: dT = dy H (coupled: dy (H - x)), dC = dy x, each times
        sigmoid' = s (1 - s) into its linear map; dx = dy C plus what the gate maps send back."""
        h, x = xs
        gates = g.kept(HighwayGates)
        t, c = gates.transform, gates.carry
        dx = [g.op("Mul", [dy, c])]
        grads = {}
        d_t = g.op("Mul", [dy, h if self.carry == "learned" else g.op("Sub", [h, x])])
        pre = {"transform": (d_t, t), "carry": (g.op("Mul", [dy, x]), c)}
        for gate in self.gates():
            grad, s = pre[gate]
            da = g.op("Mul", [grad, g.op("Mul", [s, g.op("Sub", [g.scalar(1.0), s])])])
            dx.append(self.gate_vjp(g, gate, x, shapes[1], da, grads))
        return [g.op("Mul", [dy, t]), g.op("Sum", dx)], grads

    def gate_vjp(self, g, gate: str, x: str, shape: Shape, da: str, grads: dict) -> str:
        w = g.param(f"{gate}.weight")
        if len(shape) == 1:
            grads[f"{gate}.weight"] = g.op("Gemm", [da, x], transA=1)
            grads[f"{gate}.bias"] = g.op("ReduceSum", [da, g.ints([0])], keepdims=0)
            return g.op("MatMul", [da, w])
        k = (self.gate_kernel,) * (len(shape) - 1)
        ones = (1,) * len(k)
        pads = resolve_pads("same", shape[1:], k, ones, ones)
        grads[f"{gate}.weight"] = conv_weight_grad(g, x, da, shape, shape, (k, ones, ones), pads, 1)
        grads[f"{gate}.bias"] = g.op("ReduceSum", [da, g.ints([0, *range(2, len(shape) + 1)])],
                                     keepdims=0)
        return conv_input_grad(g, da, w, shape, shape, (k, ones, ones), pads, 1)

    def torch(self, node, emit):
        """highway(h, x, gates) (a helper), the gates in a ModuleDict: <id>.transform,
        <id>.carry; a linear map for flat inputs, else a conv with `same` padding."""
        x = node.in_shapes[1]
        if len(x) == 1:
            gates = {gate: emit.call("nn.Linear", x[0], x[0]) for gate in self.gates()}
        else:
            gates = {gate: emit.call(f"nn.Conv{len(x) - 1}d", x[0], x[0], self.gate_kernel,
                                     padding="same") for gate in self.gates()}
        helper = emit.helper("highway", HIGHWAY)
        return emit.call(helper, *emit.xs, emit.module("nn.ModuleDict", gates))

    def lower_gate(self, g, gate: str, x: str, shape: Shape) -> str:
        w, b = g.param(f"{gate}.weight"), g.param(f"{gate}.bias")
        if len(shape) == 1:
            return g.op("Gemm", [x, w, b], transB=1)
        k = [self.gate_kernel] * (len(shape) - 1)
        pads = resolve_pads("same", shape[1:], k, [1] * len(k), [1] * len(k))
        return g.op("Conv", [x, w, b], kernel_shape=k, pads=onnx_pads(pads))


HIGHWAY = '''
def highway(h, x, gates):
    """y = H(x) * T(x) + x * C(x): T = sigmoid(transform(x)), C = sigmoid(carry(x)) when
    the carry gate is learned, else 1 - T (Srivastava et al.)."""
    t = torch.sigmoid(gates["transform"](x))
    c = torch.sigmoid(gates["carry"](x)) if "carry" in gates else 1 - t
    return h * t + x * c
'''
