"""Reverse-mode differentiation over a CheckedGraph, emitted as ONNX nodes.

The forward pass is emitted first, in training mode (a layer's `lower_train` when it has one,
else its `lower`), so every forward value a backward rule needs is already a graph value: a
node's inputs, its result (named by the node id) and anything it left in `g.aux`. Then the
nodes are walked in reverse topological order; each layer's `vjp(g, xs, shapes, out, y, dy)`
returns (gradient per input or None, {param name: gradient}). A value read by several nodes
gets the sum of their contributions.
"""
from __future__ import annotations

from ..errors import CompileError, GraphCnnError
from ..graph import CheckedGraph
from ..lower.emitter import Emitter

MASK_KEY = ("", "mask")  # g.aux entry naming the [B] float mask of real (not padding) rows
STEP_KEY = ("", "step")  # g.aux entry naming the int64 scalar step (dropout masks use it)


class TrainEmitter(Emitter):
    """The Emitter of training models. Node and op names carry the phase given to begin() (see
    Emitter.begin); constants owned by a node carry it too, so forward and backward constants
    of one layer never collide."""

    def array(self, name: str, values) -> str:
        return super().array(self.phase + name, values)


def forward(g: TrainEmitter, checked: CheckedGraph) -> None:
    """Emit every node in training mode; each result is named by its node id."""
    for node in checked.nodes:
        g.begin(node.id)
        lower = getattr(node.layer, "lower_train", node.layer.lower)
        try:
            result = lower(g, list(node.inputs), list(node.in_shapes), node.shape)
        except GraphCnnError as exc:
            raise exc.at(node.loc, node.id, node.via) from None
        g.finish(result)


def backward(g: TrainEmitter, checked: CheckedGraph, seeds: dict[str, str]) -> dict[str, str]:
    """Gradients of the loss for every parameter reached from `seeds` ({value: its gradient}),
    keyed by the parameter's full name (`conv1.weight`)."""
    pending: dict[str, list[str]] = {name: [grad] for name, grad in seeds.items()}
    param_grads: dict[str, str] = {}
    for node in reversed(checked.nodes):
        if node.id not in pending:
            continue
        g.begin(node.id, "grad/")
        dy = total(g, pending.pop(node.id))
        dxs, dparams = node_vjp(g, node, dy)
        for name, dx in zip(node.inputs, dxs):
            if dx is not None:
                pending.setdefault(name, []).append(dx)
        param_grads.update({f"{node.id}.{p}": v for p, v in dparams.items()})
    return param_grads


def node_vjp(g: TrainEmitter, node, dy: str):
    vjp = getattr(node.layer, "vjp", None)
    if vjp is None:
        raise CompileError(f"op '{node.op}' has no backward rule (vjp), so a network using it "
                           "cannot be trained", loc=node.loc, node=node.id, via=node.via,
                           hint="train without this op, or use it only after the loss input")
    try:
        return vjp(g, list(node.inputs), list(node.in_shapes), node.shape, node.id, dy)
    except GraphCnnError as exc:
        raise exc.at(node.loc, node.id, node.via) from None


def total(g: Emitter, grads: list[str]) -> str:
    if len(grads) == 1:
        return grads[0]
    return g.op("Add", grads) if len(grads) == 2 else g.op("Sum", grads)
