"""Integer arithmetic in block arguments: `width * 4`, `(64 + 6 * 32) // 2`, `2 if down else 1`,
and, inside a block, its input's channel count: `x.channels * 4`.

A string is evaluated only when it parses as an expression whose names are all known parameters
or `<block input>.channels` (or it has no names and is arithmetic); anything else (`same`, a
node id) stays a plain string. Evaluation walks the AST itself: no eval(), no calls, and the
one attribute is `.channels` of a block input name.
"""
from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import SpecError

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Div: operator.truediv,
           ast.Pow: operator.pow}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
            ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}
_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.USub, ast.UAdd, ast.Not, ast.Constant,
            ast.Name, ast.Load, ast.Compare, ast.IfExp, ast.BoolOp, ast.And, ast.Or,
            *_BINARY, *_COMPARE)
MAX_INT = 2 ** 62
INPUT_ATTRIBUTES = ("channels",)  # what an expression reads of a block input: `x.channels`
Inputs = Mapping[str, Callable[[], int]]  # block input name -> its channel count, on demand


def substitute(value: Any, params: dict[str, Any], inputs: Inputs | None = None) -> Any:
    """Evaluate parameter expressions in every string of a nested value."""
    if isinstance(value, dict):
        return {k: substitute(v, params, inputs) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, params, inputs) for v in value]
    if isinstance(value, str):
        return evaluate(value, params, inputs)
    return value


def evaluate(text: str, params: dict[str, Any], inputs: Inputs | None = None) -> Any:
    """The value of `text` as an expression over `params` and the block `inputs`' channel
    counts (each asked for only when the text reads it), or `text` itself if it is not one."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return text
    nodes = list(ast.walk(tree))
    inputs = inputs or {}
    if not all(isinstance(n, _ALLOWED) or _reads_input(n, inputs, text) for n in nodes):
        return text
    bases = {id(n.value) for n in nodes if isinstance(n, ast.Attribute)}
    names = {n.id for n in nodes if isinstance(n, ast.Name) and id(n) not in bases}
    if not names <= set(params) or (not names and isinstance(tree.body, ast.Constant)):
        return text
    try:
        return _eval(tree.body, params, inputs)
    except (ZeroDivisionError, OverflowError, TypeError, ValueError) as exc:
        raise SpecError(f"cannot evaluate '{text}': {exc}",
                        received=", ".join(f"{k}={params[k]!r}" for k in sorted(names))) from None


def _reads_input(node: ast.AST, inputs: Inputs, text: str) -> bool:
    """Whether `node` is `<block input>.channels`; another attribute of an input is an error
    (a misspelt `x.chanels` would otherwise stay a string and fail far from its cause)."""
    if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id in inputs):
        return False
    if node.attr not in INPUT_ATTRIBUTES:
        raise SpecError(f"cannot evaluate '{text}': a block input has one readable size, "
                        f"{node.value.id}.channels", received=f"{node.value.id}.{node.attr}")
    return True


def _eval(node: ast.AST, params: dict[str, Any], inputs: Inputs) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return params[node.id]
    if isinstance(node, ast.Attribute):  # `x.channels` (checked by _reads_input)
        return inputs[node.value.id]()
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, params, inputs)
        return not value if isinstance(node.op, ast.Not) else (-value if isinstance(node.op, ast.USub) else +value)
    if isinstance(node, ast.BinOp):
        return _binary(node, params, inputs)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, params, inputs)
        for op, right_node in zip(node.ops, node.comparators):
            right = _eval(right_node, params, inputs)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        test = _eval(node.test, params, inputs)
        return _eval(node.body if test else node.orelse, params, inputs)
    values = [_eval(v, params, inputs) for v in node.values]  # BoolOp
    return all(values) if isinstance(node.op, ast.And) else any(values)


def _binary(node: ast.BinOp, params: dict[str, Any], inputs: Inputs) -> Any:
    left, right = _eval(node.left, params, inputs), _eval(node.right, params, inputs)
    if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 2 ** 16):
        raise ValueError("power too large")
    result = _BINARY[type(node.op)](left, right)
    if isinstance(node.op, ast.Div) and float(result).is_integer():
        result = int(result)
    if isinstance(result, int) and abs(result) > MAX_INT:
        raise ValueError("result too large")
    return result
