"""`freeze:` (--freeze): nodes kept fixed while the rest trains.

A pattern names node ids (`stem.conv`), block instances (`stage1` covers `stage1.*`) or
shell-style patterns of either (`stage[12]`, `*.bn1`). A frozen node's parameters get no
update and no optimizer state, and its gradients are not computed: the backward walk passes
over a frozen node unless a trainable node before it needs the gradient through it, and then
takes its input gradient only (the step model keeps no op of its parameter gradients).
A frozen node with state (batchnorm) runs in inference mode, on its running statistics, which
stay as they are; its input gradient is then that of the inference-mode affine map.
"""
from __future__ import annotations

from fnmatch import fnmatchcase

from ..errors import CompileError
from ..graph import CheckedGraph


def frozen_ids(checked: CheckedGraph, patterns) -> frozenset[str]:
    """The ids of the nodes the patterns name; a pattern that names none is an error."""
    ids = [n.id for n in checked.nodes]
    frozen = set()
    for pattern in patterns:
        hits = [i for i in ids if fnmatchcase(i, pattern) or fnmatchcase(i, pattern + ".*")]
        if not hits:
            raise CompileError(f"--freeze {pattern}: no node or block instance of that name",
                               expected="node ids such as " + ", ".join(ids[:4]))
        frozen.update(hits)
    trainable = [n.id for n in checked.nodes if any(p.trainable for p in n.params.values())]
    if trainable and all(i in frozen for i in trainable):
        raise CompileError("--freeze leaves no parameter to train",
                           expected="some layer with weights left unfrozen (a new head)",
                           received=" ".join(f"--freeze {p}" for p in patterns))
    return frozenset(frozen)


def has_state(node) -> bool:
    """A node whose training forward differs by its state (batchnorm's running statistics)."""
    return any(not p.trainable for p in node.params.values())


def learning_nodes(checked: CheckedGraph, frozen: frozenset[str]) -> set[str]:
    """The nodes whose value depends on a parameter that trains: only through these does the
    backward walk need input gradients."""
    learning: set[str] = set()
    for node in checked.nodes:
        trains = node.id not in frozen and any(p.trainable for p in node.params.values())
        if trains or any(i in learning for i in node.inputs):
            learning.add(node.id)
    return learning


def frozen_vjp(g, node, dy: str) -> list[str | None]:
    """The input gradient of a frozen node: inference-mode batchnorm is y = x * a + b per
    channel with a = weight / sqrt(running_var + eps), so dx = dy * a; a node without state
    runs as in training and keeps its own rule (its parameter gradients left out)."""
    if not has_state(node):
        dxs, _ = node.layer.vjp(g, list(node.inputs), list(node.in_shapes), node.shape,
                                node.id, dy)
        return dxs
    if not hasattr(node.layer, "eps") or set(node.params) != {"weight", "bias", "running_mean",
                                                               "running_var"}:
        raise CompileError(f"--freeze {node.id}: a frozen {node.layer.op} runs in inference "
                           "mode, and a trainable node before it needs a gradient through it",
                           hint="freeze the nodes before it too, or leave this one trainable")
    var = g.op("Add", [g.param("running_var"), g.scalar(node.layer.eps)])
    a = g.op("Div", [g.param("weight"), g.op("Sqrt", [var])])
    rank = len(node.in_shapes[0])
    a = a if rank == 1 else g.op("Reshape", [a, g.ints([-1] + [1] * (rank - 1))])
    return [g.op("Mul", [dy, a])]
