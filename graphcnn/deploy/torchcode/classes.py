"""One class per block, shared by its instances: instances whose code agrees but for literal
values share a class, and a literal that differs between them is written as the block param
that holds it in every instance (`stride`); where no param does, or the code itself differs
(a `first:` projection, a `when:` condition, an `op:` param), the instances get a class each
way, named after the param that tells them apart (`BottleneckProjectConvBn`)."""
from __future__ import annotations

import keyword
from dataclasses import dataclass, replace

from .code import (MODULE_ATTRS, SHADOWING, Code, Expr, Hole, Namer, camel, doc_text, literal, names_in, plain,
                   substitute_names)
from .writer import Rendered, channel_names


@dataclass(frozen=True)
class ClassInfo:
    """A block class as its callers see it: channel params, then block params (in block order)."""

    name: str
    channels: tuple[str, ...]
    params: tuple[str, ...]
    renamed: tuple[tuple[str, str], ...] = ()  # params that would shadow a name __init__ uses

    def python(self, param: str) -> str:
        return dict(self.renamed).get(param, param)


@dataclass
class _Member:
    scope: object
    rendered: Rendered
    holes: list

    @property
    def instance(self):
        return self.scope.instance


def lines(rendered: Rendered) -> list[Code]:
    return rendered.init + [None] + rendered.forward


def template(rendered: Rendered) -> tuple:
    """The code with every literal masked: instances with one template can share a class."""
    masked = tuple(tuple("\0" if isinstance(p, Hole) else p for p in line) if line else None
                   for line in lines(rendered))
    return masked, tuple(rendered.params)


def holes(rendered: Rendered) -> list:
    return [p for line in lines(rendered) if line for p in line if isinstance(p, Hole)]


def same(a, b) -> bool:
    """Equal values of one type (a list and a tuple of equal items count as the same)."""
    return plain(a) == plain(b)


