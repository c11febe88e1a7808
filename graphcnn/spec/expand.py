"""Block expansion: a NetworkSpec becomes a flat list of nodes with hierarchical ids.

A block call `{id: stage3, block: bottleneck, repeat: 36, args: {...}, first: {...}}` makes
instances stage3.block0 ... stage3.block35. One naming rule: a call that says `repeat:` numbers
its instances whatever the count (`repeat: 1` makes stage3.block0, so a weight file keeps its
names when the stage grows a second block); a call without `repeat:` is one instance named
`stage3`. With repeat 0 the call adds nothing and `stage3` names its input, a stage of zero
blocks. Inside a block,
a string field that is an integer expression over the block's params (`width * 4`) and its
inputs' channel counts (`x.channels * 4`: shapes inferred on demand, early_shapes.py) is
evaluated; names of the block's inputs and nodes are references and are left alone. Node ids become
`stage3.block12.conv2`; `stage3.block12` and `stage3` refer to the output of the instance and
of the last instance. A node with several outputs (split, chunk: Layer.parts) becomes one
node per part, `s.0`, `s.1`, ...; naming `s` itself is refused with the parts' names.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import GraphCnnError, GraphError, Location, SpecError
from ..fileio import is_file
from ..layers import Layer
from .early_shapes import EarlyShapes, ShapeRead
from .exprs import Inputs, substitute
from .model import BlockCall, BlockDef, NetworkSpec, check_op, node_adapter, validation_error
from .scaling import scaled_blocks, scaled_calls
from .yamlio import LocatedData, load_yaml, read_text

MAX_BLOCK_DEPTH = 16
_PREVIOUS = object()  # stands for "the previous node's output" while wiring a node
MAX_NODES = 100_000
# Block instances in all, counted apart from nodes: an empty block repeated 10^5 x 10^5 x 10^5
# emits no node, yet would run for ever.
MAX_INSTANCES = 100_000
# Values and characters of every block argument and block node after substitution, summed over
# the whole expansion: a large argument passed to many instances (a 300 kB spec took 75 min).
# ResNet-200 spends about 10,000, 90,000 nodes `{op: relu}` in nested blocks about 630,000.
MAX_ARGUMENT_COST = 2_000_000


@dataclass(frozen=True)
class FlatNode:
    """One layer after expansion, with its resolved input ids and where it was written."""

    id: str
    layer: Layer
    inputs: tuple[str, ...]
    index: int
    loc: Location | None = None
    via: tuple[Location, ...] = ()
    scope: tuple[str, ...] = ()  # enclosing block instances, outermost first


@dataclass(frozen=True)
class BlockInstance:
    """One instance of a block call, for tools that rebuild the block structure (export-torch
    writes a class per block): `raw` holds the block's nodes as written, by local id, before
    the params were substituted, so a field's expression (`width * 4`) can be shown."""

    id: str  # stage3.block12 (numbered) or stage3
    call: str  # the call's id: stage3
    block: str
    args: dict  # what the call gave this instance (`first:` included), evaluated
    values: dict  # every param of the instance: the block's defaults with args over them
    inputs: tuple[str, ...]
    output: str
    raw: dict[str, Any]
    definition: BlockDef  # its params' defaults and its input names


@dataclass
class FlatSpec:
    name: str
    inputs: dict[str, tuple]
    nodes: list[FlatNode]
    outputs: list[str]
    aliases: dict[str, str] = field(default_factory=dict)
    output_locs: dict[str, Location | None] = field(default_factory=dict)
    instances: list[BlockInstance] = field(default_factory=list)  # in expansion order
    reads: list[ShapeRead] = field(default_factory=list)  # channel counts expansion used


@dataclass(frozen=True)
class _Source:
    """Where a block's text lives, for error locations."""

    located: LocatedData | None
    prefix: tuple


