"""Reverse-mode differentiation over a CheckedGraph, emitted as ONNX nodes.

The forward pass is emitted first, each node by its layer's `lower_train`, so every forward
value a backward rule needs is already a graph value: a node's inputs, its result (named by
the node id) and what it kept (`g.keep`). Then the nodes are walked in reverse topological
order; each layer's `vjp(g, xs, shapes, out, y, dy)` returns (gradient per input or None,
{param name: gradient}). A value read by several nodes gets the sum of their contributions.
"""
from __future__ import annotations

from ..errors import GraphCnnError
from ..graph import CheckedGraph
from ..lower.emitter import Emitter
from ..lower.walk import inference, lower_nodes, training
from .freeze import frozen_vjp, has_state, learning_nodes


class TrainEmitter(Emitter):
    """The Emitter of training models, with the step's batch mask and step counter (the
    model inputs that name them). Node and op names carry the phase given to begin() (see
    Emitter.begin); constants owned by a node carry it too, so forward and backward constants
    of one layer never collide."""

    def __init__(self, mask: str, step: str):
        super().__init__()
        self._mask, self._step = mask, step

    @property
    def batch_mask(self) -> str:
        return self._mask

    @property
    def step(self) -> str:
        return self._step

    def array(self, name: str, values) -> str:
        return super().array(self.phase + name, values)


def forward(g: TrainEmitter, checked: CheckedGraph, frozen: frozenset[str] = frozenset()) -> None:
    """Emit every node in training mode (a frozen node with state in inference mode, see
    train/freeze.py); each result is named by its node id."""
    def lowering(node):
        return inference(node) if node.id in frozen and has_state(node) else training(node)
    lower_nodes(g, checked.nodes, lowering)


def backward(g: TrainEmitter, checked: CheckedGraph, seeds: dict[str, str],
             frozen: frozenset[str] = frozenset()) -> dict[str, str]:
    """Gradients of the loss for every parameter reached from `seeds` ({value: its gradient})
    but the `frozen` nodes', keyed by the parameter's full name (`conv1.weight`)."""
    pending: dict[str, list[str]] = {name: [grad] for name, grad in seeds.items()}
    param_grads: dict[str, str] = {}
    learning = learning_nodes(checked, frozen) if frozen else None
    for node in reversed(checked.nodes):
        if node.id not in pending or (node.id in frozen and node.id not in learning):
            continue  # a frozen node that no trainable one before it needs a gradient through
        g.begin(node.id, "grad/")
        dy = total(g, pending.pop(node.id))
        dxs, dparams = node_vjp(g, node, dy, frozen=node.id in frozen)
        for name, dx in zip(node.inputs, dxs):
            if dx is not None:
                pending.setdefault(name, []).append(dx)
        param_grads.update({f"{node.id}.{p}": v for p, v in dparams.items()})
    return param_grads


def node_vjp(g: TrainEmitter, node, dy: str, frozen: bool = False):
    """(input gradients, {param: gradient}); a frozen node's input gradients only."""
    try:
        if frozen:
            return frozen_vjp(g, node, dy), {}
        return node.layer.vjp(g, list(node.inputs), list(node.in_shapes), node.shape, node.id, dy)
    except GraphCnnError as exc:
        raise exc.at(node.loc, node.id, node.via) from None


def total(g: Emitter, grads: list[str]) -> str:
    if len(grads) == 1:
        return grads[0]
    return g.op("Add", grads) if len(grads) == 2 else g.op("Sum", grads)
