"""`compile --portable`: the flagged nodes lower to forms every ONNX host computes alike.

A node that a rewritable lint rule flags lowers through its layer's `lower_portable` instead
of `lower` (layers/base.py): same shapes, parameters and value names, so the checked graph,
the weights and every name stay as they were; only the ONNX nodes inside that node change.
"""
from __future__ import annotations

from ..graph import CheckedGraph
from .findings import lint


def portable(checked: CheckedGraph) -> tuple[list[str], list[str]]:
    """(ids of the nodes to lower portably, a note per node saying which rules it answers)."""
    chosen: dict[str, list[str]] = {}
    for finding in lint(checked):
        if finding.rule.rewritable:
            chosen.setdefault(finding.node, []).append(finding.rule.id)
    notes = [f"portable: {node} rewritten for {', '.join(ids)}" for node, ids in chosen.items()]
    return list(chosen), notes