def flatten(spec: NetworkSpec) -> FlatSpec:
    """Expand every block call of `spec` into plain nodes."""
    blocks = dict(load_imports(spec))
    for name, block in spec.blocks.items():
        blocks[name] = (block, _Source(spec._source, ("blocks", name)))
    blocks = scaled_blocks(blocks, spec.scale, spec.location(("scale",)))  # `scale:` widths, depths
    ex = _Expander(blocks, {k: tuple(v) for k, v in spec.inputs.items()})
    first_input = next(iter(spec.inputs))
    top = _Source(spec._source, ())
    ex.expand(scaled_calls(list(spec.nodes), blocks, spec.scale), top, ("nodes",), scope=(),
              names={}, previous=first_input, via=())
    nodes = [replace(n, inputs=tuple(ex.alias(i) for i in n.inputs)) for n in ex.nodes]
    if not nodes:  # every block call repeats 0 times
        raise SpecError("the network has no layers: every block call repeats 0 times",
                        loc=spec.location(("nodes",)), expected="at least one layer")
    outputs = [ex.alias(o) for o in spec.outputs] if spec.outputs else [nodes[-1].id]
    locs = {o: spec.location(("outputs", i)) for i, o in enumerate(outputs)}
    _refuse_whole(ex.parted, nodes, outputs, locs)
    instances = [replace(i, inputs=tuple(map(ex.alias, i.inputs)), output=ex.alias(i.output))
                 for i in ex.instances]
    return FlatSpec(spec.name, {k: tuple(v) for k, v in spec.inputs.items()}, nodes,
                    outputs, ex.aliases, locs, instances, list(ex.reads.values()))


def _refuse_whole(parted: dict[str, list[str]], nodes: list[FlatNode], outputs: list[str],
                  locs: dict) -> None:
    """A node split into parts names no value: a reader must name one of its parts."""
    for node in nodes:
        for name in node.inputs:
            if name in parted:
                raise _whole("input", name, parted[name], node.loc, node.id, node.via)
    for name in outputs:
        if name in parted:
            raise _whole("output", name, parted[name], locs.get(name), None, ())


def _duplicate(name: str, loc, via: tuple) -> GraphError:
    return GraphError(f"duplicate id '{name}'", loc=loc, node=name, via=via,
                      hint="it is also the name of a block instance, a block call, a node "
                           "left out by `when:`, or a network input")


def _whole(what: str, name: str, parts: list[str], loc, node, via) -> GraphError:
    return GraphError(f"{what} '{name}' has several outputs; name one of its parts", loc=loc,
                      node=node, via=via, expected="one of: " + ", ".join(parts),
                      received=name, hint=f"e.g. `inputs: [{parts[0]}]`" if what == "input" else None)


MAX_IMPORT_DEPTH = 16  # block libraries importing block libraries


def self_contained_text(spec: NetworkSpec) -> str:
    """The spec's YAML with its imported block libraries inlined (its own blocks still win), so
    the text a compiled model carries checks again anywhere, without the files beside it."""
    if not spec.imports:
        return spec.to_yaml()
    blocks = {name: block for name, (block, _) in load_imports(spec).items()}
    return spec.model_copy(update={"imports": [], "blocks": {**blocks, **spec.blocks}}).to_yaml()


def load_imports(spec: NetworkSpec) -> dict[str, tuple[BlockDef, _Source]]:
    """Blocks from the files in `imports`, resolved against the spec's folder; a library may
    import others (resolved against its own folder). Each file is read once, so a library
    imported twice, or two that import each other, add their blocks once; a later file's
    block replaces an earlier one of the same name."""
    base = spec._path.parent if spec._path else Path(".")
    found: dict[str, tuple[BlockDef, _Source]] = {}
    seen: set[Path] = set()
    for i, name in enumerate(spec.imports):
        _import_library(base, name, spec.location(("imports", i)), found, seen, 0)
    return found


def _import_library(base: Path, name: str, loc, found: dict, seen: set, depth: int) -> None:
    path = base / name
    if not is_file(path):
        raise SpecError(f"imported block file '{name}' not found", loc=loc,
                        expected=f"a file at {path}")
    if path.resolve() in seen:
        return
    if depth >= MAX_IMPORT_DEPTH:
        raise SpecError("block libraries import each other too deeply", loc=loc,
                        expected=f"at most {MAX_IMPORT_DEPTH} levels")
    seen.add(path.resolve())
    located = load_yaml(read_text(path), str(path))
    data = located.data
    if not isinstance(data, dict) or not isinstance(data.get("blocks"), dict) \
            or set(data) - {"blocks", "imports"}:
        raise SpecError("a block library holds 'blocks' and, optionally, 'imports'",
                        loc=located.loc(()))
    imports = data.get("imports", [])
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise SpecError("'imports' is a list of file names", loc=located.loc(("imports",)))
    for j, inner in enumerate(imports):
        _import_library(path.parent, inner, located.loc(("imports", j)), found, seen, depth + 1)
    for bname, bdata in data["blocks"].items():
        found[bname] = (_validate_block(bdata, located, ("blocks", bname)),
                        _Source(located, ("blocks", bname)))


