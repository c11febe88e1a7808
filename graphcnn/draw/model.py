"""The drawing model both writers share: boxes, clusters and edges of a CheckedGraph, with
block instances below `depth` levels folded into one box each (the same depth rule as
`graphcnn summary --depth`: top-level nodes are level 1)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import GraphCnnError
from .blocks import scope_labels

# CheckedGraph and NodeInfo (graphcnn.graph) name types in annotations only and are not
# imported, not even under TYPE_CHECKING (import_cycles.py counts every import statement):
# graph/checked.py imports graphcnn.notebook, which imports this module.


@dataclass
class Box:
    id: str
    title: str  # the node id, or the folded instance id
    op: str  # the op, "input", or the block name of a folded instance
    detail: str  # key parameters, or the folded instance's parameter count
    shape: tuple
    cluster: str | None  # innermost drawn cluster holding the box
    kind: str = "layer"  # layer | input | block
    output: bool = False
    params: int = 0
    level: int | None = None  # scale level in an encoder-decoder (see scale_levels)
    highlight: str | None = None  # a fill that overrides the op family's (graphcnn diff)


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    kind: str
    shape: tuple


@dataclass(frozen=True)
class Cluster:
    id: str
    label: str
    parent: str | None


@dataclass
class Drawing:
    name: str
    boxes: dict[str, Box] = field(default_factory=dict)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    u_shaped: bool = False  # boxes carry scale levels: draw each level on one rank

    @property
    def kinds(self) -> list[str]:
        """Edge kinds in use, forward first, for the legend."""
        seen = sorted({e.kind for e in self.edges}, key=lambda k: (k != "forward", k))
        return seen


def build(checked: CheckedGraph, depth: int | None = None) -> Drawing:
    if depth is not None and depth < 1:
        raise GraphCnnError("--depth must be at least 1", received=str(depth))
    labels = scope_labels(checked)
    drawing = Drawing(checked.name)
    for name, shape in checked.inputs.items():
        drawing.boxes[name] = Box(name, name, "input", "", shape, None, kind="input")
    owner: dict[str, str] = {name: name for name in checked.inputs}
    for node in checked.nodes:
        owner[node.id] = _place(drawing, node, depth, labels)
    for out in checked.outputs:
        drawing.boxes[owner[out]].output = True
    levels = scale_levels(checked)
    if levels is not None:
        for name, level in levels.items():  # topological order: a folded box keeps its output's
            drawing.boxes[owner[name]].level = level
        drawing.u_shaped = _clusters_level(drawing)
    drawing.edges = _edges(checked, owner)
    return drawing


def scale_levels(checked: CheckedGraph) -> dict[str, int] | None:
    """How many halvings of the spatial size each node sits below the input, following first
    inputs; None unless some node upsamples (an encoder-decoder, drawn as a U: same scale, same
    height, as in the U-Net figure)."""
    level = {name: 0 for name in checked.inputs}
    upsamples = False
    for node in checked.nodes:
        # from the input nearest in scale: a crop `like` a decoder map sits at the decoder's level
        steps = [(_scale_step(shape, node.shape), src)
                 for shape, src in zip(node.in_shapes, node.inputs)]
        step, src = min(steps, key=lambda s: abs(s[0]))  # ties: the first input
        upsamples |= step < 0
        level[node.id] = level[src] + step
    return level if upsamples else None


def _clusters_level(drawing: Drawing) -> bool:
    """Whether every cluster lies on one scale level: a block that pools at its end (SegNet)
    would be torn across two rows, which reads worse than the plain layout."""
    seen: dict[str, int] = {}
    for box in drawing.boxes.values():
        cluster = box.cluster
        while cluster is not None:
            if seen.setdefault(cluster, box.level) != box.level:
                return False
            cluster = drawing.clusters[cluster].parent
    return True


def _scale_step(before: tuple, after: tuple) -> int:
    if len(before) < 2 or len(after) != len(before):
        return 0  # no spatial axes, or leaving them (flatten, global pool)
    return round(math.log2(before[1] / after[1]))


def _place(drawing: Drawing, node: NodeInfo, depth: int | None, labels: dict) -> str:
    """Add the node (or grow its folded instance's box); returns the id of its box."""
    folded = depth is not None and len(node.scope) >= depth
    visible = node.scope[:depth - 1] if folded else node.scope
    for i, scope in enumerate(visible):
        parent = visible[i - 1] if i else None
        drawing.clusters.setdefault(scope, Cluster(scope, _cluster_label(scope, labels), parent))
    cluster = visible[-1] if visible else None
    if not folded:
        drawing.boxes[node.id] = Box(node.id, _local(node.id, cluster), node.op, node.layer.describe(), node.shape,
                                     cluster, params=node.param_count)
        return node.id
    scope = node.scope[depth - 1]
    box = drawing.boxes.setdefault(
        scope, Box(scope, _local(scope, cluster), labels.get(scope, "block"), "", node.shape, cluster, kind="block"))
    box.params += node.param_count
    box.shape = node.shape  # nodes come in topological order: the last one is the instance output
    box.detail = f"{box.params:,} params"
    return scope


def _local(name: str, cluster: str | None) -> str:
    """Inside a cluster the id without the cluster's prefix (its label says it)."""
    return name[len(cluster) + 1:] if cluster and name.startswith(cluster + ".") else name


def _cluster_label(scope: str, labels: dict) -> str:
    name = labels.get(scope)
    return f"{scope}: {name}" if name and name != scope else scope


def _edges(checked: CheckedGraph, owner: dict[str, str]) -> list[Edge]:
    """Graph edges between boxes; edges inside a folded box vanish, and parallel edges between
    two boxes merge into one (a forward one when there is one: the skip then lies inside)."""
    found: dict[tuple[str, str], Edge] = {}
    for src, dst, data in checked.graph.edges(data=True):
        a, b = owner[src], owner[dst]
        if a == b:
            continue
        kind = data.get("kind", "forward")
        old = found.get((a, b))
        if old is None or (kind == "forward" and old.kind != "forward"):
            found[(a, b)] = Edge(a, b, kind, checked.shape_of(src))
    order = {box: i for i, box in enumerate(dict.fromkeys(owner.values()))}
    return sorted(found.values(), key=lambda e: (order[e.dst], order[e.src]))
