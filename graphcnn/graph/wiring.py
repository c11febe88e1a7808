"""The layer graph of a flat spec: nodes, edges, arity, unknown names, cycles, and the
topological order every later walk follows.

The graph is a networkx DiGraph whose nodes are the network inputs and the layer ids; each
edge records its kind: `forward`, or the skip kind of the node it enters (`residual` into add,
`concat`, `highway`) for every input after the first.
"""
from __future__ import annotations

import networkx as nx

from ..errors import GraphError, nearest
from ..spec.expand import FlatNode, FlatSpec


def build_graph(flat: FlatSpec) -> nx.DiGraph:
    graph = nx.DiGraph()
    for name, shape in flat.inputs.items():
        graph.add_node(name, kind="input", shape=shape)
    seen: dict[str, FlatNode] = {}
    for node in flat.nodes:
        if node.id in seen or node.id in flat.inputs:
            raise GraphError(f"duplicate id '{node.id}'", loc=node.loc, node=node.id, via=node.via,
                             hint=f"first used at {seen[node.id].loc}" if node.id in seen else
                             "it is also the name of a network input")
        seen[node.id] = node
        graph.add_node(node.id, kind="layer", op=node.layer.op_name, index=node.index)
    known = list(flat.inputs) + list(seen)
    for node in flat.nodes:
        check_arity(node)
        for i, src in enumerate(node.inputs):
            if src not in graph:
                raise GraphError(f"input '{src}' names no node or network input" +
                                 (f"; {nearest(src, known)}" if nearest(src, known) else ""),
                                 loc=node.loc, node=node.id, via=node.via)
            kind = "forward" if i == 0 else node.layer.skip_kind
            graph.add_edge(src, node.id, kind=kind, index=i)
    for out in flat.outputs:
        if out not in graph:
            raise GraphError(f"output '{out}' names no node" +
                             (f"; {nearest(out, known)}" if nearest(out, known) else ""),
                             loc=flat.output_locs.get(out))
    return graph


def check_arity(node: FlatNode) -> None:
    low, high = node.layer.arity
    n = len(node.inputs)
    if n < low or (high is not None and n > high):
        want = f"{low}" if low == high else (f"at least {low}" if high is None else f"{low} to {high}")
        raise GraphError(f"{node.layer.op_name} takes {want} input(s)", loc=node.loc, node=node.id,
                         received=f"{n}: {list(node.inputs)}", via=node.via,
                         hint="name them with `inputs:` or `skip:`" if n < low else None)


def topological(graph: nx.DiGraph, flat: FlatSpec) -> list[FlatNode]:
    """Layer nodes in dependency order, ties broken by spec order (deterministic)."""
    by_id = {n.id: n for n in flat.nodes}
    key = lambda n: graph.nodes[n].get("index", -1)  # noqa: E731
    try:  # sorting detects a cycle too; only then is it worth finding one to show
        return [by_id[n] for n in nx.lexicographical_topological_sort(graph, key=key) if n in by_id]
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(graph)
    ids = [u for u, _ in cycle] + [cycle[0][0]]
    first = by_id[cycle[0][0]]
    raise GraphError("the graph has a cycle: " + " -> ".join(ids), loc=first.loc,
                     node=first.id, via=first.via)