# forms a varying literal may take of a param or input channel count (ShuffleNet's
# half of the channels), tried in this order after the name itself
FORMS = (("{} // 2", lambda v: v // 2), ("{} * 2", lambda v: v * 2),
         ("{} // 4", lambda v: v // 4), ("{} * 4", lambda v: v * 4))


def names_of(member: _Member) -> dict:
    """What a class of the member's block may name: its params, then its input channels."""
    values = {p: v for p, v in member.instance.values.items()
              if p.isidentifier() and not keyword.iskeyword(p)}
    return {**values, **member.rendered.channels}


def matching_param(members: list[_Member], i: int) -> str | None:
    """An expression over the block's params or input channels equal to hole i in every
    member: a name (block order), else a name halved, doubled, ..."""
    known = [names_of(m) for m in members]
    names = [n for n in known[0] if all(n in k for k in known)]
    for name in names:
        if all(same(k[name], m.holes[i].value) for k, m in zip(known, members)):
            return name
    for form, compute in FORMS:
        for name in names:
            if all(type(k[name]) is int and same(compute(k[name]), m.holes[i].value)
                   for k, m in zip(known, members)):
                return form.format(name)
    return None


def settle(members: list[_Member]) -> list[tuple[list[_Member], list]]:
    """Groups of members with one class, and each hole's fill: a literal (str) or a param
    (Expr); members split where a hole differs and no param explains it."""
    fills = []
    for i, hole in enumerate(members[0].holes):
        if all(same(m.holes[i].value, hole.value) for m in members):
            fills.append(literal(hole.value))
            continue
        param = matching_param(members, i)
        if param is None:
            parts: dict = {}
            for m in members:
                parts.setdefault(m.holes[i].key, []).append(m)
            return [group for part in parts.values() for group in settle(part)]
        fills.append(Expr(param))
    return [(members, fills)]


class BlockClasses:
    """The classes of every block, made when a first instance of the block is asked about."""

    def __init__(self, writer, by_block: dict[str, list], class_names: Namer):
        self.writer, self.by_block, self.class_names = writer, by_block, class_names
        self.info: dict[int, ClassInfo] = {}
        self.texts: list[str] = []

    def class_of(self, scope) -> ClassInfo:
        if id(scope) not in self.info:
            self.finish(scope.instance.block)
        return self.info[id(scope)]

    def finish(self, block: str) -> None:
        members = []
        for scope in self.by_block[block]:
            rendered = self.writer.render(scope)
            members.append(_Member(scope, rendered, holes(rendered)))
        by_template: dict = {}
        for m in members:
            by_template.setdefault(template(m.rendered), []).append(m)
        by_body: dict = {}  # groups that came out alike (a param written two ways) are one
        for group, fills in (g for part in by_template.values() for g in settle(part)):
            drafted = draft(group[0], fills)
            by_body.setdefault(drafted, []).extend(group)
        groups = list(by_body.items())
        names = variant_names(block, [members for _, members in groups])
        for ((info, init, forward), group), name in zip(groups, names):
            info = replace(info, name=self.class_names(name))
            for m in group:
                self.info[id(m.scope)] = info
            self.texts.append(class_text(info, block, group, init, forward))


def draft(first: _Member, fills: list) -> tuple:
    """(ClassInfo without its name, __init__ lines, forward lines) of a group."""
    used = set().union(*(names_in(f.text) for f in fills if isinstance(f, Expr)),
                       *(names_in(p.text) for line in lines(first.rendered) if line
                         for p in line if isinstance(p, Expr)))
    definition = first.instance.definition
    channels = tuple(c for c in channel_names(definition.inputs) if c in used)
    params = tuple(p for p in definition.params if p in used)
    renamed = tuple((p, p + "_") for p in params if p in SHADOWING)
    info = ClassInfo("", channels, params, renamed)
    rename = {**{c: c for c in channels}, **{p: info.python(p) for p in params}}
    holes = iter(fills)
    init = [fill(line, holes, rename) for line in first.rendered.init]
    kept = kept_names(first.rendered, fills, rename, init)
    forward = [fill(line, holes, kept) for line in first.rendered.forward]
    stored = [f"{kept[n]} = {rename[n]}" for n in rename if n in forward_names(first, fills)]
    return info, tuple(stored + init), tuple(forward)


def forward_names(first: _Member, fills: list) -> set:
    """The params the forward reads (a drop_path rate): __init__ keeps them on self."""
    holes = iter(fills[len(holes_of(first.rendered.init)):])
    names = set()
    for line in first.rendered.forward:
        for piece in line:
            piece = next(holes) if isinstance(piece, Hole) else piece
            if isinstance(piece, Expr):
                names |= names_in(piece.text)
    return names


def holes_of(lines_: list) -> list:
    return [p for line in lines_ for p in line if isinstance(p, Hole)]


def kept_names(rendered: Rendered, fills: list, rename: dict, init: list[str]) -> dict:
    """name -> `self.<name>` for the forward (`self.<name>_` where a module has the name)."""
    taken = {line.split(" = ", 1)[0] for line in init}
    return {n: f"self.{py}" if f"self.{py}" not in taken and py not in MODULE_ATTRS
            else f"self.{py}_" for n, py in rename.items()}


def variant_names(block: str, groups: list[list[_Member]]) -> list[str]:
    """The block's CamelCase name for its largest group; the others add the param (and value)
    that tells them apart from it, or a number."""
    base = camel(block)
    if len(groups) == 1:
        return [base]
    main = max(range(len(groups)), key=lambda i: len(groups[i]))
    names = []
    for i, group in enumerate(groups):
        names.append(base if i == main else base + suffix(group, groups[main], i + 1))
    return names


def suffix(group: list[_Member], main: list[_Member], number: int) -> str:
    """What sets `group` apart from the main group, in at most three words: the nodes it has
    or lacks (a `when:`), then the params that hold one value across it and another across
    the main group (switches and names before numbers); a number when nothing does."""
    have, usual = present(group[0]), present(main[0])
    words = [f"With{camel(n)}" for n in have if n not in usual] + \
        [f"No{camel(n)}" for n in usual if n not in have]
    numbers = []
    for param, value in group[0].instance.values.items():
        other = main[0].instance.values.get(param)
        if same(value, other) or not all(same(m.instance.values.get(param), value) for m in group) \
                or not all(same(m.instance.values.get(param), other) for m in main):
            continue
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        (numbers if numeric else words).append(camel(param) + value_word(value))
    return "".join((words or numbers)[:3]) or str(number)


def present(member: _Member) -> list[str]:
    """The local ids of the nodes and calls an instance has (a `when:` may leave some out)."""
    scope = member.scope
    return [scope.local(n.id) for n in scope.nodes] + [scope.local(c.id) for c in scope.calls]


def value_word(value) -> str:
    if value is True:
        return ""
    if value is False or value is None:
        return "Off"
    if isinstance(value, (int, float)):
        return str(value).replace(".", "p").replace("-", "Minus")
    return camel(str(value))


def class_text(info: ClassInfo, block: str, group: list[_Member], init, forward) -> str:
    ids = ", ".join(m.instance.id for m in group[:3]) + (", ..." if len(group) > 3 else "")
    count = f" ({len(group)} instances)" if len(group) > 1 else ""
    defaults = group[0].instance.definition.params
    sig = ["self", *info.channels, *(f"{info.python(p)}={literal(defaults[p])}" for p in info.params)]
    body = [f"class {info.name}(nn.Module):",
            f'    """{doc_text(f"Block `{block}`: {ids}{count}.")}"""', "",
            f"    def __init__({', '.join(sig)}):", "        super().__init__()",
            *indent(init, 8), "",
            f"    def forward({', '.join(['self', *group[0].rendered.params])}):",
            *indent(forward, 8)]
    return "\n".join(body)


def fill(line: Code, fills, rename: dict) -> str:
    """A line's text: expressions with the class's param names, holes from `fills`."""
    out = []
    for piece in line:
        if isinstance(piece, Hole):
            piece = next(fills)
        if isinstance(piece, Expr):
            piece = substitute_names(piece.text, rename)
        out.append(piece)
    return "".join(out)


def indent(texts: list[str], spaces: int) -> list[str]:
    pad = " " * spaces
    return [pad + row if row else row for text in texts for row in text.split("\n")]
