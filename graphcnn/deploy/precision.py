"""Reduced-precision export (fp16, bf16) that still runs on onnxruntime's CPU provider.

Every float value gets a precision: a node runs in the low precision when the target provider
has a kernel for it there (probed once per op signature with a one-node model) and its layer
does not keep it in fp32 (Layer.fp32_ops: normalisation statistics, softmax, NMS); otherwise
it runs in fp32.
Casts are inserted where the two meet. Weights are stored in the low precision either way (a
Cast restores fp32 where needed), so the file shrinks by half even where compute stays fp32.
Model inputs and outputs stay fp32, so callers feed and read the same arrays as before.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graph import CheckedGraph
from ..layers.base import FP32_ALL
from ..lower.save import without_initializers

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
            provider: str = "cpu") -> onnx.ModelProto:
    """A new model in `precision` (the argument is left as it was)."""
    if precision == "fp32":
        return model
    low = LOW[precision]
    floats = _float_values(model.graph)
    low_nodes = [not stays_fp32(n) and _runs_low(n, floats, low, provider, model)
                 for n in model.graph.node]
    new = without_initializers(model)
    graph = new.graph
    low_nodes = {id(n) for n, runs_low in zip(graph.node, low_nodes) if runs_low}
    _store_weights_low(model.graph, graph, low)
    converter = _CastInserter(graph, low, floats)
    for node in list(graph.node):
        converter.place(node, id(node) in low_nodes)
    converter.fix_outputs()
    del graph.value_info[:]
    return new


def _float_values(graph) -> set[str]:
    """Names of float tensors: inputs, float initializers and outputs of float-producing nodes."""
    floats = {i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}
    floats |= {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    floats |= {v.name for v in list(graph.value_info) + list(graph.output)
               if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    return floats


def _runs_low(node, floats, low, provider, model) -> bool:
    if not any(i in floats for i in node.input):
        return False
    ranks = tuple(_rank(model.graph, i) for i in node.input)
    kinds = tuple(i in floats for i in node.input)
    attrs = tuple(sorted((a.name, str(helper.get_attribute_value(a))) for a in node.attribute))
    return _has_kernel(node.op_type, attrs, ranks, kinds, len(node.output), low, provider,
                       model.opset_import[0].version)


def _rank(graph, name: str) -> int:
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        if v.name == name:
            return len(v.type.tensor_type.shape.dim)
    for t in graph.initializer:
        if t.name == name:
            return len(t.dims)
    return 4


@functools.lru_cache(maxsize=None)
def _has_kernel(op, attrs, ranks, kinds, n_out, low, provider, opset) -> bool:
    """Can the provider create a session for this one node with low-precision floats?"""
    from ..runtime import session

    inputs = [helper.make_tensor_value_info(f"i{k}", low if f else TensorProto.INT64, [None] * r)
              for k, (r, f) in enumerate(zip(ranks, kinds))]
    outputs = [helper.make_tensor_value_info(f"o{k}", TensorProto.UNDEFINED, None) for k in range(n_out)]
    node = helper.make_node(op, [i.name for i in inputs], [o.name for o in outputs],
                            **{k: _attr_value(v) for k, v in attrs})
    model = helper.make_model(helper.make_graph([node], "probe", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    try:
        session(model, provider)
        return True
    except Exception:  # noqa: BLE001 - any refusal means "no kernel"
        return False


def _attr_value(text: str):
    import ast

    value = ast.literal_eval(text) if text[:1] in "[-0123456789" else text
    return value.decode() if isinstance(value, bytes) else value


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
        self.precision = {i.name: TensorProto.FLOAT for i in graph.input}
        self.precision.update({t.name: low for t in graph.initializer if t.data_type == low})
        self.casts: dict[tuple[str, int], str] = {}
        self.new_nodes: list = []

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
