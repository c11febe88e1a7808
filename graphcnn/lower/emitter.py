"""Collects ONNX nodes while layers lower themselves; the only place that makes NodeProtos.

Names flow from the spec: a node's result is the value named by its id, its parameters are
`<id>.<name>`, and intermediates are `<id>/<Op><k>`. Small constants are shared and named by
their value, so the same spec always gives the same graph.
"""
from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper


class Emitter:
    def __init__(self, float_type: int = TensorProto.FLOAT):
        self.nodes: list[NodeProto] = []
        self.constants: dict[str, TensorProto] = {}
        self.float_type = float_type
        self.node_id = ""
        self.aux: dict[tuple[str, str], str] = {}  # (node id, role) -> value, e.g. pool indices
        self._start = 0
        self._counter = 0
        self.phase = ""

    def begin(self, node_id: str, phase: str = "") -> None:
        """Start a node's ops. `phase` tags their names (training writes a layer's backward as
        `conv1/grad/ConvTranspose1`, apart from its forward `conv1/Conv1`)."""
        self.node_id, self._start, self._counter = node_id, len(self.nodes), 0
        self.phase = phase

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs):
        """Append one ONNX node; returns its output name (or names when outputs > 1)."""
        self._counter += 1
        base = f"{self.node_id}/{self.phase}{op_type}{self._counter}"
        names = [base] if outputs == 1 else [f"{base}:{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=base, **attrs))
        return names[0] if outputs == 1 else names

    def param(self, name: str) -> str:
        return f"{self.node_id}.{name}"

    def ints(self, values) -> str:
        """An int64 constant tensor (shapes, axes, starts)."""
        values = [int(v) for v in values]
        name = "const.i64[" + ",".join(map(str, values)) + "]"
        if name not in self.constants:
            self.constants[name] = numpy_helper.from_array(np.array(values, np.int64), name)
        return name

    def scalar(self, value: float) -> str:
        """A float scalar in the model's float type (broadcasts against any tensor)."""
        dtype = helper.tensor_dtype_to_np_dtype(self.float_type)
        name = f"const.{np.dtype(dtype).name}[{float(value)!r}]"
        if name not in self.constants:
            self.constants[name] = numpy_helper.from_array(np.array(value, dtype), name)
        return name

    def array(self, name: str, values: np.ndarray) -> str:
        """A constant array owned by the current node (`<id>/<name>`)."""
        full = f"{self.node_id}/{name}"
        self.constants[full] = numpy_helper.from_array(np.ascontiguousarray(values), full)
        return full

    def finish(self, result: str) -> None:
        """Make the node's result carry the node id as its name."""
        if result == self.node_id:
            return
        produced = [n for n in self.nodes[self._start:] if result in n.output]
        if not produced:  # the result is another node's value: name it with an Identity
            self.nodes.append(helper.make_node("Identity", [result], [self.node_id], name=self.node_id))
            return
        for node in self.nodes[self._start:]:
            node.input[:] = [self.node_id if v == result else v for v in node.input]
            node.output[:] = [self.node_id if v == result else v for v in node.output]
        produced[0].name = self.node_id
