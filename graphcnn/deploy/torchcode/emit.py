"""What a layer's `torch` hook writes with (Layer.torch): the node's inputs as code, its module
declaration, calls, small helpers shared by the file, and values a node hands to another (a
max pool's indices for a maxunpool)."""
from __future__ import annotations

from .code import HELPER_NAMES, SYMBOLIC, Code, SymStr, as_code, collapse, join, value_code

OMIT = object()  # a keyword argument to leave out


class Helpers:
    """Module-level functions and classes the generated file needs, each written once, in
    the order first asked for (a helper's own needs before it)."""

    def __init__(self):
        self.texts: dict[str, str] = {}

    def add(self, name: str, text: str, needs: tuple = ()) -> str:
        if name not in HELPER_NAMES:  # a bug of ours: variables could shadow it
            raise ValueError(f"helper {name!r} is not in code.HELPER_NAMES")
        for need in needs:
            self.add(*need)
        self.texts.setdefault(name, text.strip("\n"))
        return name


def arg(value) -> Code:
    """A call argument: code as it is, any other value as a literal (or its expression)."""
    return value if isinstance(value, Code) else value_code(value)


class NodeEmit:
    """One node's writer. `xs`: the code of each input; `attr`: the code reaching the node's
    module (at its id in the block), which holds the node's parameters under their names."""

    def __init__(self, node, xs: list[Code], attr: str, helpers: Helpers, wanted: set,
                 kept: dict, sources: list):
        self.node, self.xs, self.attr, self.helpers = node, xs, attr, helpers
        self.wanted, self.kept_vars, self.sources = wanted, kept, sources
        self.init: Code | None = None  # the node's module, when it has one
        self.keeps: type | None = None  # the kind of a second value the expression returns

    @property
    def x(self) -> Code:
        return self.xs[0]

    def code(self, text: str) -> Code:
        return Code((text,))

    def call(self, fn, *args, **kwargs) -> Code:
        """fn(args, key=value): `fn` is code text (or Code), arguments are values or Code;
        a keyword whose value is OMIT (see opt) is left out."""
        if OMIT in args:
            raise ValueError("opt() is for keyword arguments")  # a bug of ours
        parts = [arg(a) for a in args] + [f"{k}=" + arg(v) for k, v in kwargs.items()
                                          if v is not OMIT]
        return as_code(fn) + "(" + join(parts) + ")"

    @staticmethod
    def opt(value, default):
        """A keyword argument left out when it is the callee's default (a number written in
        the spec; one that came from a block param is always written)."""
        plain = not isinstance(value, SYMBOLIC) and not isinstance(value, Code)
        return OMIT if plain and type(value) is type(default) and value == default else value

    @staticmethod
    def axes(values, field=None):
        """One value when every spatial axis has it (kernel 3), else the tuple; `field`, the
        spec field the values came from, when it came from a block param (so that `kernel`
        reads alike whether the param holds 3 or [1, 7])."""
        values = tuple(values)
        if isinstance(field, SYMBOLIC) and not isinstance(field, SymStr):
            spread = (field,) * len(values) if isinstance(field, int) else tuple(field)
            if spread == values:
                return field
        return collapse(values)

    def fmt(self, template: str, *parts) -> Code:
        """`template` with each {} replaced by the next part (Code or a value)."""
        pieces = template.split("{}")
        out = Code((pieces[0],))
        for part, text in zip(parts, pieces[1:]):
            out = out + arg(part) + text
        return out

    def module(self, ctor: str, *args, **kwargs) -> Code:
        """Declare the node's module (one per node); returns the code that reaches it."""
        self.init = self.call(ctor, *args, **kwargs)
        return Code((self.attr,))

    def helper(self, name: str, text: str, needs: tuple = ()) -> str:
        """A function or class the file defines once, by name; `needs`: (name, text) pairs
        of helpers it uses."""
        return self.helpers.add(name, text, needs)

    def wants(self, kind: type) -> bool:
        """Whether another node reads this node's value of `kind` (Layer.needs)."""
        return (self.node.id, kind) in self.wanted

    def keep(self, kind: type) -> None:
        """The returned expression gives a pair: the node's value, then its value of `kind`
        that another node wants (the variable `<node>_indices` for PoolIndices)."""
        self.keeps = kind

    def kept(self, kind: type, i: int) -> Code:
        """The variable holding input i's value of `kind`."""
        return Code((self.kept_vars[(self.node.inputs[i], kind)],))

    def source(self, i: int):
        """The checked node that input i comes from (None for a network input)."""
        return self.sources[i]
