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

Whether the provider has a kernel is asked of onnxruntime itself: a one-node model of the op in
that type is handed to a session on that provider alone (no CPU fallback), once per op
signature and provider, and only a kernel that computes in half counts: onnxruntime's CPU
provider runs an fp16 node it has no kernel for in fp32 behind casts of its own (kernel_kind),
which with onnxruntime 1.32 on an AVX2 x86 CPU is every fp16 conv, matmul and arithmetic op,
and it has bf16 kernels for data movement only. So there both fp16 and bf16 steps compute in
fp32 (fp16 still scales the loss); the report (PrecisionReport.line) says how much of the
step's multiply-adds ran in half, and CUDA runs both.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import CompileError
from ..graph import CheckedGraph
from ..lower.inference import weightless_copy

PRECISIONS = ("fp32", "bf16", "fp16")
HALF = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
HEAVY = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
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


@dataclass(frozen=True)
class PrecisionReport:
    """What ran in half: multiply-adds of the heavy ops, and float ops by count."""

    precision: str
    provider: str
    half_macs: int = 0
    total_macs: int = 0
    half_ops: int = 0
    float_ops: int = 0

    @property
    def share(self) -> float:
        return self.half_macs / self.total_macs if self.total_macs else 0.0

    def line(self) -> str:
        if self.precision == "fp32":
            return "precision fp32"
        text = (f"precision {self.precision} on the {self.provider} provider: {self.share:.0%} "
                f"of the step's conv/matmul multiply-adds and {self.half_ops} of "
                f"{self.float_ops} float ops ran in {self.precision}; weights, optimizer state, "
                "batchnorm statistics and the loss in fp32")
        if self.half_macs == 0:
            text += f" (the {self.provider} provider computes none of them in " \
                    f"{self.precision} itself: the step runs in fp32)"
        elif self.share < 0.5:
            text += f" (the {self.provider} provider lacks most {self.precision} kernels: " \
                    "this is mostly fp32)"
        return text


def to_half(model: onnx.ModelProto, checked: CheckedGraph, precision: str,
            provider: str = "cpu") -> tuple[onnx.ModelProto, PrecisionReport]:
    """The fp32 step `model` with its layers' compute in `precision` where `provider` runs it,
    and the report of how much does. fp32 returns the model itself."""
    check_precision(precision)
    if precision == "fp32":
        return model, PrecisionReport("fp32", provider)
    types, full = value_types(model), provider_name(provider)
    rewriter = Rewriter(model, HALF[precision], types)
    keeps_fp32 = {n.id: bool(n.layer.fp32_ops) for n in checked.nodes}  # by layer id
    opset = model.opset_import[0].version
    for node in model.graph.node:
        rewriter.place(node, runs_half(node, rewriter, keeps_fp32, full, opset))
    return rewriter.model(), report(rewriter, precision, provider)


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
    return has_kernel(rw.signature(node), rw.half, provider, opset)


def provider_name(provider: str) -> str:
    """onnxruntime's name of the provider (a RunError when this onnxruntime lacks it)."""
    from ..runtime.sessions import resolve_provider

    return resolve_provider(provider)[0]


