"""Spec -> CheckedGraph: the layer graph (wiring.py), shapes in topological order
(propagate.py), what input sizes fit (input_sizes.py), size limits and warnings."""
from __future__ import annotations

import contextlib

import networkx as nx

from ..errors import GraphCnnError, ShapeError
from ..gcpause import gc_paused
from ..spec import NetworkSpec
from ..spec.expand import FlatNode, FlatSpec, flatten
from .checked import CheckedGraph
from .input_sizes import bind_smallest, explain_size
from .limits import Limits, check_sizes
from .propagate import propagate
from .sweep import is_symbolic
from .wiring import build_graph, topological


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
            raise explain_size(flat, order, exc, spec) from None
    check_sizes(infos, limits or Limits())
    warnings = notes + unreachable(graph, flat)
    return CheckedGraph(flat.name, dict(flat.inputs), tuple(infos), tuple(flat.outputs), graph,
                        tuple(warnings), spec)


@contextlib.contextmanager
def located_at(loc):
    """Give a located place to errors raised without one (a symbolic channel size, say, is
    refused before any node is involved: the error points at `inputs:`)."""
    try:
        yield
    except GraphCnnError as exc:
        if exc.loc is None and exc.node is None:
            raise exc.at(loc) from None
        raise


def bind_symbols(flat: FlatSpec, order: list[FlatNode], spec) -> tuple[FlatSpec, list[str]]:
    """Symbolic input sizes (`[3, H, W]`) are checked at the smallest size that fits."""
    if not is_symbolic(flat.inputs):
        return flat, []
    return bind_smallest(flat, order, spec)


def unreachable(graph: nx.DiGraph, flat: FlatSpec) -> list[str]:
    """Warnings for layers whose result reaches no output."""
    needed = set(flat.outputs)
    for out in flat.outputs:
        needed |= nx.ancestors(graph, out)
    return [f"{n.loc}: {n.id}: warning: reaches no output" if n.loc else f"{n.id}: warning: reaches no output"
            for n in flat.nodes if n.id not in needed]
