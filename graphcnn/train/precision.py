"""Mixed precision for the training step (`graphcnn train --precision fp16|bf16`).

The step is built in fp32 (train/step.py) and then rewritten: forward and backward nodes of the
spec's layers run in the half type where the execution provider has a kernel for them, every
other value stays fp32. The rules follow torch.autocast:

- conv, conv-transpose, matmul and gemm run in half when the provider has the kernel;
- reductions, exp/log/pow/sqrt, softmax and normalisation stay fp32 (sums of half values
  overflow; torch lists them as its fp32 ops), and so does every op of a layer that keeps some
  op in fp32 for inference (Layer.fp32_ops: batchnorm's statistics, softmax, ...) other than
  the four above;
- any other op of a layer follows its inputs: half when one of them already is and the
  provider has the kernel, so a provider without half kernels adds no casts at all;
- the loss, the optimizer update, the loss scaling and the outputs stay fp32: parameters are
  fp32 masters (cast to half where a half op reads them, once per tensor), gradients come back
  to fp32 before the update, and every carried tensor goes in and out as fp32.

Whether the provider has a kernel is asked of onnxruntime itself (runtime/half_kernels.py, the
probe `graphcnn compile --precision` uses too), and only a kernel that computes in half counts:
onnxruntime's CPU provider runs the fp16 nodes it has no kernel for in fp32 behind casts of its
own, which with onnxruntime 1.32 on an AVX2 x86 CPU is every fp16 conv, matmul and arithmetic
op, and it has bf16 kernels for data movement only. So there both fp16 and bf16 steps compute
in fp32 (fp16 still scales the loss); the report (PrecisionReport.line) says how much of the
step's multiply-adds ran in half, and CUDA runs both.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import CompileError
from ..graph import CheckedGraph
from ..runtime import half_kernels
from ..runtime.half_kernels import HEAVY, PrecisionReport

__all__ = ["PRECISIONS", "HALF", "PrecisionReport", "check_precision", "to_half"]

PRECISIONS = ("fp32", "bf16", "fp16")
HALF = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
# torch.autocast's fp32 list, in ONNX ops, and the normalisations
FP32_OPS = frozenset({
    "ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceProd", "CumSum", "Exp", "Log", "Pow", "Reciprocal", "Sqrt", "Erf",
    "Softmax", "LogSoftmax", "Softplus", "BatchNormalization", "LayerNormalization",
    "InstanceNormalization", "GroupNormalization", "LRN", "NonMaxSuppression",
    "Cast",  # its result's type is its `to`; a half consumer gets its own cast
    # scatter-adds accumulate (a max pool's gradient); the CPU provider also refuses their fp16
    # add-reduction only when run, which a session-creation probe cannot see
    "ScatterElements", "ScatterND"})


# ops of the step that belong to no layer (train/step.py names them so; a spec node with one
# of these ids just keeps its ops in fp32)
FP32_PHASES = ("loss/", "output/", "amp/")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise CompileError(f"unknown precision '{precision}'", expected=" or ".join(PRECISIONS),
                           received=str(precision))


def to_half(model: onnx.ModelProto, checked: CheckedGraph, precision: str,
            provider: str = "cpu") -> tuple[onnx.ModelProto, PrecisionReport]:
    """The fp32 step `model` with its layers' compute in `precision` where `provider` runs it,
    and the report of how much does. fp32 returns the model itself."""
    check_precision(precision)
    if precision == "fp32":
        return model, PrecisionReport("fp32", provider)
    types = half_kernels.value_types(model)
    full = half_kernels.provider_name(provider)
    rewriter = Rewriter(model, HALF[precision], types)
    keeps_fp32 = {n.id: bool(n.layer.fp32_ops) for n in checked.nodes}  # by layer id
    opset = half_kernels.default_opset(model)
    for node in model.graph.node:
        rewriter.place(node, runs_half(node, rewriter, keeps_fp32, full, opset))
    report = half_kernels.report(rewriter.placed, types, precision, provider, "step")
    return rewriter.model(), report


def runs_half(node, rw: "Rewriter", keeps_fp32: dict[str, bool], provider: str,
              opset: int) -> bool:
    """Whether this node of the fp32 step runs in half (see the module's rules)."""
    owner = node.name.split("/")[0]
    if owner not in keeps_fp32 or node.name.startswith(FP32_PHASES) or "/update/" in node.name \
            or node.op_type in FP32_OPS:
        return False  # the loss, the update, the loss scale, the outputs; torch's fp32 ops
    if node.op_type not in HEAVY and (keeps_fp32[owner] or not rw.reads_half(node)):
        return False
    if not all(o in rw.types for o in node.output):
        return False  # onnx could not type a result: its consumers would not know to cast
    return half_kernels.has_kernel(half_kernels.signature(node, rw.types, rw.half), rw.half,
                                   provider, opset)


class Rewriter:
    """Walks the step's nodes in order, giving each the inputs in its precision: a Cast per
    (value, type), made once and shared; a constant read in half gets a half copy instead.
    A Cast of a value that an existing Cast made from a non-float (a mask from booleans) casts
    that source directly, so no Cast -> Cast chain appears."""

    def __init__(self, model: onnx.ModelProto, half: int, types: dict):
        self.source, self.half, self.types = model, half, types
        self.dtype = {name: t for name, (t, _) in types.items()}  # current element types
        self.constants = {t.name: t for t in model.graph.initializer}
        self.made_by = {o: n for n in model.graph.node for o in n.output}
        self.casts: dict[tuple[str, int], str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.extra: list[onnx.TensorProto] = []
        self.placed: list[tuple[onnx.NodeProto, bool]] = []  # the step's nodes, in half or not
        self.bypassed: set[str] = set()  # results of existing Casts that a new Cast skips

    def is_float(self, name: str) -> bool:
        return self.dtype.get(name) in (TensorProto.FLOAT, self.half)

    def reads_half(self, node) -> bool:
        return any(self.dtype.get(i) == self.half for i in node.input)

    def place(self, node, half: bool) -> None:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        want = self.half if half else TensorProto.FLOAT
        for k, name in enumerate(new.input):
            if name and self.is_float(name) and self.dtype[name] != want:
                new.input[k] = self.cast(name, want)
        for name in new.output:
            if self.is_float(name):
                self.dtype[name] = want
        self.placed.append((node, half))
        self.nodes.append(new)

    def cast(self, name: str, to: int) -> str:
        key = (name, to)
        if key in self.casts:
            return self.casts[key]
        out = f"{name}/{'fp32' if to == TensorProto.FLOAT else 'half'}"
        if name in self.constants:  # a half copy of the constant, no Cast at run time
            self.extra.append(numpy_helper.from_array(
                half_array(numpy_helper.to_array(self.constants[name]), to), out))
        else:
            self.nodes.append(helper.make_node("Cast", [self.cast_source(name)], [out],
                                               name=out, to=to))
        self.casts[key] = out
        self.dtype[out] = to
        return out

    def cast_source(self, name: str) -> str:
        made = self.made_by.get(name)
        if made is not None and made.op_type == "Cast" and not self.is_float(made.input[0]):
            self.bypassed.add(name)
            return made.input[0]
        return name

    def model(self) -> onnx.ModelProto:
        out = onnx.ModelProto()
        out.CopyFrom(self.source)
        graph = out.graph
        del graph.node[:]
        graph.node.extend(self.live_nodes([o.name for o in graph.output]))
        used = {i for n in graph.node for i in n.input}
        kept = [t for t in graph.initializer if t.name in used] + \
            [t for t in self.extra if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        for out_info in graph.output:  # every output is fp32: the outputs region runs fp32
            assert self.dtype.get(out_info.name, TensorProto.FLOAT) != self.half, out_info.name
        return out

    def live_nodes(self, outputs: list[str]) -> list[onnx.NodeProto]:
        """The nodes without the existing Casts that new Casts bypassed and nothing else
        reads (the step came pruned, so they are the only nodes the rewrite leaves dead; their
        sources stay read by the new Casts, so no other node dies with them)."""
        read = {i for n in self.nodes for i in n.input} | set(outputs)
        return [n for n in self.nodes
                if not (n.output and n.output[0] in self.bypassed and n.output[0] not in read)]


def half_array(values: np.ndarray, to: int) -> np.ndarray:
    if to == TensorProto.FLOAT16:
        return values.astype(np.float16)
    if to == TensorProto.FLOAT:
        return values.astype(np.float32)
    import ml_dtypes

    return values.astype(ml_dtypes.bfloat16)
