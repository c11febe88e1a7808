"""The one walk that lowers a checked graph's nodes into an emitter.

Inference, the training forward, `compile --portable` and the `--dynamic` check all lower
through it; they differ only in which of a layer's lowerings each node uses. Before any node
lowers, every node's `needs` is asked, so a node lowering early knows what a later one will
read from it (a max pool emits its Indices only when an unpool wants them).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from ..errors import GraphCnnError
from ..graph import NodeInfo
from .emitter import Emitter

Lowering = Callable[..., str]  # (g, xs, shapes, out) -> the result's value name


def inference(node: NodeInfo) -> Lowering:
    return node.layer.lower


def training(node: NodeInfo) -> Lowering:
    return node.layer.lower_train


def portable_for(ids: Iterable[str]) -> Callable[[NodeInfo], Lowering]:
    """The inference lowering, but the portable one for the nodes in `ids`."""
    chosen = frozenset(ids)
    return lambda node: node.layer.lower_portable if node.id in chosen else node.layer.lower


def lower_nodes(g: Emitter, nodes: Iterable[NodeInfo],
                lowering: Callable[[NodeInfo], Lowering] = inference,
                after: Callable[[NodeInfo, list], None] | None = None) -> None:
    """Lower each node in order, its result named by its id; an error is located at the
    node's spec line. `after(node, its ONNX nodes)` sees each node's emitted ops."""
    nodes = list(nodes)
    for node in nodes:
        for source, kind in node.layer.needs(list(node.inputs)):
            g.want(source, kind)
    for node in nodes:
        start = len(g.nodes)
        g.begin(node.id)
        try:
            result = lowering(node)(g, list(node.inputs), list(node.in_shapes), node.shape)
        except GraphCnnError as exc:
            raise exc.at(node.loc, node.id, node.via) from None
        g.finish(result)
        if after is not None:
            after(node, g.nodes[start:])
