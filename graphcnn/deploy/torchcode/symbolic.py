"""Spec expressions carried through a block: which field values and channel counts are
expressions over the block's params (Sym values, code.py), so that a block's class says
`nn.Conv2d(in_channels, width * 4, 1)` for all its instances instead of numbers."""
from __future__ import annotations

from dataclasses import replace

from ...spec.exprs import evaluate
from .code import (SYMBOLIC, Sym, SymFloat, SymList, SymStr, canonical, literal, names_in,
                   substitute_names)

SKIPPED_FIELDS = ("id", "inputs", "op")


def symbolic(value, raw, params: dict, inputs: dict | None = None):
    """`value` (a validated field or argument) with its spec expression attached when `raw`,
    the same field as written, is an expression over `params` and the block's `inputs`
    (name -> (channel count, the class param holding it): `x.channels` is written so)."""
    if isinstance(raw, list) and isinstance(value, (list, tuple)) and len(raw) == len(value):
        return type(value)(symbolic(v, r, params, inputs) for v, r in zip(value, raw))
    if not isinstance(raw, str) or isinstance(value, bool):
        return value
    inputs = inputs or {}
    evaluated = evaluate(raw, params, {k: (lambda c=c: c) for k, (c, _) in inputs.items()})
    # not an expression; or one whose Python value is not of the field's type (32.0 for
    # `channels: width / 2`, which torch would refuse): the number itself. (An int for a
    # float field is fine: the spec's division keeps exact quotients whole.)
    fits = type(evaluated) is type(value) or (type(value) is float and type(evaluated) is int)
    if evaluated is raw or not fits:
        return value
    expr = canonical(raw, {k: name for k, (_, name) in inputs.items()})
    for kind, sym in ((int, Sym), (float, SymFloat), (str, SymStr), (list, SymList)):
        if isinstance(value, kind):
            return sym(value, expr)
    return value


def symbolic_layer(layer, raw: dict | None, params: dict, inputs: dict):
    """The layer with each field written as an expression carrying it."""
    if not isinstance(raw, dict):
        return layer
    update = {name: symbolic(getattr(layer, name), raw[name], params, inputs) for name in raw
              if name in type(layer).model_fields and name not in SKIPPED_FIELDS}
    return layer.model_copy(update=update)


def channel_shape(shape: tuple, name: str) -> tuple:
    """A block input's shape whose channel count is the class param `name`."""
    return (Sym(shape[0], name), *shape[1:]) if shape else shape


def infer_symbolic(layer, node, shapes: list[tuple], sources: list) -> tuple:
    """The node's output shape computed from symbolic input shapes (so a conv's channels or a
    concat's sum keep their expressions); the checked shape when that fails or disagrees."""
    try:
        out = tuple(layer.infer_with(shapes, sources))
    except Exception:  # a shape rule that cannot take the symbolic values: plain numbers
        return node.shape
    return out if tuple(map(int, out)) == tuple(node.shape) else node.shape


def translate(value, mapping: dict):
    """A value in an inner block's terms, in the enclosing block's terms: each inner name is
    replaced by what the enclosing block passes for it (`mapping`: name -> value there)."""
    if not isinstance(value, Sym):
        return int(value) if isinstance(value, int) else value
    outer = {k: v.expr if isinstance(v, SYMBOLIC) else literal(v) for k, v in mapping.items()}
    try:
        text = substitute_names(value.expr, outer)
    except KeyError:  # a name the enclosing block does not supply
        return int(value)
    return Sym(int(value), text) if names_in(text) else int(value)


def translate_shape(shape: tuple, mapping: dict) -> tuple:
    return (translate(shape[0], mapping), *shape[1:]) if shape else shape


def with_shapes(node, layer, in_shapes: list[tuple], shape: tuple):
    """The checked node as a layer's torch hook sees it: symbolic layer and shapes."""
    return replace(node, layer=layer, in_shapes=tuple(in_shapes), shape=shape)
