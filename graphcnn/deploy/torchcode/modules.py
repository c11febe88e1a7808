"""Where a scope's modules sit: each at the path its id spells (`conv1`; `stage1.block0`, a
numbered instance or a dotted id), intermediate names becoming nn.ModuleDicts, so that
state_dict keys are the spec's ids with their parameter names."""
from __future__ import annotations

import json

from ...errors import CompileError
from .code import MODULE_ATTRS, Code, attribute, join, plain_attribute


def access(path: list[str]) -> str:
    """The code reaching the module at `path` from `self`."""
    out = attribute("self", path[0])
    for name in path[1:]:  # inside an nn.ModuleDict
        out += f".{name}" if plain_attribute(name) else f"[{json.dumps(name)}]"
    return out


def init_lines(modules: list[tuple[list[str], Code]]) -> list[Code]:
    """`self.<name> = <module>` per first path segment, in order of first appearance."""
    return [Code((f"{attribute('self', name)} = ",)) + tree for name, tree in
            grouped(modules).items()]


def grouped(modules: list[tuple[list[str], Code]], depth: int = 0) -> dict[str, Code]:
    """First segment -> its module, or an nn.ModuleDict of what lies under it."""
    heads: dict[str, list] = {}
    for path, code in modules:
        if any(not part for part in path):
            raise CompileError(f"id '{'.'.join(path)}' has an empty part between dots")
        heads.setdefault(path[0], []).append((path[1:], code))
    return {name: subtree(name, below, depth) for name, below in heads.items()}


def subtree(name: str, below: list, depth: int) -> Code:
    whole = [code for rest, code in below if not rest]
    if whole and len(below) == 1:
        return whole[0]
    if whole:  # a module that would also hold dotted children: torch has no such thing
        raise CompileError(f"'{name}' names a layer and also the start of other ids "
                           f"({name}.{'.'.join(below[-1][0])}); PyTorch attributes cannot "
                           "be both", hint="rename one of them")
    taken = [key for rest, _ in below if rest for key in rest[:1] if key in MODULE_ATTRS]
    if taken:  # nn.ModuleDict refuses them (torch's add_module)
        raise CompileError(f"id '{name}.{taken[0]}' ends in a name every PyTorch module "
                           "has, which a ModuleDict cannot hold", hint="rename the node")
    pad = "    " * (depth + 1)
    entries = [Code((f"\n{pad}{json.dumps(key)}: ",)) + code
               for key, code in grouped([(rest, c) for rest, c in below], depth + 1).items()]
    return Code(("nn.ModuleDict({",)) + join(entries, ",") + f",\n{pad[:-4]}}})"
