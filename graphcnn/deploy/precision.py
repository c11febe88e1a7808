"""Reduced-precision export (fp16, bf16) that still runs on onnxruntime's CPU provider.

Every float value gets a precision. A node runs in the low precision when the target provider
computes it there itself (runtime/half_kernels.py: a one-node probe, once per op signature, that
does not count onnxruntime's CPU emulation, fp16 nodes it runs in fp32 behind casts of its own)
and its layer does not keep it in fp32 (Layer.fp32_ops: normalisation statistics, softmax,
NMS), and then only where that saves casts: a conv, conv-transpose, matmul or gemm whenever
the provider has its kernel, any other op only when a value it reads is already low. So no op
gets casts on both sides just to move or compare values in half, and a provider with no half
conv (x86 CPUs) computes the whole model in fp32, with no cast but the weights'.
Casts are inserted where the two meet. Weights are stored in the low precision either way (a
Cast restores fp32 where needed), so the file shrinks by half even where compute stays fp32.
Model inputs and outputs stay fp32, so callers feed and read the same arrays as before.
convert's report says how much runs in the low precision.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graph import CheckedGraph
from ..layers.base import FP32_ALL
from ..lower.save import without_initializers
from ..runtime import half_kernels
from ..runtime.half_kernels import HEAVY, PrecisionReport

LOW = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
StaysFp32 = Callable[[onnx.NodeProto], bool]


def layer_fp32_rule(checked: CheckedGraph) -> StaysFp32:
    """Whether an ONNX node stays fp32: its layer (the node id its name starts with: `<id>`
    or `<id>/<Op><k>`) lists its op type in fp32_ops, or keeps all of them (FP32_ALL)."""
    kept = {n.id: n.layer.fp32_ops for n in checked.nodes if n.layer.fp32_ops}

    def stays(node: onnx.NodeProto) -> bool:
        ops = kept.get(_owner(node.name, kept))
        return bool(ops) and (node.op_type in ops or ops == FP32_ALL)
    return stays


def _owner(name: str, ids) -> str | None:
    """The longest node id that `name` is or starts with followed by '/'."""
    parts = name.split("/")
    for end in range(len(parts), 0, -1):
        candidate = "/".join(parts[:end])
        if candidate in ids:
            return candidate
    return None


def convert(model: onnx.ModelProto, precision: str, stays_fp32: StaysFp32,
            provider: str = "cpu") -> tuple[onnx.ModelProto, PrecisionReport]:
    """A new model in `precision` for `provider` (the argument is left as it was), and the
    report of how much of it runs in that precision."""
    if precision == "fp32":
        return model, PrecisionReport("fp32", provider, of="model")
    low, types = LOW[precision], half_kernels.value_types(model)
    probe = _Probe(low, types, half_kernels.provider_name(provider),
                   half_kernels.default_opset(model))
    new = without_initializers(model)
    graph = new.graph
    _store_weights_low(model.graph, graph, low)
    floats = {name for name, (elem, _) in types.items() if elem == TensorProto.FLOAT}
    converter = _CastInserter(graph, low, floats)
    placed = []
    for source, node in zip(model.graph.node, list(graph.node)):
        runs_low = not stays_fp32(source) and probe.runs_low(source, converter)
        converter.place(node, runs_low)
        placed.append((source, runs_low))
    converter.fix_outputs()
    del graph.value_info[:]
    return new, half_kernels.report(placed, types, precision, provider, "model")


class _Probe:
    """Whether a node of the fp32 model runs low (the module's rules, after the layer's)."""

    def __init__(self, low: int, types: dict, provider: str, opset: int):
        self.low, self.types, self.provider, self.opset = low, types, provider, opset

    def runs_low(self, node, converter: "_CastInserter") -> bool:
        if node.op_type == "Cast":
            return False  # its result's type is its `to`, whatever it reads
        if node.op_type not in HEAVY and not converter.reads_low(node):
            return False  # it would need casts on both sides to run low
        if not all(o in self.types for o in node.output):
            return False  # onnx could not type a result: its consumers would not know to cast
        sig = half_kernels.signature(node, self.types, self.low)
        return half_kernels.has_kernel(sig, self.low, self.provider, self.opset)


def _store_weights_low(source, target, low: int) -> None:
    """The source graph's initializers into the target graph, the float ones in `low`."""
    for t in source.initializer:
        if t.data_type == TensorProto.FLOAT:
            target.initializer.append(_to_low(numpy_helper.to_array(t), t.name, low))
        else:
            target.initializer.append(t)


def _to_low(values: np.ndarray, name: str, low: int) -> TensorProto:
    if low == TensorProto.FLOAT16:
        return numpy_helper.from_array(values.astype(np.float16), name)
    import ml_dtypes

    return numpy_helper.from_array(values.astype(ml_dtypes.bfloat16), name)


class _CastInserter:
    """Rewrites node inputs so each node sees floats in its own precision."""

    def __init__(self, graph, low: int, floats: set[str]):
        self.graph, self.low, self.floats = graph, low, floats
        self.precision = {i.name: TensorProto.FLOAT for i in graph.input if i.name in floats}
        self.weights = {t.name for t in graph.initializer if t.data_type == low}
        self.precision.update(dict.fromkeys(self.weights, low))
        self.casts: dict[tuple[str, int], str] = {}
        self.new_nodes: list = []

    def reads_low(self, node) -> bool:
        """Does the node read a low value other than a stored weight? (Casting a weight is
        cheap; casting an activation there and back is not.)"""
        return any(self.precision.get(i) == self.low and i not in self.weights
                   for i in node.input)

    def place(self, node, run_low: bool) -> None:
        want = self.low if run_low else TensorProto.FLOAT
        for k, name in enumerate(node.input):
            if name in self.precision and self.precision[name] != want:
                node.input[k] = self.cast(name, want)
        for name in node.output:
            if name in self.floats:
                self.precision[name] = want
        self.new_nodes.append(node)

    def cast(self, name: str, to: int) -> str:
        key = (name, to)
        if key not in self.casts:
            out = f"{name}/to_{'fp32' if to == TensorProto.FLOAT else 'low'}"
            self.new_nodes.append(helper.make_node("Cast", [name], [out], name=out, to=to))
            self.casts[key] = out
        return self.casts[key]

    def fix_outputs(self) -> None:
        """Outputs stay fp32: a low-precision result is renamed and cast back under its name."""
        for out in self.graph.output:
            if self.precision.get(out.name) == self.low:
                inner = f"{out.name}/low"
                for node in self.new_nodes:
                    node.output[:] = [inner if o == out.name else o for o in node.output]
                    node.input[:] = [inner if i == out.name else i for i in node.input]
                self.new_nodes.append(helper.make_node("Cast", [inner], [out.name], name=out.name,
                                                       to=TensorProto.FLOAT))
        del self.graph.node[:]
        self.graph.node.extend(self.new_nodes)