def value_types(model: onnx.ModelProto) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Element type and dims (0 where unknown) of every value onnx's shape inference types."""
    typed = onnx.shape_inference.infer_shapes(weightless_copy(model))
    graph, found = typed.graph, {}
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = v.type.tensor_type
        found[v.name] = (t.elem_type, tuple(d.dim_value for d in t.shape.dim))
    for t in model.graph.initializer:
        found[t.name] = (t.data_type, tuple(t.dims))
    return found


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

    def is_float(self, name: str) -> bool:
        return self.dtype.get(name) in (TensorProto.FLOAT, self.half)

    def reads_half(self, node) -> bool:
        return any(self.dtype.get(i) == self.half for i in node.input)

    def signature(self, node) -> tuple:
        """The node's op, attributes and its inputs' (type once in half, rank): the probe key."""
        ins = tuple((self.half if self.is_float(i) else self.types.get(i, (0, ()))[0],
                     len(self.types.get(i, (0, ()))[1])) if i else None for i in node.input)
        attrs = tuple(sorted((a.name, repr(helper.get_attribute_value(a))) for a in node.attribute))
        return node.op_type, attrs, ins, len(node.output)

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
            return made.input[0]
        return name

    def model(self) -> onnx.ModelProto:
        from .step import prune  # drops an existing Cast the folded casts bypass

        out = onnx.ModelProto()
        out.CopyFrom(self.source)
        graph = out.graph
        del graph.node[:]
        graph.node.extend(prune(self.nodes, [o.name for o in graph.output]))
        used = {i for n in graph.node for i in n.input}
        kept = [t for t in graph.initializer if t.name in used] + \
            [t for t in self.extra if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        for out_info in graph.output:  # every output is fp32: the outputs region runs fp32
            assert self.dtype.get(out_info.name, TensorProto.FLOAT) != self.half, out_info.name
        return out


def half_array(values: np.ndarray, to: int) -> np.ndarray:
    if to == TensorProto.FLOAT16:
        return values.astype(np.float16)
    if to == TensorProto.FLOAT:
        return values.astype(np.float32)
    import ml_dtypes

    return values.astype(ml_dtypes.bfloat16)


def has_kernel(signature: tuple, half: int, provider: str, opset: int) -> bool:
    """Does `provider` compute this node in half itself (a native kernel)?"""
    return kernel_kind(signature, half, provider, opset) == "native"


@functools.lru_cache(maxsize=None)
def kernel_kind(signature: tuple, half: int, provider: str, opset: int) -> str:
    """'native', 'emulated' or 'none': how `provider` alone (no CPU fallback) runs this one
    node in half. onnxruntime's CPU provider accepts fp16 nodes it has no kernel for by
    wrapping them in Casts to fp32 (its InsertCastTransformer), and its optimizer then drops
    the casts between such nodes, so the values stay fp32: 'emulated', seen as a Cast to fp32
    in the probe's optimized graph (with onnxruntime 1.32 on an AVX2 CPU every fp16 conv,
    matmul and arithmetic op is; bf16 nodes without a kernel are refused outright)."""
    import tempfile

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a refusal is an answer here, not an error to show
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if provider != "CPUExecutionProvider":
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    with tempfile.TemporaryDirectory(prefix="graphcnn-probe-") as folder:
        options.optimized_model_filepath = str(Path(folder) / "probe.onnx")
        try:  # an attribute the probe cannot rebuild (a tensor) counts as a refusal too
            ort.InferenceSession(probe_model(signature, opset).SerializeToString(), options,
                                 providers=[provider])
        except Exception:  # noqa: BLE001 - any refusal means "no kernel"
            return "none"
        optimized = onnx.load(options.optimized_model_filepath)
    to_fp32 = any(n.op_type == "Cast" and helper.get_attribute_value(n.attribute[0]) ==
                  TensorProto.FLOAT for n in optimized.graph.node)
    return "emulated" if to_fp32 else "native"


def probe_model(signature: tuple, opset: int) -> onnx.ModelProto:
    """A model of the one node `signature` describes, its inputs of any shape."""
    op, attrs, ins, n_out = signature
    inputs = [helper.make_tensor_value_info(f"i{k}", t, [None] * rank)
              for k, (t, rank) in enumerate(i for i in ins if i is not None)]
    names = iter(i.name for i in inputs)
    node = helper.make_node(op, [next(names) if i is not None else "" for i in ins],
                            [f"o{k}" for k in range(n_out)],
                            **{name: literal(text) for name, text in attrs})
    outputs = [onnx.ValueInfoProto(name=f"o{k}") for k in range(n_out)]  # typed by onnxruntime
    model = helper.make_model(helper.make_graph([node], "probe", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    return model


def literal(text: str):
    """An attribute value back from its repr (ints, floats, lists, bytes)."""
    import ast

    value = ast.literal_eval(text)
    return value.decode() if isinstance(value, bytes) else value


def report(rw: "Rewriter", precision: str, provider: str) -> PrecisionReport:
    """Multiply-adds of the heavy ops (shapes from the fp32 step) in half and in all, and the
    float ops (of the fp32 step: casts the rewrite added not counted) in half and in all."""
    half_macs = total_macs = half_ops = float_ops = 0
    for node, half in rw.placed:
        float_ops += any(rw.types.get(v, (0,))[0] == TensorProto.FLOAT
                         for v in [*node.input, *node.output])
        half_ops += half
        if node.op_type in HEAVY:
            macs = multiply_adds(node, rw.types)
            total_macs += macs
            half_macs += macs if half else 0
    return PrecisionReport(precision, provider, half_macs, total_macs, half_ops, float_ops)


def multiply_adds(node, types: dict) -> int:
    """A conv/matmul/gemm's multiply-adds from the fp32 step's shapes (1 where unknown)."""
    shape = lambda name: types.get(name, (0, ()))[1]  # noqa: E731
    out, x, w = shape(node.output[0]), shape(node.input[0]), shape(node.input[1])
    if node.op_type == "ConvTranspose":  # each input element reaches Cout/groups * kernel outputs
        size = int(np.prod(x)) * int(np.prod(w[1:]))
    elif node.op_type == "Conv":
        size = int(np.prod(out)) * int(np.prod(w[1:]))
    elif node.op_type == "Gemm":
        trans = any(a.name == "transA" and a.i for a in node.attribute)
        size = int(np.prod(out)) * (x[0] if trans else x[-1]) if x else 0
    else:
        size = int(np.prod(out)) * (x[-1] if x else 0)
    return max(size, 1)
