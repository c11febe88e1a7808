"""Two networks compared: specs, graphcnn models (through the spec each one carries) or weight
files.

Nodes are matched by spec id. A node is `added` or `removed` when only one side has its id,
`changed` when its op, its fields or its inputs differ, `affected` when only what follows from
upstream differs (output shape, parameter shapes, MACs), and `same` otherwise. Groups fold the
nodes by id prefix at a depth, as `graphcnn summary --depth K` folds block instances. Weights
are compared by name: the largest |a - b| per tensor, also relative to the larger of the two
tensors' largest magnitudes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import GraphCnnError
from ..graph import CheckedGraph, NodeInfo

SPEC_SUFFIXES = (".yaml", ".yml")
WEIGHT_SUFFIXES = (".npz", ".safetensors", ".pth", ".pt", ".bin")
STATUSES = ("added", "removed", "changed", "affected", "same")
COLOURS = {"changed": "#ffb45e", "added": "#8fd694", "removed": "#f4a3a3", "affected": "#ffe3bd"}
LEGEND = "green: added, orange: changed, light orange: affected, red: removed (drawn from A)"


@dataclass
class Side:
    """One thing compared: its structure (None for a weight file, or a model without a spec)
    and its weights by name, read when asked (None for a spec: it has no trained weights)."""

    source: str
    kind: str  # spec | model | weights
    checked: CheckedGraph | None
    weights: Callable[[], dict[str, np.ndarray]] | None = None


def open_side(path: str) -> Side:
    """A spec, a model or a weight file, told apart by the suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in SPEC_SUFFIXES:
        from ..api import check_spec
        return Side(path, "spec", check_spec(path))
    if suffix == ".onnx":
        return _model_side(path)
    if suffix in WEIGHT_SUFFIXES:
        return Side(path, "weights", None, lambda: weight_file(path))
    raise GraphCnnError(f"cannot tell what {path} is",
                        expected="a spec (.yaml), a model (.onnx) or a weight file ("
                                 + ", ".join(WEIGHT_SUFFIXES) + ")",
                        received=f"'{suffix}'" if suffix else "no suffix")


def _model_side(path: str) -> Side:
    """A model's structure is the spec graphcnn stored in it (no ONNX graph matching needed)."""
    from ..deploy.weights import model_weights
    from ..graph import check
    from ..runtime import existing_file, load_model
    from ..spec import NetworkSpec

    model = load_model(existing_file(path))
    text = {p.key: p.value for p in model.metadata_props}.get("graphcnn_spec")
    checked = None if text is None else check(NetworkSpec.from_text(text, f"<{path}'s spec>"))
    return Side(path, "model", checked, lambda: model_weights(model))


