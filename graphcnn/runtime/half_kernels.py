"""Which ops an execution provider computes in half precision (fp16, bf16) itself, and how
much of a rewritten model does.

Both half-precision rewrites ask this module: `graphcnn compile --precision` (deploy/precision.py)
and `graphcnn train --precision` (train/precision.py). The answer comes from onnxruntime: a
one-node model of the op in that type is handed to a session on that provider alone (no CPU
fallback), once per (op signature, half type, provider, opset). Only a kernel that computes in
half counts: onnxruntime's CPU provider runs an fp16 node it has no kernel for in fp32 behind
casts of its own, which is no faster and no more precise than the fp32 op (kernel_kind). With
onnxruntime 1.32 on an AVX2 x86 CPU that is every fp16 conv, matmul and arithmetic op; its real
fp16 kernels move data (Transpose, Concat, Flatten) or compare (Max, Min, Clip), and it has bf16
kernels for data movement only.
"""
from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

# the ops whose multiply-adds the report counts, and that start a run of half ops
HEAVY = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})

# (op type, ((attribute, repr of its value), ...), ((element type, rank) or None for an
# omitted optional input, ...), number of outputs): what a probe builds its node from
Signature = tuple


def signature(node: onnx.NodeProto, types: dict, half: int) -> Signature:
    """The probe key of a node of an fp32 model, its float inputs in `half`; `types` as
    value_types gives them (an untyped input probes as undefined, which no kernel takes)."""
    def kind(name: str):
        elem, dims = types.get(name, (TensorProto.UNDEFINED, ()))
        return (half if elem == TensorProto.FLOAT else elem), len(dims)
    attrs = tuple(sorted((a.name, repr(helper.get_attribute_value(a))) for a in node.attribute))
    return node.op_type, attrs, tuple(kind(i) if i else None for i in node.input), len(node.output)


def has_kernel(sig: Signature, half: int, provider: str, opset: int) -> bool:
    """Does `provider` (onnxruntime's name) compute this node in half itself?"""
    return kernel_kind(sig, half, provider, opset) == "native"


@functools.lru_cache(maxsize=None)
def kernel_kind(sig: Signature, half: int, provider: str, opset: int) -> str:
    """'native', 'emulated' or 'none': how `provider` alone (no CPU fallback) runs this one
    node in half. onnxruntime's CPU provider accepts fp16 nodes it has no kernel for by
    wrapping them in Casts to fp32 (its InsertCastTransformer), and its optimizer then drops
    the casts between such nodes, so the values stay fp32: 'emulated', seen as a Cast to fp32
    in the probe's optimized graph (bf16 nodes without a kernel are refused outright)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # a refusal is an answer here, not an error to show
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if provider != "CPUExecutionProvider":
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    with tempfile.TemporaryDirectory(prefix="graphcnn-probe-") as folder:
        options.optimized_model_filepath = str(Path(folder) / "probe.onnx")
        try:  # an attribute the probe cannot rebuild (a tensor) counts as a refusal too
            ort.InferenceSession(probe_model(sig, opset).SerializeToString(), options,
                                 providers=[provider])
        except Exception:  # noqa: BLE001 - any refusal means "no kernel"
            return "none"
        optimized = onnx.load(options.optimized_model_filepath)
    to_fp32 = any(n.op_type == "Cast" and helper.get_attribute_value(n.attribute[0]) ==
                  TensorProto.FLOAT for n in optimized.graph.node)
    return "emulated" if to_fp32 else "native"


def probe_model(sig: Signature, opset: int) -> onnx.ModelProto:
    """A model of the one node `sig` describes, its inputs of any shape. The outputs are left
    untyped (no elem_type at all) for onnxruntime to infer: an output declared with type
    UNDEFINED makes every session refuse the model, so every probe said "no kernel"."""
    op, attrs, ins, n_out = sig
    inputs = [helper.make_tensor_value_info(f"i{k}", t, [None] * rank)
              for k, (t, rank) in enumerate(i for i in ins if i is not None)]
    names = iter(i.name for i in inputs)
    node = helper.make_node(op, [next(names) if i is not None else "" for i in ins],
                            [f"o{k}" for k in range(n_out)],
                            **{name: literal(text) for name, text in attrs})
    outputs = [onnx.ValueInfoProto(name=f"o{k}") for k in range(n_out)]
    model = helper.make_model(helper.make_graph([node], "probe", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    return model


def literal(text: str):
    """An attribute value back from its repr (ints, floats, lists, bytes)."""
    import ast

    value = ast.literal_eval(text)
    return value.decode() if isinstance(value, bytes) else value


def provider_name(provider: str) -> str:
    """onnxruntime's name of the provider (a RunError when this onnxruntime lacks it)."""
    from .sessions import resolve_provider

    return resolve_provider(provider)[0]


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset of the default ONNX domain, which the probes are built in."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def value_types(model: onnx.ModelProto) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Element type and dims (0 where unknown) of every value onnx's shape inference types."""
    from ..lower.inference import weightless_copy

    typed = onnx.shape_inference.infer_shapes(weightless_copy(model))
    graph, found = typed.graph, {}
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = v.type.tensor_type
        found[v.name] = (t.elem_type, tuple(d.dim_value for d in t.shape.dim))
    for t in model.graph.initializer:
        found[t.name] = (t.data_type, tuple(t.dims))
    return found


