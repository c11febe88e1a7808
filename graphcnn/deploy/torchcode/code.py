"""Code fragments with holes, symbolic values and Python names for the PyTorch code writer.

A fragment (Code) is a tuple of pieces: plain text, an Expr (an expression over a block's
params: `width * 4`) or a Hole (a literal value). Block classes are written once for many
instances: instances whose fragments agree but for their holes share a class, and a hole
whose value differs between them becomes a param of the class (classes.py).

Sym, SymFloat and SymStr are values that remember the spec expression they came from (the
field `channels: width * 4` of a block node is Sym(256, "width * 4")); layers compute with
them as with plain values, and the writer shows the expression instead of the number.
"""
from __future__ import annotations

import ast
import builtins
import keyword
import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Expr:
    """An expression over block params (or input channel counts), as Python source."""

    text: str


@dataclass(frozen=True)
class Hole:
    """A literal value; `key` tells apart values equal in Python but not in code (1, 1.0, True)."""

    value: object

    @property
    def key(self):
        return plain(self.value)


def plain(value):
    """A value with its type, lists as tuples: equal keys mean the same code and value."""
    if isinstance(value, (tuple, list)):
        return tuple(map(plain, value))
    return (type(value), value)


class Code(tuple):
    """A code fragment: a tuple of str, Expr and Hole pieces."""

    def __add__(self, other):
        return Code(tuple(self) + tuple(as_code(other)))

    def __radd__(self, other):
        return Code(tuple(as_code(other)) + tuple(self))

    def text(self) -> str:
        """The fragment with every hole written as its literal (the network class, tests)."""
        return "".join(p if isinstance(p, str) else p.text if isinstance(p, Expr)
                       else literal(p.value) for p in self)


def as_code(value) -> Code:
    """Code as it is; str is code text; anything else a value (see value())."""
    if isinstance(value, Code):
        return value
    if isinstance(value, str) and not isinstance(value, SymStr):
        return Code((value,))
    return value_code(value)


def join(parts, sep: str = ", ") -> Code:
    out = Code()
    for i, part in enumerate(parts):
        out = out + (sep if i else "") + as_code(part)
    return out


class Sym(int):
    """An int that remembers its spec expression; a sum of two is the sum expression (concat
    channels); any other arithmetic gives a plain int."""

    expr: str

    def __new__(cls, value, expr: str):
        obj = super().__new__(cls, value)
        obj.expr = expr
        return obj

    def __add__(self, other):
        if isinstance(other, Sym):
            return Sym(int(self) + int(other), binary(self.expr, "+", other.expr))
        return self if other == 0 and type(other) is int else int(self) + other

    def __radd__(self, other):
        return self if other == 0 and type(other) is int else other + int(self)

    def __repr__(self):
        return f"Sym({int(self)}, {self.expr!r})"


class SymFloat(float):
    """A float that remembers its spec expression (`rate: max_rate * k / last`)."""

    def __new__(cls, value, expr: str):
        obj = super().__new__(cls, value)
        obj.expr = expr
        return obj


class SymStr(str):
    """A str that remembers its spec expression (`mode: mode`)."""

    def __new__(cls, value, expr: str):
        obj = super().__new__(cls, value)
        obj.expr = expr
        return obj


class SymList(list):
    """A list that remembers its spec expression (`kernel: kernel` with kernel [1, 7])."""

    def __init__(self, value, expr: str):
        super().__init__(value)
        self.expr = expr


SYMBOLIC = (Sym, SymFloat, SymStr, SymList)


def binary(left: str, op: str, right: str) -> str:
    """`left op right` with the parentheses Python needs (ast.unparse decides)."""
    return ast.unparse(ast.parse(f"({left}) {op} ({right})", mode="eval"))


def canonical(text: str, channels: dict[str, str] | None = None) -> str:
    """An expression in one spelling: `(kernel-1)//2` and `(kernel - 1) // 2` agree; a block
    input's `x.channels` becomes the class param `channels[x]` (in_channels)."""
    channels = channels or {}

    class Channels(ast.NodeTransformer):
        def visit_Attribute(self, node):
            if isinstance(node.value, ast.Name) and node.value.id in channels:
                return ast.Name(channels[node.value.id], ast.Load())
            return node

    return ast.unparse(Channels().visit(ast.parse(text.strip(), mode="eval")))


def names_in(text: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(text, mode="eval")) if isinstance(n, ast.Name)}


def substitute_names(text: str, mapping: dict[str, str]) -> str:
    """`text` with each name replaced by the expression mapping gives it (parenthesised as
    needed); a KeyError when a name has none."""
    tree = ast.parse(text, mode="eval")

    class Swap(ast.NodeTransformer):
        def visit_Name(self, node):
            return ast.parse(mapping[node.id], mode="eval").body

    return ast.unparse(Swap().visit(tree))


