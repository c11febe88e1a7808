"""Spec ids and the names graphcnn generates share one ONNX namespace; the rule that keeps them
apart, checked once every node's parameters are known.

graphcnn names a node's parameters `<id>.<name>` (`conv.weight`), the values inside a node's
lowering `<id>/<Op><k>` (`h/Sigmoid2`), shared constants `const.<type>[<values>]`, and the
training step's own inputs and outputs `labels`, `mask`, `lr`, `step`, `loss`, `correct`,
`counted`, the optimizer state `<param>.m` (`.v`, `.momentum`) and each carried tensor's update
`<param>.new`. So a spec id (a node's or a network input's) may not contain `/`, may not be
`const` or start with `const.`, may not be one of the training names, and may not be a
parameter's name or start with one followed by a dot.
"""
from __future__ import annotations

from ..errors import GraphError

TRAINING_NAMES = ("labels", "mask", "lr", "step", "loss", "correct", "counted")
CONSTANTS = "const"  # the prefix of shared constants: const.i64[2], const.float32[0.5]


def is_generated(name: str) -> bool:
    """Whether an initializer's name is a constant's (not a parameter's) under the rule."""
    return "/" in name or name.startswith(CONSTANTS + ".")


def check_names(inputs: dict, infos, input_loc) -> None:
    """Refuse the first id that a generated name could equal; `input_loc(name)` locates a
    network input."""
    params: dict[str, str] = {}
    for n in infos:  # `a.project.bn.weight` is add `a`'s and batchnorm `a.project.bn`'s
        for name in (f"{n.id}.{p}" for p in n.params):
            if name in params:
                raise GraphError(f"parameter '{name}' of node '{n.id}' has the name of a "
                                 f"parameter of node '{params[name]}'", loc=n.loc, node=n.id,
                                 via=n.via, hint="rename the node")
            params[name] = n.id
    for name in inputs:
        _check_id(name, params, dict(loc=input_loc(name), node=name))
    for n in infos:
        _check_id(n.id, params, dict(loc=n.loc, node=n.id, via=n.via))


def _check_id(name: str, params: dict[str, str], where: dict) -> None:
    problem = _clash(name, params)
    if problem:
        raise GraphError(f"id '{name}' {problem}", **where,
                         hint="graphcnn generates these names (README: The spec language); "
                              "rename the node")


def _clash(name: str, params: dict[str, str]) -> str | None:
    """What generated name `name` could equal, or None."""
    if "/" in name:
        return "holds '/', which marks the values inside a node's lowering (`h/Sigmoid2`)"
    if name == CONSTANTS or name.startswith(CONSTANTS + "."):
        return "starts with 'const', which names shared constants (`const.i64[2]`)"
    if name in TRAINING_NAMES:
        return f"is an input or output of the training step ({', '.join(TRAINING_NAMES)})"
    for prefix in _dotted_prefixes(name):
        if prefix in params:
            said = "is" if prefix == name else "extends"
            return (f"{said} the name of parameter '{prefix}' of node '{params[prefix]}' "
                    f"(training also names '{prefix}.m', '{prefix}.new', ...)")
    return None


def _dotted_prefixes(name: str):
    """`a.b.c`, `a.b`: the name and every prefix of it that ends before a dot."""
    yield name
    while "." in name:
        name = name.rsplit(".", 1)[0]
        yield name