@dataclass(frozen=True)
class PrecisionReport:
    """What runs in half: multiply-adds of the heavy ops, and float ops by count. `of`: what
    was rewritten, the training "step" (which ran) or an inference "model" (which will run)."""

    precision: str
    provider: str
    half_macs: int = 0
    total_macs: int = 0
    half_ops: int = 0
    float_ops: int = 0
    of: str = "step"

    @property
    def share(self) -> float:
        return self.half_macs / self.total_macs if self.total_macs else 0.0

    def line(self) -> str:
        if self.precision == "fp32":
            return "precision fp32"
        p, verb = self.precision, "ran" if self.of == "step" else "run"
        kept = ("weights, optimizer state, batchnorm statistics and the loss in fp32"
                if self.of == "step" else f"weights stored in {p}; inputs and outputs fp32")
        text = (f"precision {p} on the {self.provider} provider: {self.share:.0%} of the "
                f"{self.of}'s conv/matmul multiply-adds and {self.half_ops} of "
                f"{self.float_ops} float ops {verb} in {p}; {kept}")
        if self.half_macs == 0:
            text += f" (the {self.provider} provider computes none of them in {p} itself: " \
                    f"the {self.of} runs in fp32)"
        elif self.share < 0.5:
            text += f" (the {self.provider} provider lacks most {p} kernels: " \
                    "this is mostly fp32)"
        return text


def report(placed, types: dict, precision: str, provider: str, of: str) -> PrecisionReport:
    """The report of `placed`, the fp32 model's nodes as (node, runs in half) pairs: heavy
    ops' multiply-adds (shapes from the fp32 model) and float ops (casts a rewrite added not
    counted), in half and in all."""
    half_macs = total_macs = half_ops = float_ops = 0
    for node, half in placed:
        float_ops += any(types.get(v, (0,))[0] == TensorProto.FLOAT
                         for v in [*node.input, *node.output])
        half_ops += half
        if node.op_type in HEAVY:
            macs = multiply_adds(node, types)
            total_macs += macs
            half_macs += macs if half else 0
    return PrecisionReport(precision, provider, half_macs, total_macs, half_ops, float_ops, of)


def multiply_adds(node, types: dict) -> int:
    """A conv/matmul/gemm's multiply-adds from the fp32 model's shapes: an unknown dim (a
    symbolic batch N) counts 1, so an inference model's shares are per sample."""
    shape = lambda name: tuple(d or 1 for d in types.get(name, (0, ()))[1])  # noqa: E731
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