def value_code(value) -> Code:
    """A value as code: a symbolic one as its expression, containers piece by piece, any
    other leaf as a hole."""
    if isinstance(value, SYMBOLIC):
        return Code((Expr(value.expr),))
    if isinstance(value, (tuple, list)) and not any(map(symbolic_inside, value)):
        return Code((Hole(value),))  # one hole: a block param may hold the whole list
    if isinstance(value, tuple):
        inner = join(value)
        return "(" + inner + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + join(value) + "]"
    if isinstance(value, dict):
        return "{" + join([Code((literal(str(k)) + ": ",)) + as_code(v) for k, v in value.items()]) + "}"
    return Code((Hole(value),))


def symbolic_inside(value) -> bool:
    """Whether a value holds code or an expression (so it cannot be one literal)."""
    if isinstance(value, (Code, dict)):
        return True
    if isinstance(value, (tuple, list)):
        return any(map(symbolic_inside, value))
    return isinstance(value, SYMBOLIC)


def doc_text(text: str) -> str:
    """Spec text (a name, an id, the spec's path) made safe inside a docstring: quotes and
    backslashes escaped, control characters (a NUL) written as escapes. A spec named with
    three quotes and code after them would otherwise put that code in the written file."""
    text = str(text).replace("\\", "\\\\").replace('"', '\\"')
    return "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in text)


def literal(value) -> str:
    """Python source of a literal value (floats that are not finite through math)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "math.nan" if math.isnan(value) else ("-math.inf" if value < 0 else "math.inf")
    if isinstance(value, tuple):
        return "(" + ", ".join(map(literal, value)) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(map(literal, value)) + "]"
    if isinstance(value, str) and value.isprintable() and not set(value) & {'"', "\\"}:
        return f'"{value}"'
    return repr(value)


def collapse(values):
    """One value for all axes when they agree (kernel 3 rather than (3, 3)), else a tuple."""
    values = tuple(values)
    first = values[0]
    if all(as_code(v) == as_code(first) for v in values):
        return first
    return values


# the functions and classes layers' torch hooks define in the file (emit.helper); no variable
# takes their names
HELPER_NAMES = frozenset({"NoCounter", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "ConvBn1d",
                          "ConvBn2d", "ConvBn3d", "Scale", "highway", "channel_shuffle",
                          "stochastic_depth", "avg_pool_padded", "center_crop", "yolo_decode",
                          "greedy_nms"})
# names the generated code uses itself, that no variable or param may take
RESERVED = frozenset({"self", "torch", "nn", "F", "math", *HELPER_NAMES, *keyword.kwlist,
                      *dir(builtins)})
# names a class param may not take: __init__ uses them (renamed with a trailing _)
SHADOWING = frozenset({"self", "super", "torch", "nn", "F", "math", *HELPER_NAMES})


def last_word(kind: type) -> str:
    """PoolIndices -> indices: the suffix of a variable holding a node's value of that kind."""
    return re.findall(r"[A-Z][a-z0-9]*", kind.__name__)[-1].lower()
# attributes every nn.Module has: a submodule may not be named so (torch 2.x, dir(nn.Module))
MODULE_ATTRS = frozenset("""T_destination add_module apply bfloat16 buffers call_super_init
children compile cpu cuda double dump_patches eval extra_repr float forward get_buffer
get_extra_state get_parameter get_submodule half ipu load_state_dict modules mtia named_buffers
named_children named_modules named_parameters parameters register_backward_hook register_buffer
register_forward_hook register_forward_pre_hook register_full_backward_hook
register_full_backward_pre_hook register_load_state_dict_post_hook
register_load_state_dict_pre_hook register_module register_parameter
register_state_dict_post_hook register_state_dict_pre_hook requires_grad_ set_extra_state
set_submodule share_memory state_dict to to_empty train type xpu zero_grad training keys items
values update pop clear""".split())


def plain_attribute(name: str) -> bool:
    """Whether `self.<name>` reaches a submodule called `name` (else self._modules[...])."""
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_") \
        and name not in MODULE_ATTRS


def attribute(owner: str, name: str) -> str:
    return f"{owner}.{name}" if plain_attribute(name) else f"{owner}._modules[{literal(name)}]"


def camel(name: str) -> str:
    """resnet50 -> Resnet50, mobilenet_v3_small -> MobilenetV3Small, conv_bn -> ConvBn."""
    words = [w for w in re.split(r"[^0-9A-Za-z]+", name) if w]
    text = "".join(w[0].upper() + w[1:] for w in words) or "Block"
    return text if text[0].isalpha() else "B" + text


class Namer:
    """Python identifiers for spec names, each used once in its namespace."""

    def __init__(self, taken=()):
        self.taken = set(RESERVED) | set(taken)

    def __call__(self, name: str) -> str:
        base = re.sub(r"\W", "_", name)
        base = base if base and not base[0].isdigit() else "_" + base
        candidate, n = base, 1
        while candidate in self.taken:
            n += 1
            candidate = f"{base}_{n}" if base not in RESERVED or n > 2 else base + "_"
        self.taken.add(candidate)
        return candidate
