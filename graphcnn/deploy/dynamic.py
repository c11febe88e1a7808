"""Dynamic spatial axes in the exported model (`graphcnn compile --dynamic H,W`).

The test is generic: the graph is lowered (nodes and constants only, no weights) at the checked
size and at the ALTERNATIVES admissible sizes of each named axis nearest to it (enough to see
size parities and residues change); when every node lowers to the same ONNX (op types,
attributes, constants, parameter shapes) the model is taken as independent of that axis, and
the input, output and node value_info carry a dim_param there (the size formula fitted exactly
to SAMPLES admissible sizes, e.g. 'H-184', or no name when none fits). Otherwise the first
node whose lowering changes pins the size, and the error says what changed. A dependence that
shows only at sizes further away than the nearest ALTERNATIVES would go unseen.
"""
from __future__ import annotations

from ..errors import CompileError, GraphCnnError
from ..graph.sweep import Axis, Sweep, axis_names
from ..graph.wiring import build_graph, topological
from ..lower.emitter import Emitter
from ..lower.save import without_initializers
from ..lower.walk import lower_nodes
from ..shapes.expr import fit
from ..spec.expand import flatten

ALTERNATIVES, SAMPLES, SEARCH = 12, 48, 512  # sizes lowered / sizes fitted / search span


def resolve(checked, names: list[str]) -> list:
    """(input, shape index, name) for each named axis."""
    spec_inputs = checked.spec.inputs if checked.spec is not None else checked.inputs
    found = [(k, i + 1, a) for k, s in spec_inputs.items() for i, a in enumerate(axis_names(s))]
    for name in names:
        if name not in {a for _, _, a in found}:
            raise CompileError(f"--dynamic names an unknown spatial axis '{name}'",
                               expected=", ".join(dict.fromkeys(a for _, _, a in found)),
                               received=",".join(names))
    return [f for f in found if f[2] in names]


def _sweep(checked, inp: str, index: int, name: str) -> Sweep:
    """A sweep of that one axis from the checked (concrete) sizes."""
    flat = flatten(checked.spec)
    flat.inputs = dict(checked.inputs)
    sweep = Sweep(flat, topological(build_graph(flat), flat))
    sweep.axes, sweep.base = [Axis(inp, index, name)], checked.inputs[inp][index]
    return sweep


def samples(sweep: Sweep, count: int) -> list[tuple[int, list]]:
    """Up to `count` admissible sizes of the axis other than the checked one, nearest first."""
    found = []
    for d in range(1, SEARCH + 1):
        for n in (sweep.base + d, sweep.base - d):
            infos = sweep.admits(n)
            if infos is not None:
                found.append((n, infos))
        if len(found) >= count:
            break
    return found[:count]


def pinned_everywhere(sweep: Sweep, name: str) -> CompileError:
    """No other size fits: the error names the node that refuses the next size up (a fixed
    upsampling meeting a size-following branch, say), located at its spec line."""
    n = sweep.base + 1
    try:
        sweep.run(n)
    except GraphCnnError as exc:
        return CompileError(f"--dynamic {name}: the input size is pinned at {sweep.base}: at "
                            f"{name} = {n} this node refuses it: {exc.message}",
                            loc=exc.loc, node=exc.node, via=exc.via, expected=exc.expected,
                            received=exc.received,
                            hint=f"no other admissible size within {SEARCH} of {sweep.base}; "
                                 "graphcnn sizes SPEC --axis " + name)
    return CompileError(f"--dynamic {name}: no other admissible size within {SEARCH} of "
                        f"{sweep.base}", hint="graphcnn sizes SPEC --axis " + name)


def check_dynamic(checked, names: list[str]) -> dict:
    """The plan for apply_dynamic ({"axes": {(input, index): name}, "formulas": ...}) when the
    lowering does not depend on those axes; else a CompileError naming the node that pins it."""
    if checked.spec is None:
        raise CompileError("--dynamic needs the spec the graph was checked from")
    axes = resolve(checked, names)
    base = _lowered(checked.nodes)
    formulas = {}
    for inp, index, name in axes:
        sweep = _sweep(checked, inp, index, name)
        others = samples(sweep, SAMPLES)
        if not others:
            raise pinned_everywhere(sweep, name)
        for n, infos in others[:ALTERNATIVES]:
            _compare(checked.nodes, base, _lowered(infos), name, sweep.base, n)
        formulas[name] = _formulas(checked, name, sweep.base, others)
    return {"axes": {(i, k): a for i, k, a in axes}, "formulas": formulas}


