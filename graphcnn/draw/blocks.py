"""Block names for the block instances of a checked graph.

Expansion keeps only instance ids in NodeInfo.scope (`stage2`, `stage2.block0`); the name of
the block each one instantiates is found by following the scope chain through the spec's
block calls: a scope's last id component names a call in its parent's node list.
"""
from __future__ import annotations

import re

from ..spec.expand import load_imports

# CheckedGraph (graphcnn.graph) names a type in annotations only and is not imported, not
# even under TYPE_CHECKING (import_cycles.py counts every import statement):
# graph/checked.py imports graphcnn.notebook, which imports this module.


def scope_labels(checked: CheckedGraph) -> dict[str, str]:
    """{scope: block name}, and `name ×N` for the scope of a repeated call."""
    spec = checked.spec
    if spec is None or not hasattr(spec, "blocks"):
        return {}
    defs = {name: block for name, (block, _src) in load_imports(spec).items()}
    defs.update(spec.blocks)
    labels: dict[str, str] = {}
    counts: dict[str, set] = {}
    for chain in dict.fromkeys(node.scope for node in checked.nodes):
        _label_chain(chain, list(spec.nodes), defs, labels, counts)
    for group, instances in counts.items():
        labels[group] = f"{labels[group]} ×{len(instances)}"
    return labels


def _label_chain(chain: tuple, items: list, defs: dict, labels: dict, counts: dict) -> None:
    prefix, group = "", False
    for i, scope in enumerate(chain):
        if group:  # an instance of the repeated call just above
            name = labels[chain[i - 1]].split(" ×")[0]
            counts.setdefault(chain[i - 1], set()).add(scope)
            group = False
        else:
            call = _find_call(items, scope[len(prefix):])
            if call is None:
                return
            name = _get(call, "block")
            nxt = chain[i + 1] if i + 1 < len(chain) else ""
            group = _repeated(_get(call, "repeat") or 1, scope, nxt)
        labels.setdefault(scope, name)
        items = list(defs[name].nodes) if name in defs else []
        prefix = scope + "."


def _find_call(items: list, local_id: str):
    for item in items:
        if _get(item, "block") is not None and _get(item, "id") == local_id:
            return item
    return None


def _repeated(repeat, scope: str, nxt: str) -> bool:
    """A call repeated more than once opens a group scope holding its `.blockK` instances."""
    if isinstance(repeat, int):
        return repeat > 1
    return re.fullmatch(re.escape(scope) + r"\.block\d+", nxt) is not None


def _get(item, key: str):
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)