def weight_file(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint, whatever its dtype (integer counters included)."""
    from ..checkpoints import read_checkpoint

    return {name: entry.read() for name, entry in read_checkpoint(path).entries.items()}


# --- structure ------------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeDiff:
    id: str
    status: str
    group: str
    op: tuple[str | None, str | None]
    fields: dict[str, tuple]  # name -> (a, b), only those that differ (op and inputs included)
    shape: tuple[tuple | None, tuple | None]
    params: tuple[int, int]
    macs: tuple[int, int]


@dataclass
class GroupDiff:
    id: str
    nodes: list[int] = field(default_factory=lambda: [0, 0])
    params: list[int] = field(default_factory=lambda: [0, 0])
    macs: list[int] = field(default_factory=lambda: [0, 0])
    shape: list = field(default_factory=lambda: [None, None])  # the last node's, per side
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))


@dataclass(frozen=True)
class StructureDiff:
    names: tuple[str, str]
    depth: int | None
    nodes: tuple[NodeDiff, ...]  # A's and B's nodes merged, in B's order
    groups: tuple[GroupDiff, ...]
    inputs: dict[str, tuple]  # graph inputs whose shape differs (None: absent on that side)
    outputs: tuple | None  # (A's, B's) output ids when they differ
    params: tuple[int, int]
    macs: tuple[int, int]

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(n.status == s for n in self.nodes) for s in STATUSES}

    @property
    def differs(self) -> bool:
        return bool(self.inputs or self.outputs or any(n.status != "same" for n in self.nodes))


def diff_structure(a: CheckedGraph, b: CheckedGraph, depth: int | None = 1) -> StructureDiff:
    """Node by node (matched by id) and folded into groups at `depth` (None: one per node)."""
    if depth is not None and depth < 1:
        raise GraphCnnError("--depth must be at least 1 (0: one row per node)", received=str(depth))
    a_nodes, b_nodes = {n.id: n for n in a.nodes}, {n.id: n for n in b.nodes}
    nodes = tuple(node_diff(a_nodes.get(i), b_nodes.get(i), depth) for i in merged_order(a, b))
    groups = _groups(nodes, a_nodes, b_nodes, depth)
    inputs = {k: (a.inputs.get(k), b.inputs.get(k)) for k in dict.fromkeys([*a.inputs, *b.inputs])
              if a.inputs.get(k) != b.inputs.get(k)}
    outputs = (a.outputs, b.outputs) if a.outputs != b.outputs else None
    return StructureDiff((a.name, b.name), depth, nodes, groups, inputs, outputs,
                         (a.total_params, b.total_params), (a.total_macs, b.total_macs))


def merged_order(a: CheckedGraph, b: CheckedGraph) -> list[str]:
    """B's ids, each removed id of A placed right after the shared id that precedes it in A."""
    in_b = {n.id for n in b.nodes}
    after: dict[str | None, list[str]] = {}
    prev = None
    for node in a.nodes:
        if node.id in in_b:
            prev = node.id
        else:
            after.setdefault(prev, []).append(node.id)
    order = list(after.get(None, []))
    for node in b.nodes:
        order += [node.id, *after.get(node.id, [])]
    return order


def node_diff(a: NodeInfo | None, b: NodeInfo | None, depth: int | None) -> NodeDiff:
    fields = changed_fields(a, b) if a and b else {}
    status = ("added" if a is None else "removed" if b is None else "changed" if fields
              else "affected" if _sizes(a) != _sizes(b) else "same")
    return NodeDiff((a or b).id, status, group_of(b or a, depth),
                    (a and a.op, b and b.op), fields, (a and a.shape, b and b.shape),
                    (a.param_count if a else 0, b.param_count if b else 0),
                    (a.macs if a else 0, b.macs if b else 0))


def changed_fields(a: NodeInfo, b: NodeInfo) -> dict[str, tuple]:
    """What the spec says differently: op, the layer's fields, the resolved inputs."""
    fa, fb = _fields(a), _fields(b)
    found = {"op": (a.op, b.op)} if a.op != b.op else {}
    found.update({k: (fa.get(k), fb.get(k)) for k in dict.fromkeys([*fa, *fb])
                  if fa.get(k) != fb.get(k)})
    if a.inputs != b.inputs:
        found["inputs"] = (list(a.inputs), list(b.inputs))
    return found


def _fields(node: NodeInfo) -> dict:
    # id and inputs: the node's own are compared instead (the layer holds the local id, and
    # inputs as written, None when implied)
    return node.layer.model_dump(mode="json", exclude={"id", "inputs", "op"})


def _sizes(node: NodeInfo) -> tuple:
    """What upstream decides: the output shape, the parameter shapes, the MACs."""
    return node.shape, {k: p.shape for k, p in node.params.items()}, node.macs


def group_of(node: NodeInfo, depth: int | None) -> str:
    """The row a node folds into: its block instance `depth` levels down (summary's rule)."""
    if depth is None or len(node.scope) < depth:
        return node.id
    return node.scope[depth - 1]


def _groups(nodes, a_nodes, b_nodes, depth) -> tuple[GroupDiff, ...]:
    """Each side's nodes summed into its own group (a top-level op in A may be a block in B)."""
    groups: dict[str, GroupDiff] = {}
    for node in nodes:
        for side, info in enumerate((a_nodes.get(node.id), b_nodes.get(node.id))):
            if info is None:
                continue
            group = groups.setdefault(group_of(info, depth), GroupDiff(group_of(info, depth)))
            group.nodes[side] += 1
            group.params[side] += info.param_count
            group.macs[side] += info.macs
            group.shape[side] = info.shape
        groups[node.group].counts[node.status] += 1
    return tuple(groups.values())


# --- weights --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorDiff:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float  # max_abs over the larger of the two tensors' largest |value|


@dataclass(frozen=True)
class WeightsDiff:
    tensors: tuple[TensorDiff, ...]  # the names both sides hold with the same shape
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]
    shapes: tuple[tuple[str, tuple, tuple], ...]  # (name, A's shape, B's shape)

    @property
    def differing(self) -> list[TensorDiff]:
        return [t for t in self.tensors if t.max_abs > 0]

    @property
    def differs(self) -> bool:
        return bool(self.differing or self.only_a or self.only_b or self.shapes)


