"""Spec -> CheckedGraph: wiring, cycles, arity, shapes in topological order, counts.

The layer graph is a networkx DiGraph whose nodes are the network inputs and the layer ids;
each edge records its kind: `forward`, or the skip kind of the node it enters (`residual`
into add, `concat`, `highway`) for every input after the first.
"""
from __future__ import annotations

import contextlib
from fractions import Fraction

import networkx as nx

from ..errors import GraphCnnError, GraphError, ShapeError, SpecError, nearest
from ..gcpause import gc_paused
from ..layers import Shape
from ..spec import NetworkSpec
from ..spec.expand import FlatNode, FlatSpec, flatten
from .checked import CheckedGraph, NodeInfo, ReceptiveField, receptive_field
from .limits import Limits, check_sizes


@gc_paused()
def check(spec: NetworkSpec, limits: Limits | None = None) -> CheckedGraph:
    """Validate a spec completely; raise the first GraphCnnError found."""
    flat = flatten(spec)
    graph = build_graph(flat)
    order = topological(graph, flat)
    with located_at(spec.location(("inputs",))):  # input-size errors point at `inputs:`
        flat, notes = bind_symbols(flat, order, spec)
        try:
            infos = propagate(flat, order)
        except ShapeError as exc:  # an input size that does not fit: name the nearest that do
            from ..shapes.static import explain_size
            raise explain_size(flat, order, exc, spec) from None
    check_sizes(infos, limits or Limits())
    warnings = notes + unreachable(graph, flat)
    return CheckedGraph(flat.name, dict(flat.inputs), tuple(infos), tuple(flat.outputs), graph,
                        tuple(warnings), spec)


@contextlib.contextmanager
def located_at(loc):
    """Give a located place to errors raised without one (found by fuzzing: a symbolic
    channel size was refused with no location)."""
    try:
        yield
    except GraphCnnError as exc:
        if exc.loc is None and exc.node is None:
            raise exc.at(loc) from None
        raise


def bind_symbols(flat: FlatSpec, order: list[FlatNode], spec) -> tuple[FlatSpec, list[str]]:
    """Symbolic input sizes (`[3, H, W]`) are checked at the smallest size that fits."""
    if not any(isinstance(d, str) for shape in flat.inputs.values() for d in shape):
        return flat, []
    from ..shapes.static import bind_smallest
    return bind_smallest(flat, order, spec)


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


def propagate(flat: FlatSpec, order: list[FlatNode]) -> list[NodeInfo]:
    """Shapes, parameters, MACs and receptive fields, node by node."""
    shapes: dict[str, Shape] = {}
    fields: dict[str, ReceptiveField] = {}
    for name, shape in flat.inputs.items():
        if not all(isinstance(d, int) for d in shape):
            raise SpecError(f"input '{name}' has symbolic sizes {list(shape)}; this command "
                            "needs concrete sizes")
        shapes[name] = tuple(shape)
        rank = len(shape) - 1
        fields[name] = ReceptiveField((1,) * rank, (Fraction(1),) * rank)
    infos = []
    done: dict[str, NodeInfo] = {}
    for node in order:
        infos.append(node_info(node, shapes, fields, done))
        shapes[node.id], fields[node.id] = infos[-1].shape, infos[-1].rf
        done[node.id] = infos[-1]
    return infos


def node_info(node: FlatNode, shapes: dict, fields: dict, done: dict | None = None) -> NodeInfo:
    layer = node.layer
    in_shapes = [shapes[i] for i in node.inputs]
    # a layer whose shape depends on more than its input shapes (maxunpool reads its pool's
    # geometry) defines infer_with(shapes, sources): the NodeInfo of each input, None for inputs
    infer_with = getattr(layer, "infer_with", None)
    try:
        if infer_with is not None:
            out = tuple(infer_with(in_shapes, [(done or {}).get(i) for i in node.inputs]))
        else:
            out = tuple(layer.infer(in_shapes))
        params = layer.params(in_shapes)
        macs = layer.macs(in_shapes, out)
        rf = receptive_field(layer.window(in_shapes), [fields[i] for i in node.inputs])
    except GraphCnnError as exc:
        raise exc.at(node.loc, node.id, node.via) from None
    return NodeInfo(node.id, layer, node.inputs, tuple(in_shapes), out, params, macs, rf,
                    node.loc, node.via, node.scope, node.index)


def unreachable(graph: nx.DiGraph, flat: FlatSpec) -> list[str]:
    """Warnings for layers whose result reaches no output."""
    needed = set(flat.outputs)
    for out in flat.outputs:
        needed |= nx.ancestors(graph, out)
    return [f"{n.loc}: {n.id}: warning: reaches no output" if n.loc else f"{n.id}: warning: reaches no output"
            for n in flat.nodes if n.id not in needed]
