"""The block structure of a checked network: the network and each block instance is a scope
holding nodes and calls (a call: the instances of one block call, numbered under `repeat`),
with the values it reads from outside (imports) and hands out (exports), in an order that
runs every item after the items it reads."""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from ...errors import CompileError
from ...spec.expand import BlockInstance


@dataclass(eq=False)
class Scope:
    """The network (instance None) or one block instance."""

    instance: BlockInstance | None
    prefix: str  # `stage1.block0.` ("" for the network)
    nodes: list = field(default_factory=list)  # checked nodes directly in the scope
    calls: list["Call"] = field(default_factory=list)
    items: list = field(default_factory=list)  # nodes and calls, in running order
    defined: set = field(default_factory=set)  # value keys made inside (nested included)
    reads: set = field(default_factory=set)  # value keys read inside (nested included)
    imports: list = field(default_factory=list)
    exports: list = field(default_factory=list)

    def local(self, name: str) -> str:
        return name[len(self.prefix):] if name.startswith(self.prefix) else name


@dataclass(eq=False)
class Call:
    """The instances of one block call in its enclosing scope."""

    id: str
    numbered: bool
    instances: list[Scope] = field(default_factory=list)


def node_reads(node) -> list:
    """Value keys a node reads: its inputs, and (node id, kind) pairs of Layer.needs."""
    return list(node.inputs) + list(node.layer.needs(list(node.inputs)))


def build(checked, instances: list[BlockInstance]) -> Scope:
    """The scope tree of the nodes that reach an output."""
    root = Scope(None, "")
    scopes = {i.id: Scope(i, i.id + ".") for i in instances}
    for node in checked.nodes:
        (scopes[node.scope[-1]] if node.scope else root).nodes.append(node)
    for inst in instances:  # parents first (expansion order), so calls keep spec order
        parent = enclosing(inst.call, scopes) or root
        calls = [c for c in parent.calls if c.id == inst.call]
        call = calls[0] if calls else Call(inst.call, inst.id != inst.call)
        if not calls:
            parent.calls.append(call)
        call.instances.append(scopes[inst.id])
    prune(root)
    summarize(root, {r for n in checked.nodes for r in node_reads(n) if isinstance(r, tuple)})
    readers = reader_map(checked)
    outputs = set(checked.outputs)
    settle(root, readers, outputs)
    return root


def enclosing(call_id: str, scopes: dict) -> Scope | None:
    """The innermost instance whose id is a prefix of the call's id."""
    parts = call_id.split(".")
    for end in range(len(parts) - 1, 0, -1):
        found = scopes.get(".".join(parts[:end]))
        if found is not None:
            return found
    return None


def prune(scope: Scope) -> bool:
    """Drop instances with no node that reaches an output; True when `scope` keeps some."""
    for call in scope.calls:
        call.instances = [s for s in call.instances if prune(s)]
    scope.calls = [c for c in scope.calls if c.instances]
    return bool(scope.nodes or scope.calls)


def summarize(scope: Scope, wanted: set) -> None:
    """The keys each scope defines and reads, nested scopes included; `wanted`: the
    (node id, kind) values some node reads besides node outputs."""
    for node in scope.nodes:
        scope.defined.add(node.id)
        scope.defined.update(w for w in wanted if w[0] == node.id)
        scope.reads.update(node_reads(node))
    for call in scope.calls:
        for inner in call.instances:
            summarize(inner, wanted)
            scope.defined |= inner.defined
            scope.reads |= inner.reads


def reader_map(checked) -> dict:
    """key -> the ids of the nodes that read it."""
    readers: dict = {}
    for node in checked.nodes:
        for key in node_reads(node):
            readers.setdefault(key, []).append(node.id)
    return readers


def settle(scope: Scope, readers: dict, outputs: set) -> None:
    """Imports, exports and running order of the scope and of every nested one."""
    if scope.instance:
        outside = scope.reads - scope.defined - set(scope.instance.inputs)
        scope.imports = sorted(outside, key=str)
        scope.exports = exported(scope, readers, outputs)
    for call in scope.calls:
        for inner in call.instances:
            settle(inner, readers, outputs)
    scope.items = running_order(scope)


def exported(scope: Scope, readers: dict, outputs: set) -> list:
    """Keys made inside and read outside (or network outputs): the output first."""
    inside = scope.prefix
    keys = [k for k in scope.defined if k in outputs or any(
        not reader.startswith(inside) for reader in readers.get(k, ()))]
    out = scope.instance.output
    return sorted(keys, key=lambda k: (k != out, str(k)))


def running_order(scope: Scope) -> list:
    """Nodes and calls so that each runs after those it reads (spec order among the rest)."""
    items = scope.nodes + scope.calls
    maker = {}
    for i, item in enumerate(items):
        for key in keys_made(item):
            maker[key] = i
    graph = nx.DiGraph()
    graph.add_nodes_from(range(len(items)))
    for i, item in enumerate(items):
        graph.add_edges_from((maker[k], i) for k in keys_read(item) if maker.get(k, i) != i)
    first = [first_index(item) for item in items]
    try:
        order = list(nx.lexicographical_topological_sort(graph, key=lambda i: first[i]))
    except nx.NetworkXUnfeasible:
        raise CompileError(f"block instance {scope.prefix.rstrip('.') or 'network'} exchanges "
                           "values with a block inside it in both directions; one module call "
                           "cannot say that", hint="read the inner values through the block's "
                           "inputs and outputs") from None
    return [items[i] for i in order]


def keys_made(item) -> set:
    if isinstance(item, Call):
        return set().union(*(s.defined for s in item.instances))
    return {item.id}


def keys_read(item) -> set:
    if isinstance(item, Call):
        return set().union(*(s.reads for s in item.instances))
    return set(node_reads(item))


def first_index(item) -> int:
    if isinstance(item, Call):
        return min(first_index(n) for s in item.instances for n in s.nodes + s.calls)
    return item.index
