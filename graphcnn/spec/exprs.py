"""Integer arithmetic in block arguments: `width * 4`, `(64 + 6 * 32) // 2`, `2 if down else 1`,
and, inside a block, its input's channel count: `x.channels * 4`.

A string is evaluated only when it parses as an expression whose names are all known parameters
or `<block input>.channels` (or it has no names and is arithmetic); anything else (`same`, a
node id) stays a plain string. Evaluation walks the AST itself: no eval(), no calls, and the
one attribute is `.channels` of a block input name.

Expressions are bounded: a text of more than MAX_EXPR_CHARS is never parsed, a tree deeper than
MAX_EXPR_DEPTH is refused before it is walked (the walk recurses), arithmetic takes numbers only
(so `'a' * 2**40` or a list times 10^9 is refused before it is built), every integer result
stays within MAX_INT and every float result is finite. An expression computes a number or
true/false; a string (or a list) comes into a field only as a parameter's value, `act`.
"""
from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import SpecError, shown
from ..layers.base import MAX_INT

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Div: operator.truediv,
           ast.Pow: operator.pow}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
            ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}
_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.USub, ast.UAdd, ast.Not, ast.Constant,
            ast.Name, ast.Load, ast.Compare, ast.IfExp, ast.BoolOp, ast.And, ast.Or,
            *_BINARY, *_COMPARE)
MAX_EXPR_CHARS = 1000  # longer strings are not expressions: they stay text
MAX_EXPR_DEPTH = 32  # nesting of the expression tree (`1 + 1 + ... + 1` is as deep as long)
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
    if len(text) > MAX_EXPR_CHARS:
        return text
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError):  # ValueError: a NUL byte, before Python 3.12
        return text
    except (RecursionError, MemoryError):
        raise _too_deep(text) from None
    nodes = list(ast.walk(tree))
    inputs = inputs or {}
    if not all(isinstance(n, _ALLOWED) or _reads_input(n, inputs, text) for n in nodes):
        return text
    bases = {id(n.value) for n in nodes if isinstance(n, ast.Attribute)}
    names = {n.id for n in nodes if isinstance(n, ast.Name) and id(n) not in bases}
    if not names <= set(params) or (not names and isinstance(tree.body, ast.Constant)):
        return text
    if _depth(tree.body) > MAX_EXPR_DEPTH:
        raise _too_deep(text)
    try:
        return _result(_eval(tree.body, params, inputs), tree.body)
    except (ZeroDivisionError, OverflowError, TypeError, ValueError) as exc:
        raise SpecError(f"cannot evaluate '{shown(text)}': {exc}",
                        received=", ".join(f"{k}={shown(repr(params[k]))}" for k in sorted(names))
                        or None) from None


def _too_deep(text: str) -> SpecError:
    return SpecError(f"expression nested too deeply: '{shown(text)}'",
                     expected=f"at most {MAX_EXPR_DEPTH} levels")


def _depth(root: ast.AST) -> int:
    """The depth of the tree, without recursion (the refused trees are the deep ones)."""
    deepest, todo = 0, [(root, 1)]
    while todo:
        node, depth = todo.pop()
        deepest = max(deepest, depth)
        todo.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _result(value: Any, body: ast.AST) -> Any:
    """A computed value is a number or true/false; only a bare parameter name passes a string
    or a list through (`op: act`), so no expression builds text a field then echoes."""
    if isinstance(value, (bool, int, float)) or isinstance(body, ast.Name):
        return value
    raise TypeError(f"an expression computes a number or true/false, not {type(value).__name__} "
                    f"{shown(repr(value))} (a string comes in as a parameter's value: `op: act`)")


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
        if isinstance(node.op, ast.Not):
            return not value
        return -_number(value) if isinstance(node.op, ast.USub) else +_number(value)
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
    left = _number(_eval(node.left, params, inputs))
    right = _number(_eval(node.right, params, inputs))
    if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 2 ** 16):
        raise ValueError("power too large")
    result = _BINARY[type(node.op)](left, right)
    if isinstance(result, complex):  # (-8) ** 0.5
        raise ValueError("the result is not a real number")
    if isinstance(result, float) and not math.isfinite(result):
        raise ValueError("the result is not a finite number")
    if isinstance(node.op, ast.Div) and float(result).is_integer():
        result = int(result)
    if isinstance(result, int) and abs(result) > MAX_INT:
        raise ValueError("result too large")
    return result


def _number(value: Any) -> int | float:
    """An operand of arithmetic: `'a' * 2**40` and `[0] * 10**9` are refused unbuilt."""
    if isinstance(value, (int, float)):
        return value
    raise TypeError(f"arithmetic takes numbers, not {type(value).__name__} {shown(repr(value))}")
