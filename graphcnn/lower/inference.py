"""CheckedGraph -> ONNX ModelProto for inference."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

import onnx
from onnx import TensorProto, helper

from ..version import __version__
from ..errors import CompileError
from ..graph import CheckedGraph
from ..gcpause import gc_paused
from ..layers import Param, Shape
from .emitter import Emitter
from .initial_values import initial_value
from .metadata import checked_metadata
from .opset import choose_opset
from .walk import inference, lower_nodes, portable_for


@gc_paused()
def lower(checked: CheckedGraph, *, seed: int = 0, opset: int | None = None,
          batch: int | None = None, weights: Mapping[str, np.ndarray] | None = None,
          spec_text: str | None = None, parameters: bool = True,
          portable: Iterable[str] = ()) -> onnx.ModelProto:
    """An inference model: every value named from the spec, every intermediate with value_info.
    With `parameters=False` the weights are left out, for save_model to stream them straight
    to the file (pending_parameters). The nodes in `portable` use their portable lowering."""
    if batch is not None and batch < 1:
        raise CompileError("batch must be at least 1", received=str(batch))
    checked = checked.reaching_outputs()
    g = emit_nodes(checked, portable)
    version = choose_opset(opset, {n.op_type for n in g.nodes})
    dim = batch if batch is not None else "N"
    inputs = [value_info(n, s, dim) for n, s in checked.inputs.items()]
    outputs = [value_info(o, checked.shape_of(o), dim) for o in checked.outputs]
    shapes = [value_info(n.id, n.shape, dim) for n in checked.nodes if n.id not in checked.outputs]
    graph = helper.make_graph(g.nodes, checked.name, inputs, outputs,
                              initializer=list(g.constants.values()), value_info=shapes)
    model = make_model(graph, version)
    del graph  # make_model copied it
    if parameters:
        add_parameters(model.graph, checked, seed, weights)  # straight into the model: one copy
    add_intermediate_shapes(model, checked, dim)
    meta = {"graphcnn_version": __version__, "seed": str(seed)}
    if spec_text is not None:
        meta["graphcnn_spec"] = spec_text
        meta.update(checked_metadata(checked))  # preprocess: and labels:, how to feed it
    helper.set_model_props(model, meta)
    return model


def emit_nodes(checked: CheckedGraph, portable: Iterable[str] = ()) -> Emitter:
    """Every node's inference lowering (the portable one for the ids in `portable`)."""
    g = Emitter()
    lower_nodes(g, checked.nodes, portable_for(portable) if portable else inference)
    return g


def make_model(graph: onnx.GraphProto, version: int) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", version)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="graphcnn",
                              producer_version=__version__)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model


def value_info(name: str, shape: Shape, dim) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [dim, *shape])


def add_parameters(graph: onnx.GraphProto, checked: CheckedGraph, seed: int,
                   weights: Mapping[str, np.ndarray] | None) -> None:
    """Append every parameter as an initializer, built in place: numpy_helper.from_array and
    make_graph would each hold another copy of all the weights."""
    for pending in pending_parameters(checked, seed, weights):
        tensor = graph.initializer.add()
        tensor.name, tensor.data_type = pending.name, TensorProto.FLOAT
        tensor.dims.extend(pending.shape)
        tensor.raw_data = pending.values().tobytes()


@dataclass(frozen=True)
class PendingParameter:
    """A parameter tensor not made yet: its values are drawn (or read) when asked, so a writer
    can hold one tensor at a time."""

    name: str
    shape: tuple[int, ...]
    node_id: str
    param: Param
    seed: int
    weights: Mapping[str, np.ndarray] | None

    @property
    def nbytes(self) -> int:
        return self.param.size * 4

    def values(self) -> np.ndarray:
        """Little-endian float32 values."""
        return parameter_values(self.name, self.node_id, self.param, self.seed, self.weights)


def pending_parameters(checked: CheckedGraph, seed: int,
                       weights: Mapping[str, np.ndarray] | None) -> list[PendingParameter]:
    return [PendingParameter(f"{node.id}.{pname}", tuple(param.shape), node.id, param, seed, weights)
            for node in checked.nodes for pname, param in node.params.items()]


def parameter_values(name: str, node_id: str, param, seed: int, weights) -> np.ndarray:
    if weights is not None and name in weights:
        values = np.asarray(weights[name], dtype=np.float32)
        if values.shape != tuple(param.shape):
            raise CompileError(f"weight '{name}' has the wrong shape", node=node_id,
                               expected=str(list(param.shape)), received=str(list(values.shape)))
    else:
        try:
            values = initial_value(name, param, seed)
        except MemoryError:  # a network check admits (under --max-params) but this machine not
            size = 4 * math.prod(param.shape)
            raise CompileError(f"not enough memory to draw weight '{name}' ({size / 2**30:.1f} "
                               "GiB)", node=node_id, hint="a smaller layer, or a machine with "
                               "more memory") from None
    return np.ascontiguousarray(values.astype("<f4", copy=False))


def add_intermediate_shapes(model: onnx.ModelProto, checked: CheckedGraph, dim) -> None:
    """value_info for the values inside a node (pads, gates), from ONNX shape inference run on
    a weightless copy; node results must agree with our own shapes or it is a bug of ours."""
    present = {t.name for t in model.graph.initializer}
    pending = [helper.make_tensor_value_info(f"{n.id}.{p}", TensorProto.FLOAT, list(param.shape))
               for n in checked.nodes for p, param in n.params.items() if f"{n.id}.{p}" not in present]
    light = weightless_copy(model, pending)  # weights not made yet are declared all the same
    inferred = onnx.shape_inference.infer_shapes(light, strict_mode=True, data_prop=True)
    known = {v.name for v in model.graph.value_info} | {o.name for o in model.graph.output}
    for vi in inferred.graph.value_info:
        if vi.name not in known:
            model.graph.value_info.append(vi)
    ours = {n.id: [dim, *n.shape] for n in checked.nodes}
    for vi in inferred.graph.value_info:
        if vi.name in ours:
            theirs = [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]
            if theirs != ours[vi.name]:
                raise AssertionError(f"{vi.name}: graphcnn shape {ours[vi.name]} != ONNX {theirs}")


def weightless_copy(model: onnx.ModelProto, extra: list | None = None) -> onnx.ModelProto:
    """The model with float weights declared as typed inputs instead of stored: cheap to copy,
    and enough for shape inference and the checker. `extra`: more such declarations."""
    graph = model.graph
    small = [t for t in graph.initializer if t.data_type == TensorProto.INT64]
    decls = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
             for t in graph.initializer if t.data_type != TensorProto.INT64] + list(extra or [])
    g = helper.make_graph(graph.node, graph.name, list(graph.input) + decls, graph.output,
                          initializer=small, value_info=graph.value_info)
    light = helper.make_model(g, opset_imports=model.opset_import)
    light.ir_version = model.ir_version
    return light