def diff_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> WeightsDiff:
    both = [k for k in a if k in b]
    shapes = tuple((k, a[k].shape, b[k].shape) for k in both if a[k].shape != b[k].shape)
    tensors = tuple(tensor_diff(k, a[k], b[k]) for k in both if a[k].shape == b[k].shape)
    return WeightsDiff(tensors, tuple(k for k in a if k not in b),
                       tuple(k for k in b if k not in a), shapes)


def tensor_diff(name: str, a: np.ndarray, b: np.ndarray) -> TensorDiff:
    # float64 (complex128 for complex ones: their imaginary parts count): fp16/bf16/int
    # tensors compare exactly; a NaN on one side only is an infinite difference, a NaN on both
    # sides none, and so is the same infinity on both sides
    wide = np.complex128 if np.iscomplexobj(a) or np.iscomplexobj(b) else np.float64
    a, b = np.asarray(a, wide), np.asarray(b, wide)
    if a.size == 0:
        return TensorDiff(name, a.shape, 0.0, 0.0)
    with np.errstate(invalid="ignore"):  # inf - inf
        gap = np.abs(a - b)
    gap[(a == b) | (np.isnan(a) & np.isnan(b))] = 0.0
    worst = float(np.nan_to_num(gap, nan=np.inf, posinf=np.inf).max())
    scale = float(max(np.nanmax(np.abs(a), initial=0.0), np.nanmax(np.abs(b), initial=0.0)))
    relative = (np.inf if np.isinf(worst) else worst / scale if scale
                else 0.0 if worst == 0 else np.inf)
    return TensorDiff(name, a.shape, worst, relative)


# --- both -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Diff:
    a: Side
    b: Side
    structure: StructureDiff | None
    weights: WeightsDiff | None
    notes: tuple[str, ...] = ()

    @property
    def differs(self) -> bool:
        return any(part is not None and part.differs for part in (self.structure, self.weights))


def diff(a_path: str, b_path: str, *, depth: int | None = 1, weights: bool = False,
         weight_files: tuple[str, str] | None = None) -> Diff:
    """Compare two specs, models or weight files (weight files compare their weights only).
    `weights`: compare the models' weights too; `weight_files`: the weights of A and B."""
    a, b = open_side(a_path), open_side(b_path)
    if weight_files:
        a.weights, b.weights = (lambda f=f: weight_file(f) for f in weight_files)
    weighed = weights or bool(weight_files) or "weights" in (a.kind, b.kind)
    structure, notes = None, []
    if a.checked is not None and b.checked is not None:
        structure = diff_structure(a.checked, b.checked, depth)
    elif not weighed:
        raise GraphCnnError(f"{_without_spec(a, b)} carries no graphcnn spec: only weights "
                            "compare", hint="--weights compares the parameters by name")
    else:
        notes.append(f"structure not compared: {_without_spec(a, b)} holds no spec")
    return Diff(a, b, structure, _weights(a, b) if weighed else None, tuple(notes))


def _without_spec(a: Side, b: Side) -> str:
    return a.source if a.checked is None else b.source


def _weights(a: Side, b: Side) -> WeightsDiff:
    for side in (a, b):
        if side.weights is None:
            raise GraphCnnError(f"{side.source} is a spec: it holds no weights to compare",
                                hint="give --weights A.npz B.npz beside two specs, or compare "
                                     "compiled models")
    return diff_weights(a.weights(), b.weights())


