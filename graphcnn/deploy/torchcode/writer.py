"""One scope (the network or a block instance) as code: the lines of its `__init__` (a module
per node with parameters, a block class per nested call) and of its `forward` (one line per
node, named after the node's id), with every value a block param gave written as the param's
expression (symbolic.py). Block classes are chosen in classes.py."""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import GraphCnnError
from .code import Code, Namer, join, last_word, value_code
from .emit import Helpers, NodeEmit
from .modules import access, init_lines
from .scopes import Call, Scope
from .code import Sym
from .symbolic import (channel_shape, infer_symbolic, symbolic, symbolic_layer, translate_shape,
                       with_shapes)


@dataclass
class Rendered:
    """A scope's code: `params` are its forward's parameter names; `env` the (symbolic)
    shape of each value it makes or reads, in its own terms."""

    init: list[Code]
    forward: list[Code]
    params: list[str]
    env: dict
    channels: dict  # channel param -> its value in this instance


def channel_names(inputs: list[str]) -> list[str]:
    """The class params holding each block input's channel count."""
    return ["in_channels"] if len(inputs) == 1 else [f"{name}_channels" for name in inputs]


def call_args(raw, first: bool) -> dict:
    """A block call's args as written (a node dict in a block, a BlockCall at the top)."""
    get = raw.get if isinstance(raw, dict) else (lambda key, default: getattr(raw, key, default))
    return {**(get("args", None) or {}), **((get("first", None) or {}) if first else {})}


class Writer:
    """Renders scopes; `classes` (classes.BlockClasses) names the class of each instance."""

    def __init__(self, checked, helpers: Helpers, wanted: set, top_raw: dict):
        self.checked, self.helpers, self.wanted, self.top_raw = checked, helpers, wanted, top_raw
        self.classes = None
        self.done: dict[int, Rendered] = {}

    def shape(self, key) -> tuple:
        return self.checked.shape_of(key)

    def source(self, key):
        return None if key in self.checked.inputs else self.checked.node(key)

    def render(self, scope: Scope) -> Rendered:
        if id(scope) not in self.done:
            self.done[id(scope)] = _ScopeWriter(self, scope).render()
        return self.done[id(scope)]


