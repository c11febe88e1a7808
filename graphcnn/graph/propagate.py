"""Shape propagation: every node's output shape, parameters, MACs and receptive field, in
topological order. The checker runs it once; a size sweep re-runs it at every input size."""
from __future__ import annotations

from fractions import Fraction

from ..errors import GraphCnnError, ShapeError, SpecError
from ..layers import Shape
from ..spec.expand import FlatNode, FlatSpec
from .checked import NodeInfo, ReceptiveField, receptive_field


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
    check_reads(flat, shapes)
    return infos


def check_reads(flat: FlatSpec, shapes: dict[str, Shape]) -> None:
    """Each channel count a block expression read while expanding (`x.channels`) is the count
    at these input sizes too: a sweep reuses the expansion, so a count that follows the input
    size (after a flatten, say) makes every other size inadmissible."""
    for read in flat.reads:
        got = shapes[read.node][0]
        if got != read.channels:
            raise ShapeError(f"a block expression read the channels of '{read.node}' as "
                             f"{read.channels} at the spec's input size, but they are {got} "
                             "at this one", loc=read.loc, node=read.instance, via=read.via,
                             expected=f"{read.channels} channels", received=f"{got}",
                             hint="read .channels only where they do not depend on the "
                                  "input size")


def node_info(node: FlatNode, shapes: dict, fields: dict, done: dict | None = None) -> NodeInfo:
    layer = node.layer
    in_shapes = [shapes[i] for i in node.inputs]
    sources = [(done or {}).get(i) for i in node.inputs]  # NodeInfo, None for network inputs
    try:
        out = tuple(layer.infer_with(in_shapes, sources))
        params = layer.params(in_shapes)
        macs = layer.macs(in_shapes, out)
        rf = receptive_field(layer.window(in_shapes), [fields[i] for i in node.inputs])
    except GraphCnnError as exc:
        raise exc.at(node.loc, node.id, node.via) from None
    return NodeInfo(node.id, layer, node.inputs, tuple(in_shapes), out, params, macs, rf,
                    node.loc, node.via, node.scope, node.index)
