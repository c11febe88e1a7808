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
from .names import check_names
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
    check_names(flat.inputs, infos, lambda name: spec.location(("inputs", name)))
    unused = unreachable(graph, flat)
    warnings = notes + unused_warning(unused)
    return CheckedGraph(flat.name, dict(flat.inputs), tuple(infos), tuple(flat.outputs), graph,
                        tuple(warnings), spec, tuple(n.id for n in unused))


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


def unreachable(graph: nx.DiGraph, flat: FlatSpec) -> list[FlatNode]:
    """The layers whose result reaches no output (say, `outputs:` names an inner node)."""
    needed = set(flat.outputs)
    for out in flat.outputs:
        needed |= nx.ancestors(graph, out)
    return [n for n in flat.nodes if n.id not in needed]


def unused_warning(unused: list[FlatNode], shown: int = 3) -> list[str]:
    """One line for all of them (a backbone cut at an inner node leaves a hundred), located
    at the first: compiled models leave them out."""
    if not unused:
        return []
    ids = ", ".join(n.id for n in unused[:shown]) + (f" and {len(unused) - shown} more"
                                                      if len(unused) > shown else "")
    what = "node reaches" if len(unused) == 1 else f"{len(unused)} nodes reach"
    head = f"{unused[0].loc}: " if unused[0].loc else ""
    return [f"{head}warning: {what} no output ({ids}); compiled models leave "
            f"{'it' if len(unused) == 1 else 'them'} out"]