def _lowered(nodes) -> dict:
    """node id -> (parameter shapes, the ONNX it emits: op, attributes, constant values)."""
    g, out = Emitter(), {}

    def record(node, emitted) -> None:
        params = {k: list(p.shape) for k, p in node.params.items()}
        ops = [(n.op_type, [_value(g, v) for v in n.input],
                [a.SerializeToString() for a in n.attribute], n) for n in emitted]
        out[node.id] = (params, ops)
    lower_nodes(g, nodes, after=record)
    return out


def _value(g, name: str):
    tensor = g.constants.get(name)
    return (name, tensor.SerializeToString()) if tensor is not None else name


def _compare(nodes, base, other, axis, n0, n1) -> None:
    for node in nodes:
        (p0, ops0), (p1, ops1) = base[node.id], other[node.id]
        why = _difference(p0, ops0, p1, ops1, axis, n0, n1)
        if why:
            raise CompileError(f"this {node.op} pins the input size: {why}", loc=node.loc,
                               node=node.id, via=node.via,
                               hint=f"--dynamic {axis} needs every node to lower the same way "
                                    "at every size")


def _difference(p0, ops0, p1, ops1, axis, n0, n1) -> str | None:
    at = f"at {axis} = {n0} vs {n1}"
    for name in p0:
        if p0[name] != p1.get(name):
            return f"parameter '{name}' has shape {p0[name]} {at}: {p1.get(name)}"
    if [o[0] for o in ops0] != [o[0] for o in ops1]:
        return f"it lowers to different ONNX ops {at}"
    for (op, ins0, attrs0, _), (_, ins1, attrs1, _) in zip(ops0, ops1):
        if attrs0 != attrs1:
            return f"its ONNX {op} attribute {_changed(ops0, ops1, op)} {at}"
        for a, b in zip(ins0, ins1):
            if a != b:
                return f"a constant input of its ONNX {op} changes {at} ({_show(a)} vs {_show(b)})"
    return None


def _changed(ops0, ops1, op) -> str:
    """'pads [1, 1] -> [0, 1]' for the first attribute that differs between the two lowerings."""
    from onnx import helper

    for (kind, _, a0, n0), (_, _, a1, n1) in zip(ops0, ops1):
        if kind == op and a0 != a1:
            v0 = {a.name: helper.get_attribute_value(a) for a in n0.attribute}
            v1 = {a.name: helper.get_attribute_value(a) for a in n1.attribute}
            name = next(k for k in sorted(set(v0) | set(v1)) if v0.get(k) != v1.get(k))
            return f"{name} {v0.get(name)} -> {v1.get(name)}"
    return "values change"


def _show(value) -> str:
    return value[0] if isinstance(value, tuple) else value


def _formulas(checked, axis: str, n0: int, others) -> dict:
    """(node id, shape index) -> formula string, for every node size that follows the axis."""
    points = sorted([(n0, {i.id: i.shape for i in checked.nodes})] +
                    [(n, {i.id: i.shape for i in infos}) for n, infos in others])
    result = {}
    for node in checked.nodes:
        for k, size in enumerate(node.shape):
            values = [(n, shapes[node.id][k]) for n, shapes in points]
            if len({v for _, v in values}) > 1:
                rule = fit(axis, values)
                result[(node.id, k)] = str(rule).replace(" ", "") if rule is not None else None
    return result


def apply_dynamic(source, plan: dict, checked):
    """A new model with dim_params on the dynamic input axes and on every node size that
    follows them; the value_info of values inside nodes (from ONNX shape inference at one
    size) is dropped. The source model is left as it was."""
    model = without_initializers(source)
    model.graph.initializer.extend(source.graph.initializer)
    graph = model.graph
    for (inp, index), name in plan["axes"].items():
        for vi in graph.input:
            if vi.name == inp:
                vi.type.tensor_type.shape.dim[index + 1].dim_param = name
    entry = model.metadata_props.add()  # a size that fits, for `graphcnn run`'s random input
    entry.key = "graphcnn_dynamic"
    entry.value = ",".join(f"{name}={checked.inputs[inp][index]}"
                           for (inp, index), name in plan["axes"].items())
    formulas = {}
    for per_axis in plan["formulas"].values():
        formulas.update(per_axis)
    ids = {n.id for n in checked.nodes}
    keep = [vi for vi in graph.value_info if vi.name in ids]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    for vi in list(graph.value_info) + list(graph.output):
        dims = vi.type.tensor_type.shape.dim
        for k in range(len(dims) - 1):
            if (vi.name, k) in formulas:
                rule = formulas[(vi.name, k)]
                dims[k + 1].Clear()
                if rule is not None:
                    dims[k + 1].dim_param = rule
    return model