def _validate_block(data: Any, located: LocatedData, prefix: tuple) -> BlockDef:
    try:
        return BlockDef.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, located, prefix) from None


def part_names(items: list, ids: list[str]) -> set[str]:
    """The local names of the parts of nodes with several outputs (`s.0`, `s.1`, ...)."""
    return {f"{i}.{k}" for i, item in zip(ids, items) if isinstance(item, Layer)
            for k in range(len(item.parts()))}


def _substitute_node(raw: Any, values: dict, inputs: Inputs) -> Any:
    """Parameters into a raw node, except its `id`: a node may share a parameter's name
    (`{id: pool, op: maxpool3d, kernel: pool}`)."""
    if not isinstance(raw, dict):
        return substitute(raw, values, inputs)
    return {k: v if k == "id" else substitute(v, values, inputs) for k, v in raw.items()}


def size_of(value: Any, limit: int) -> int:
    """Values and string characters in `value` (nested lists and mappings), counted without
    recursion and only up to just past `limit`."""
    total, todo = 0, [value]
    while todo and total <= limit:
        item = todo.pop()
        total += 1 + (len(item) if isinstance(item, str) else 0)
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
    return total


@dataclass(frozen=True)
class _Skipped:
    """A block node whose `when:` condition is false: it adds nothing, and its id names the
    value before it (so an optional residual add leaves the block's output as it was)."""

    id: str | None
    op_name: str


def _condition(value: Any, written: Any) -> bool:
    """A block node's `when:` after substitution: it must have become true or false."""
    if not isinstance(value, bool):
        raise SpecError("when: needs a true/false expression over the block's params",
                        expected="say `stride == 1 and inp == out`", received=repr(written))
    return value