def highlighted_drawing(structure: StructureDiff, a: CheckedGraph, b: CheckedGraph,
                        depth: int | None = None):
    """B's drawing with each box filled by its status (a folded box by its most telling node's),
    and what only A has drawn from A's drawing, in red."""
    from ..draw import build

    drawing = build(b, depth)
    _add_removed(drawing, build(a, depth))
    rank = list(COLOURS.values())
    for node in structure.nodes:
        box = drawing.boxes[_box_of(drawing, node.id)]
        colour = COLOURS.get(node.status)
        if colour and (box.highlight is None or rank.index(colour) < rank.index(box.highlight)):
            box.highlight = colour
    drawing.name = f"{a.name} -> {b.name} ({LEGEND})"
    return drawing


def _add_removed(drawing, before) -> None:
    """A's boxes that B does not draw, the clusters around them, and their edges."""
    gone = [box for key, box in before.boxes.items() if key not in drawing.boxes]
    for box in gone:
        box.highlight = COLOURS["removed"]
        drawing.boxes[box.id] = box
        cluster = box.cluster
        while cluster is not None and cluster not in drawing.clusters:
            drawing.clusters[cluster] = before.clusters[cluster]
            cluster = before.clusters[cluster].parent
    ids = {box.id for box in gone}
    drawing.edges += [e for e in before.edges if e.src in ids or e.dst in ids]


def _box_of(drawing, node_id: str) -> str:
    """The box a node is drawn in: its own, or the folded instance whose id prefixes it."""
    parts = node_id.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in drawing.boxes:
            return ".".join(parts[:n])
    raise KeyError(node_id)  # build() draws every node: a bug of ours if reached


def as_json(d: Diff) -> dict:
    """The machine-readable diff (`graphcnn diff --json`); pairs are [A, B]."""
    s, w = d.structure, d.weights
    return {"a": _side_json(d.a), "b": _side_json(d.b), "differs": d.differs,
            "notes": list(d.notes),
            "structure": None if s is None else _structure_json(s),
            "weights": None if w is None else _weights_json(w)}


def _side_json(side: Side) -> dict:
    c = side.checked
    return {"source": side.source, "kind": side.kind, "name": c and c.name,
            "total_params": c and c.total_params, "total_macs": c and c.total_macs}


def _structure_json(s: StructureDiff) -> dict:
    return {"depth": s.depth, "counts": s.counts,
            "params": list(s.params), "macs": list(s.macs),
            "params_delta": s.params[1] - s.params[0], "macs_delta": s.macs[1] - s.macs[0],
            "inputs": {k: [_shape(x) for x in v] for k, v in s.inputs.items()},
            "outputs": s.outputs and [list(o) for o in s.outputs],
            "groups": [{"id": g.id, "nodes": g.nodes, "params": g.params, "macs": g.macs,
                        "params_delta": g.params[1] - g.params[0],
                        "macs_delta": g.macs[1] - g.macs[0],
                        "output_shape": [_shape(x) for x in g.shape], "counts": g.counts}
                       for g in s.groups],
            "nodes": [{"id": n.id, "status": n.status, "group": n.group, "op": list(n.op),
                       "fields": {k: list(v) for k, v in n.fields.items()},
                       "output_shape": [_shape(x) for x in n.shape],
                       "params": list(n.params), "macs": list(n.macs)}
                      for n in s.nodes if n.status != "same"]}


def _weights_json(w: WeightsDiff) -> dict:
    return {"compared": len(w.tensors), "differing": len(w.differing),
            "tensors": [{"name": t.name, "shape": list(t.shape), "max_abs": _number(t.max_abs),
                         "max_rel": _number(t.max_rel)} for t in w.tensors],
            "only_a": list(w.only_a), "only_b": list(w.only_b),
            "shape_mismatch": [{"name": k, "shape": [list(x), list(y)]} for k, x, y in w.shapes]}


def _shape(shape) -> list | None:
    return None if shape is None else ["N", *shape]


def _number(x: float):
    return x if np.isfinite(x) else "inf"  # strict JSON has no Infinity
