"""The result of checking: an immutable graph with every shape, parameter and count known."""
from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction

import networkx as nx

from ..errors import Location
from ..layers import GLOBAL, Layer, Param, Shape


@dataclass(frozen=True)
class ReceptiveField:
    """Input positions one output position sees (size) and input positions between
    neighbouring outputs (jump), per spatial axis; `None` size means the whole input."""

    size: tuple[int, ...] | None
    jump: tuple[Fraction, ...] | None

    def __str__(self) -> str:
        if self.size is None:
            return "all"
        if not self.size:
            return "-"
        size = _axes(self.size)
        return f"{size}/{_axes(self.jump)}" if self.jump else size


def _axes(values) -> str:
    values = [str(v) for v in values]
    return values[0] if len(set(values)) == 1 else "x".join(values)


@dataclass(frozen=True)
class NodeInfo:
    id: str
    layer: Layer
    inputs: tuple[str, ...]
    in_shapes: tuple[Shape, ...]
    shape: Shape
    params: dict[str, Param]
    macs: int
    rf: ReceptiveField
    loc: Location | None
    via: tuple[Location, ...]
    scope: tuple[str, ...]
    index: int

    @property
    def op(self) -> str:
        return self.layer.op_name

    @property
    def param_count(self) -> int:
        """Trainable parameters (running statistics are state, as PyTorch counts)."""
        return sum(p.size for p in self.params.values() if p.trainable)


@dataclass(frozen=True)
class CheckedGraph:
    """Nodes in topological order; nothing downstream re-validates."""

    name: str
    inputs: dict[str, Shape]
    nodes: tuple[NodeInfo, ...]
    outputs: tuple[str, ...]
    graph: nx.DiGraph
    warnings: tuple[str, ...]
    spec: object = None
    unused: tuple[str, ...] = ()  # layers whose result reaches no output

    def reaching_outputs(self) -> "CheckedGraph":
        """The graph without the unused layers: what a compiled model holds."""
        if not self.unused:
            return self
        gone = set(self.unused)
        nodes = tuple(n for n in self.nodes if n.id not in gone)
        return replace(self, nodes=nodes, unused=())

    @property
    def total_params(self) -> int:
        return sum(n.param_count for n in self.nodes)

    @property
    def total_macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    def node(self, node_id: str) -> NodeInfo:
        return self.nodes[self._index[node_id]]

    @property
    def _index(self) -> dict[str, int]:
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {n.id: i for i, n in enumerate(self.nodes)}
            object.__setattr__(self, "_index_cache", cached)
        return cached

    def shape_of(self, name: str) -> Shape:
        return self.inputs[name] if name in self.inputs else self.node(name).shape

    def summary(self, depth: int | None = None, batch: int | None = None, by_op: bool = False):
        """The summary as an object: str() is the table, to_dict() the JSON (graphcnn summary
        --json), Jupyter shows an HTML table; `batch` adds memory, `by_op` totals per op."""
        from ..notebook import summary

        return summary(self, depth, batch, by_op)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """Jupyter's view: the drawing (SVG), or the summary table where Graphviz is missing."""
        from ..notebook import mimebundle

        return mimebundle(self)


def receptive_field(window, inputs: list[ReceptiveField]) -> ReceptiveField:
    """r_out = max_i(r_i + (extent - 1) * j_i), j_out = max_i(j_i) * stride, per axis."""
    if window == GLOBAL or any(rf.size is None for rf in inputs):
        return ReceptiveField(None, None)
    rank = len(window.extent)
    usable = [rf for rf in inputs if len(rf.size) == rank]
    if not usable:
        return ReceptiveField((), ())
    size = tuple(_exact(max(rf.size[a] + (window.extent[a] - 1) * rf.jump[a] for rf in usable))
                 for a in range(rank))
    jump = tuple(_exact(max(rf.jump[a] for rf in usable) * _exact(window.stride[a]))
                 for a in range(rank))
    return ReceptiveField(size, jump)


def _exact(value):
    """Whole numbers as int: Fraction arithmetic is ~20x slower and a 10,000-layer chain does
    it on every node (an int compares and prints like the equal Fraction)."""
    return value if type(value) is int or value.denominator != 1 else value.numerator
