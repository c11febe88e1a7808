"""Collects ONNX nodes while layers lower themselves; the only place that makes NodeProtos.

Names flow from the spec: a node's result is the value named by its id, its parameters are
`<id>.<name>`, and intermediates are `<id>/<Op><k>`. Small constants are shared and named by
their value, so the same spec always gives the same graph.

What one node's lowering hands another (a max pool's Indices to its unpool, a batchnorm's
batch statistics to its own backward rule) is kept as a typed value: a small frozen dataclass
the layer defines, stored under (node id, its class) by `keep` and read by `kept`. A mistyped
class name fails at import; a value never kept fails at the first lowering that reads it.
"""
from __future__ import annotations

from typing import TypeVar

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

from ..errors import CompileError

Kept = TypeVar("Kept")


class Emitter:
    # element types by name, for Cast's `to` (layers never import onnx)
    FLOAT, DOUBLE = TensorProto.FLOAT, TensorProto.DOUBLE
    INT64, BOOL = TensorProto.INT64, TensorProto.BOOL

    def __init__(self, float_type: int = TensorProto.FLOAT):
        self.nodes: list[NodeProto] = []
        self.constants: dict[str, TensorProto] = {}
        self.float_type = float_type
        self.node_id = ""
        self._kept: dict[tuple[str, type], object] = {}
        self._wanted: set[tuple[str, type]] = set()
        self.state_updates: dict[tuple[str, str], str] = {}  # (node id, param) -> new value
        self._start = 0
        self._counter = 0
        self.phase = ""

    @property
    def batch_mask(self) -> str:
        """[B] float: 1 for a real row of the batch, 0 for a padding row (training only)."""
        raise CompileError("the batch mask exists only in a training step")

    @property
    def step(self) -> str:
        """The int64 scalar training step, 1-based (training only)."""
        raise CompileError("the step counter exists only in a training step")

    def want(self, node_id: str, kind: type) -> None:
        """Ask node `node_id` to keep a `kind` value when it lowers (see Layer.needs)."""
        self._wanted.add((node_id, kind))

    def wants(self, kind: type) -> bool:
        """Whether some node asked the current node for a `kind` value."""
        return (self.node_id, kind) in self._wanted

    def keep(self, value: object) -> None:
        """Keep a typed value of the current node, for another node or its own backward rule."""
        self._kept[(self.node_id, type(value))] = value

    def kept(self, kind: type[Kept], node_id: str | None = None) -> Kept:
        """The `kind` value kept by `node_id` (default: the current node)."""
        key = (node_id if node_id is not None else self.node_id, kind)
        if key not in self._kept:
            raise CompileError(f"no {kind.__name__} was kept by node '{key[0]}'")
        return self._kept[key]  # type: ignore[return-value]

    def new_state(self, param: str, value: str) -> None:
        """The value that the current node's non-trainable parameter `param` (a running
        statistic) takes after this training step."""
        self.state_updates[(self.node_id, param)] = value

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