class _ScopeWriter:
    def __init__(self, writer: Writer, scope: Scope):
        self.w, self.scope = writer, scope
        inst = scope.instance
        self.values = inst.values if inst else {}
        self.raw = inst.raw if inst else writer.top_raw
        self.names = Namer()
        self.vars: dict = {}
        self.env: dict = {}
        self.modules: list[tuple[list[str], Code]] = []  # (path, module) per module made
        self.forward: list[Code] = []
        self.loop_var: str | None = None
        self.input_names, self.input_keys = [], ()
        self.channels: dict = {}  # block input name -> (its channels, their class param)

    def render(self) -> Rendered:
        params = self.parameters()
        for item in self.scope.items:
            if isinstance(item, Call):
                self.call(item)
            else:
                self.node(item)
        returns = self.scope.exports if self.scope.instance else list(self.w.checked.outputs)
        self.forward.append(Code(("return " + ", ".join(self.vars[k] for k in returns),)))
        channels = {name: count for count, name in self.channels.values()}
        return Rendered(init_lines(self.modules), self.forward, params, self.env, channels)

    def parameters(self) -> list[str]:
        """Block inputs (their channels are the class's channel params) and imports; for the
        network, its inputs."""
        inst = self.scope.instance
        if inst is None:
            pairs = [(name, name, None) for name in self.w.checked.inputs]
        else:
            names = inst.definition.inputs
            pairs = list(zip(names, inst.inputs, channel_names(names)))
            self.input_names, self.input_keys = names, inst.inputs
            self.channels = {name: (self.w.shape(key)[0], channel)
                             for name, key, channel in zip(names, inst.inputs, channel_names(names))}
        params = []
        for name, key, channels in pairs:
            params.append(self.bind(key, name))
            shape = self.w.shape(key)
            self.env.setdefault(key, channel_shape(shape, channels) if channels else shape)
        for key in self.scope.imports:
            params.append(self.bind(key, self.key_name(key)))
            if not isinstance(key, tuple):
                self.env[key] = self.w.shape(key)
        return params

    def bind(self, key, name: str) -> str:
        var = self.names(name)
        self.vars.setdefault(key, var)
        return var

    def key_name(self, key) -> str:
        """A variable name for a value from elsewhere: a kept value of an input is named
        after the input (`pool_indices`), so every instance of a block names it alike."""
        if isinstance(key, tuple):
            named = [n for n, k in zip(self.input_names, self.input_keys) if k == key[0]]
            owner = named[-1] if named else self.scope.local(key[0])  # [x, pool]: pool's
            return f"{owner}_{last_word(key[1])}"
        return self.scope.local(key)

    def node(self, node) -> None:
        local = self.scope.local(node.id)
        raw = self.raw.get(local) or self.raw.get(local.rsplit(".", 1)[0])  # part s.0: `s`
        layer = symbolic_layer(node.layer, raw, self.values, self.channels) \
            if self.scope.instance else node.layer
        shapes = [self.env.get(k, self.w.shape(k)) for k in node.inputs]
        sources = [self.w.source(k) for k in node.inputs]
        out = infer_symbolic(layer, node, shapes, sources)
        xs = [Code((self.vars[k],)) for k in node.inputs]
        emit = NodeEmit(with_shapes(node, layer, shapes, out), xs, access(local.split(".")),
                        self.w.helpers, self.w.wanted, self.vars, sources)
        try:
            expr = layer.torch(emit.node, emit)
        except GraphCnnError as exc:
            raise exc.at(node.loc, node.id, node.via) from None
        if emit.init is not None:
            self.modules.append((local.split("."), emit.init))
        targets = [self.bind(node.id, local)]
        if emit.keeps is not None:
            targets.append(self.bind((node.id, emit.keeps), f"{local}_{last_word(emit.keeps)}"))
        self.env[node.id] = out
        self.forward.append(Code((", ".join(targets) + " = ",)) + expr)

    def call(self, call: Call) -> None:
        local = self.scope.local(call.id)
        paths = [local.split(".") + ([f"block{k}"] if call.numbered else [])
                 for k in range(len(call.instances))]
        made = [self.construct(inner, call, k) for k, inner in enumerate(call.instances)]
        repeated = self.repeated(call, made)
        if repeated is not None:
            self.modules.append((local.split("."), repeated))
        else:
            self.modules.extend(zip(paths, made))
        if self.loops(call, local):
            return self.loop(call, access(local.split(".")), local)
        for k, (inner, path) in enumerate(zip(call.instances, paths)):
            last = k == len(call.instances) - 1
            self.run(inner, access(path), local if last else ".".join(path))

    def repeated(self, call: Call, made: list[Code]) -> Code | None:
        """A numbered call whose instances after the first are made alike, as one ModuleDict
        built in a loop, when the count is a block param (so instances of the block with
        other counts share the class) or the stage is long; else None (listed one by one)."""
        if not call.numbered or len(made) < 2 or any(m != made[1] for m in made[2:]):
            return None
        raw = self.raw.get(self.scope.local(call.id))
        written = raw.get("repeat") if isinstance(raw, dict) else getattr(raw, "repeat", None)
        count = symbolic(len(made), written, self.values, self.channels)
        if not isinstance(count, Sym) and len(made) < 4:
            return None
        i = "i"
        while i in self.values:
            i += "_"
        every = Code((f'{{f"block{{{i}}}": ',)) + made[1] + f" for {i} in range("
        if made[0] == made[1]:
            return Code(("nn.ModuleDict(",)) + every + value_code(count) + ")})"
        first = Code(('nn.ModuleDict({\n    "block0": ',)) + made[0] + ",\n    **" + every
        return first + "1, " + value_code(count) + ")},\n})"

    def construct(self, inner: Scope, call: Call, k: int) -> Code:
        """`ClassName(channels..., param=value...)` in this scope's terms."""
        info = self.w.classes.class_of(inner)
        mapping = self.mapping(inner, call, k)
        chans = [value_code(mapping[name]) for name in info.channels]
        given = [p for p in info.params if p in inner.instance.args]
        kwargs = [f"{info.python(p)}=" + value_code(mapping[p]) for p in given]
        return Code((info.name + "(",)) + join(chans + kwargs) + ")"

    def mapping(self, inner: Scope, call: Call, k: int) -> dict:
        """Each name of the inner block (params, channel params) -> its value here."""
        inst = inner.instance
        raw = call_args(self.raw.get(self.scope.local(call.id), {}), call.numbered and k == 0)
        out = {p: symbolic(inst.args[p], raw.get(p), self.values, self.channels)
               if p in inst.args else v for p, v in inst.values.items()}
        for name, key in zip(channel_names(inst.definition.inputs), inst.inputs):
            out[name] = self.env.get(key, self.w.shape(key))[0]
        return out

    def run(self, inner: Scope, module: str, name: str) -> None:
        """`outputs = self.<block>(inputs)`; its exports become this scope's values."""
        args = [self.vars[k] for k in inner.instance.inputs + tuple(inner.imports)]
        targets = [self.bind(k, name if k == inner.instance.output else self.key_name(k))
                   for k in inner.exports]
        self.forward.append(Code((f"{', '.join(targets)} = {module}({', '.join(args)})",)))
        self.adopt(inner)

    def adopt(self, inner: Scope) -> None:
        """The shapes of the inner scope's exports, in this scope's terms."""
        rendered = self.w.render(inner)
        call = next(c for c in self.scope.calls if inner in c.instances)
        mapping = self.mapping(inner, call, call.instances.index(inner))
        for key in inner.exports:
            if key in rendered.env:  # a node's value (a kept one, pool indices, has no shape)
                self.env[key] = translate_shape(rendered.env[key], mapping)

    def loops(self, call: Call, local: str) -> bool:
        """A chain of single-input instances each read only by the next, alone in their
        ModuleDict: a for loop."""
        chain = call.instances
        if not call.numbered or len(chain) < 2 or any(
                len(s.instance.inputs) != 1 or s.imports or s.exports != [s.instance.output]
                for s in chain) or self.shares(call, local):
            return False
        readers = self.w.readers
        outputs = set(self.w.checked.outputs)
        return all(s.instance.output not in outputs and all(
            r.startswith(nxt.prefix) for r in readers.get(s.instance.output, ()))
            for s, nxt in zip(chain, chain[1:]))

    def shares(self, call: Call, local: str) -> bool:
        """Whether another item's id also starts with the call's (a dotted `stage1.extra`)."""
        ids = [self.scope.local(i.id) for i in self.scope.items if i is not call]
        return any(i == local or i.startswith(local + ".") for i in ids)

    def loop(self, call: Call, here: str, local: str) -> None:
        self.loop_var = self.loop_var or self.names("block")
        var, block = self.names(local), self.loop_var
        start = self.vars[call.instances[0].instance.inputs[0]]
        self.forward.append(Code((f"{var} = {start}\nfor {block} in {here}.values():\n"
                                  f"    {var} = {block}({var})",)))
        last = call.instances[-1]
        self.vars[last.instance.output] = var
        self.adopt(last)
