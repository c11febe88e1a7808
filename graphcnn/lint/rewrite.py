"""`compile --portable`: the flagged nodes lower to forms every ONNX host computes alike.

A rewrite swaps a node's layer for an (unregistered) subclass whose lowering differs and whose
shapes, parameters and names are the same, so the checked graph, the weights and every value
name stay as they were; only the ONNX nodes inside that graph node change.
"""
from __future__ import annotations

import dataclasses

from ..graph import CheckedGraph
from ..layers.conv import ConvTransposeBase
from ..layers.pool import AvgPoolBase, MaxPoolBase, floor_pads
from ..layers.resample import Upsample
from ..layers.spatial import onnx_pads, per_axis
from .findings import lint


def max_pool_attrs(self, shape):
    """Max pooling pads with -inf implicitly: larger end pads and floor mode are exact, and the
    Indices (for an unpool) still count over the unpadded input."""
    k, s, _ = self.geometry()
    out = self.infer([shape])
    return dict(kernel_shape=list(k), strides=list(s),
                pads=onnx_pads(floor_pads(self, shape, out)), ceil_mode=0)


def avg_pool_lower(self, g, xs, shapes, out):
    """Explicit zero padding and a divisor fix: the same divisors on every host."""
    return self.lower_padded(g, xs, shapes, out)


def nearest_lower(self, g, xs, shapes, out):
    """[N, C, L1, ...] -> [N, C, L1, 1, ...] -> Expand to [.., L1, s1, ..] -> [N, C, L1*s1, ..]."""
    x, f = shapes[0], self.factors(shapes[0])
    split = [0, 0, *(v for L in x[1:] for v in (L, 1))]
    wide = [1, 1, *(v for L, ff in zip(x[1:], f) for v in (L, ff))]
    y = g.op("Expand", [g.op("Reshape", [xs[0], g.ints(split)]), g.ints(wide)])
    return g.op("Reshape", [y, g.ints([0, 0, *out[1:]])])


def linear_lower(self, g, xs, shapes, out):
    """Per axis, the input times its constant interpolation matrix (as the layer's gradient)."""
    x, y = shapes[0], xs[0]
    for axis, (L, f) in enumerate(zip(x[1:], self.factors(x)), start=2):
        if f == 1:
            continue
        perm = list(range(len(x) + 1))
        perm[axis], perm[-1] = perm[-1], axis
        weights = g.array(f"interp{axis}", self.interpolation(L, L * f).T.copy())
        y = g.op("Transpose", [g.op("MatMul", [g.op("Transpose", [y], perm=perm), weights])],
                 perm=perm)
    return y


def conv_transpose_lower(self, g, xs, shapes, out):
    """output_padding o with end pad e: the conv computes o more positions when e covers them
    (pad e - o instead); the rest lies past every kernel tap: zeros, then the bias is added."""
    k, s, d = self.geometry()
    extra = per_axis(self.output_padding, self.dims, "output_padding")
    pads = self.pads(shapes[0])
    inner = [(b, e - min(e, o)) for (b, e), o in zip(pads, extra)]
    rest = [o - min(e, o) for (_, e), o in zip(pads, extra)]
    y = g.op("ConvTranspose", [xs[0], g.param("weight")], kernel_shape=list(k), strides=list(s),
             dilations=list(d), pads=onnx_pads(inner), group=self.groups)
    if any(rest):
        y = g.op("Pad", [y, g.ints([0] * (self.dims + 2) + [0, 0, *rest]), g.scalar(0.0)],
                 mode="constant")
    if self.bias:
        bias = g.op("Reshape", [g.param("bias"), g.ints([self.channels, *[1] * self.dims])])
        y = g.op("Add", [y, bias])
    return y


OVERRIDES = ((MaxPoolBase, {"attrs": max_pool_attrs}), (AvgPoolBase, {"lower": avg_pool_lower}),
             (ConvTransposeBase, {"lower": conv_transpose_lower}))
_CLASSES: dict[tuple[type, str], type] = {}


def overrides(layer) -> dict | None:
    if isinstance(layer, Upsample):
        return {"lower": nearest_lower if layer.mode == "nearest" else linear_lower}
    return next((o for base, o in OVERRIDES if isinstance(layer, base)), None)


def portable_layer(node):
    """The node's layer as an unregistered subclass lowering by the rewrite."""
    layer, methods = node.layer, overrides(node.layer)
    cls = type(layer)
    key = (cls, ",".join(f.__name__ for f in methods.values()))
    if key not in _CLASSES:
        _CLASSES[key] = type(f"Portable{cls.__name__}", (cls,),
                             {**methods, "__module__": __name__, "__doc__": cls.__doc__})
    return _CLASSES[key].model_validate(layer.model_dump())


def portable(checked: CheckedGraph) -> tuple[CheckedGraph, list[str]]:
    """The graph with every rewritable finding's node lowering portably, and a note per node."""
    chosen: dict[str, list[str]] = {}
    for finding in lint(checked):
        if finding.rule.rewritable:
            chosen.setdefault(finding.node, []).append(finding.rule.id)
    if not chosen:
        return checked, []
    nodes = tuple(dataclasses.replace(n, layer=portable_layer(n)) if n.id in chosen else n
                  for n in checked.nodes)
    notes = [f"portable: {node} rewritten for {', '.join(ids)}" for node, ids in chosen.items()]
    return dataclasses.replace(checked, nodes=nodes), notes