class _Expander:
    def __init__(self, blocks: dict[str, tuple[BlockDef, _Source]], inputs: dict[str, tuple]):
        self.blocks, self.nodes, self.aliases = blocks, [], {}
        self.counts: dict[str, int] = {}
        self.parted: dict[str, list[str]] = {}  # a node with several outputs -> its parts
        self.instances: list[BlockInstance] = []
        self.by_id: dict[str, FlatNode] = {}
        self.shapes = EarlyShapes(inputs, self.expanded, self.alias)
        self.reads: dict[str, ShapeRead] = {}  # by the value read: the first read of each
        self.network_inputs = set(inputs)
        self.instance_count = 0
        self.cost = 0  # spent of MAX_ARGUMENT_COST

    def expand(self, items: list, source: _Source, path: tuple, scope: tuple, names: dict,
               previous: str, via: tuple) -> str:
        """Expand `items` (Layer or BlockCall) in one scope; returns the last output id."""
        prefix = scope[-1] + "." if scope else ""
        local_ids = self.local_ids(items)
        local = set(local_ids) | part_names(items, local_ids)

        def resolve(name: str) -> str:  # block inputs, then this scope's ids, then global names
            return names.get(name) or (prefix + name if name in local else name)

        for i, item in enumerate(items):
            loc = source.located.loc(source.prefix + path + (i,)) if source.located else None
            node_id = prefix + local_ids[i]
            if isinstance(item, _Skipped):  # `when:` false: the id names the value before it
                self.name_value(node_id, previous, loc, via)
            elif isinstance(item, BlockCall):
                previous = self.call(item, node_id, resolve, previous, scope, loc, via)
            else:
                # `previous` is already a full id: only names written in the spec are resolved
                inputs = tuple(previous if n is _PREVIOUS else resolve(n)
                               for n in item.wiring(_PREVIOUS))
                self.add_layer(FlatNode(node_id, item, inputs, len(self.nodes), loc, via, scope))
                previous = node_id
        return previous

    def alias(self, name: str) -> str:
        """Follow block-instance names (`stage3`, `stage3.block2`) to the node they stand for."""
        for _ in range(MAX_BLOCK_DEPTH + 1):
            if name not in self.aliases:
                return name
            name = self.aliases[name]
        return name

    def local_ids(self, items: list) -> list[str]:
        """Explicit ids, and generated ones (`relu_3`) for nodes without one."""
        taken = {it.id for it in items if it.id}
        counts: dict[str, int] = {}
        out = []
        for it in items:
            if it.id:
                out.append(it.id)
                continue
            op = it.op_name
            n = counts.get(op, 0) + 1
            while f"{op}_{n}" in taken:
                n += 1
            counts[op] = n
            out.append(f"{op}_{n}")
        return out

    def add_layer(self, node: FlatNode) -> None:
        """The node, or one node per part (`s.0`, `s.1`, ...) of a node with several outputs."""
        parts = node.layer.parts()
        if not parts:
            return self.add(node)
        self.parted[node.id] = [f"{node.id}.{k}" for k in range(len(parts))]
        for name, layer in zip(self.parted[node.id], parts):
            self.add(replace(node, id=name, layer=layer, index=len(self.nodes)))

    def name_value(self, name: str, value: str, loc, via: tuple) -> None:
        """`name` (a block instance, a call, a skipped node) stands for `value`; it may be no
        other node's or instance's name (readers would silently get one of the two)."""
        if name in self.aliases or name in self.by_id or name in self.network_inputs:
            raise _duplicate(name, loc, via)
        self.aliases[name] = value

    def add(self, node: FlatNode) -> None:
        if node.id in self.aliases:
            raise _duplicate(node.id, node.loc, node.via)
        if len(self.nodes) >= MAX_NODES:
            raise SpecError("the spec expands to too many nodes", loc=node.loc, node=node.id,
                            expected=f"at most {MAX_NODES:,}", via=node.via)
        self.nodes.append(node)
        self.by_id.setdefault(node.id, node)

    def expanded(self, name: str) -> FlatNode | None:
        """The node expanded so far that `name` (resolved) names, for EarlyShapes."""
        if name in self.parted:
            raise _whole("input", name, self.parted[name], None, None, ())
        return self.by_id.get(name)

    def readers(self, names: dict[str, str], loc, inst: str, via: tuple) -> Inputs:
        """For each block input name, what `x.channels` reads: its value's channel count,
        recorded (flatten's FlatSpec.reads) for the checker to confirm at every size."""
        def reader(full: str):
            def channels() -> int:
                value = self.shapes.channels(full)
                resolved = self.alias(full)
                self.reads.setdefault(resolved, ShapeRead(resolved, value, loc, inst, via))
                return value
            return channels
        return {name: reader(full) for name, full in names.items()}

    def call(self, item: BlockCall, call_id: str, resolve, previous: str, scope: tuple,
             loc: Location | None, via: tuple) -> str:
        if item.block not in self.blocks:
            from ..errors import nearest
            raise SpecError(f"unknown block '{item.block}'" + (f"; {nearest(item.block, self.blocks)}"
                            if nearest(item.block, self.blocks) else ""), loc=loc, node=call_id,
                            expected="one of: " + ", ".join(sorted(self.blocks)) if self.blocks else "a block defined under 'blocks' or imported")
        if len(scope) >= MAX_BLOCK_DEPTH:
            raise SpecError("blocks nest too deeply (does a block use itself?)", loc=loc,
                            node=call_id, expected=f"at most {MAX_BLOCK_DEPTH} levels")
        block, source = self.blocks[item.block]
        repeat = self.count(item, call_id, loc)
        inputs = [resolve(n) for n in item.inputs] if item.inputs else [previous]
        numbered = "repeat" in item.model_fields_set  # the one naming rule (module docstring)
        outer = scope + ((call_id,) if numbered else ())  # `stage3` folds its instances
        self.name_value(call_id, inputs[0], loc, via)  # claimed first; its value is set below
        for k in range(repeat):
            inst = f"{call_id}.block{k}" if numbered else call_id
            args = self.call_args(item, k, inst, loc, via)
            out = self.instance(block, source, inst, args, inputs, outer, via + ((loc,) if loc else ()), item, loc,
                                call_id)
            if numbered:
                self.name_value(inst, out, loc, via)
            inputs = [out]
        self.aliases[call_id] = inputs[0]
        return inputs[0]

    def call_args(self, item: BlockCall, k: int, inst: str, loc, via: tuple) -> dict:
        """Arguments of instance k; top-level args may be arithmetic (`(64 + 6 * 32) // 2`)
        (inside a block they were already substituted with the enclosing block's params)."""
        try:
            return self.spent(substitute({**item.args, **(item.first if k == 0 else {})}, {}))
        except GraphCnnError as exc:
            raise exc.at(loc, inst, via) from None

    def spent(self, value: Any) -> Any:
        """Count `value` against MAX_ARGUMENT_COST (the caller locates the error)."""
        self.cost += size_of(value, MAX_ARGUMENT_COST - self.cost)
        if self.cost > MAX_ARGUMENT_COST:
            raise SpecError("block arguments and fields are too large for this many instances",
                            expected=f"at most {MAX_ARGUMENT_COST:,} values and characters "
                                     "substituted in all",
                            hint="pass a large value to fewer instances")
        return value

    def count(self, item: BlockCall, call_id: str, loc) -> int:
        repeat = substitute(item.repeat, {}) if isinstance(item.repeat, str) else item.repeat
        if isinstance(repeat, bool) or not isinstance(repeat, int) or not 0 <= repeat <= MAX_NODES:
            raise SpecError("repeat must be a whole number, 0 or more", loc=loc, node=call_id,
                            received=repr(item.repeat))
        if repeat == 0 and item.inputs and len(item.inputs) > 1:  # which input passes through?
            raise SpecError("repeat: 0 passes its input through, so it takes one input",
                            loc=loc, node=call_id, received=f"inputs {list(item.inputs)}")
        return repeat

    def instance(self, block: BlockDef, source: _Source, inst: str, args: dict, inputs: list[str],
                 scope: tuple, via: tuple, item: BlockCall, loc, call_id: str) -> str:
        self.instance_count += 1
        if self.instance_count > MAX_INSTANCES:
            raise SpecError("the spec expands to too many block instances", loc=loc, node=inst,
                            expected=f"at most {MAX_INSTANCES:,}", via=via)
        unknown = set(args) - set(block.params)
        if unknown:
            raise SpecError(f"block '{item.block}' has no parameter '{sorted(unknown)[0]}'", loc=loc,
                            node=inst, expected="one of: " + ", ".join(block.params))
        if len(inputs) != len(block.inputs):
            raise SpecError(f"block '{item.block}' takes {len(block.inputs)} inputs", loc=loc,
                            node=inst, received=f"{len(inputs)}: {inputs}")
        values = {**block.params, **args}
        names = dict(zip(block.inputs, inputs))
        items = [self.validate(raw, values, source, j, inst, via, names)
                 for j, raw in enumerate(block.nodes)]
        record = BlockInstance(inst, call_id, item.block, args, values, tuple(inputs), "",
                               dict(zip(self.local_ids(items), block.nodes)), block)
        self.instances.append(record)  # before the nested calls: parents come first
        at = len(self.instances) - 1
        last = self.expand(items, source, ("nodes",), scope + (inst,), names, inputs[0], via)
        out = f"{inst}.{block.outputs[0]}" if block.outputs else last
        self.instances[at] = replace(record, output=out)
        return out

    def validate(self, raw: Any, values: dict, source: _Source, j: int, inst: str, via: tuple,
                 names: dict[str, str]):
        """Substitute the block's parameters (and its inputs' channel counts, `x.channels`)
        into one raw node and validate it. The op is checked after substitution: `op:` may
        name a parameter (an activation per stage)."""
        path = source.prefix + ("nodes", j)
        located = source.located
        try:
            loc = located.loc(path) if located else None
            node = self.spent(_substitute_node(raw, values, self.readers(names, loc, inst, via)))
            if isinstance(node, dict) and "when" in node:
                if not _condition(node.pop("when"), raw["when"]):
                    return _Skipped(node.get("id"), str(node.get("op") or "block"))
            check_op(node, located, path)
            return node_adapter().validate_python(node)
        except ValidationError as exc:
            err = validation_error(exc, located, path)
            err.node = f"{inst}.{err.node}" if err.node else inst
            raise err.at(None, None, via) from None
        except GraphCnnError as exc:
            raise exc.at(located.loc(path) if located else None, inst, via) from None
