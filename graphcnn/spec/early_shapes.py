"""Shapes while blocks expand: a block expression may read its input's channel count
(`channels: x.channels * 4`), so the block need not be told its own input width.

The nodes expanded so far are shape-inferred on demand, with the layers' own shape rules, at
the spec's input sizes (a symbolic spatial size, `[3, H, W]`, at the smallest size in
PROBE_SIZES that the nodes read from fit). What expansion read is recorded (ShapeRead) and
checked again wherever shapes are propagated (graph/propagate.py), so a size sweep or
`--dynamic` at another input size cannot silently reuse a count that changed with the size.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import GraphCnnError, Location, SpecError
from ..layers import Layer

PROBE_SIZES = range(1, 1101)  # where a symbolic input's size is looked for (as the checker)


@dataclass(frozen=True)
class ShapeRead:
    """A block expression read `channels` of the value `node` (an instance's input)."""

    node: str
    channels: int
    loc: Location | None
    instance: str
    via: tuple[Location, ...] = ()


@dataclass(frozen=True)
class Inferred:
    """What a shape rule reads of an input node (Layer.infer_with's `sources`: the part of
    graph/checked.py's NodeInfo known before the graph is checked)."""

    layer: Layer
    in_shapes: tuple
    shape: tuple

    @property
    def op(self) -> str:
        return self.layer.op_name


class EarlyShapes:
    """Output shapes of network inputs and expanded nodes. `node(name)` gives the expanded
    FlatNode a (resolved) name stands for, or None; `resolve` follows block-instance aliases."""

    def __init__(self, inputs: dict[str, tuple], node: Callable[[str], Any],
                 resolve: Callable[[str], str]):
        self.inputs, self.node, self.resolve = inputs, node, resolve
        self.symbolic = any(isinstance(d, str) for s in inputs.values() for d in s[1:])
        self.known: dict[int | None, dict[str, Inferred]] = {}  # per probe size
        self.probe: int | None = None  # the symbolic size that fitted last

    def channels(self, name: str) -> int:
        """The size of axis 1 (channels, or features of [N, F]) of value `name`."""
        name = self.resolve(name)
        if name in self.inputs:
            return self._input_channels(name)
        if not self.symbolic:
            return self._infer(name, None)[0]
        for n in dict.fromkeys(n for n in (self.probe, *PROBE_SIZES) if n is not None):
            try:
                shape = self._infer(name, n)
            except GraphCnnError:
                self.known.pop(n, None)
                continue
            self.probe = n
            return shape[0]
        raise SpecError(f"cannot read the channels of '{name}': no input size in "
                        f"{PROBE_SIZES.start}..{PROBE_SIZES.stop - 1} fits the nodes before it")

    def _input_channels(self, name: str) -> int:
        channels = self.inputs[name][0]
        if not isinstance(channels, int):
            raise SpecError(f"cannot read the channels of input '{name}': they are symbolic",
                            received=str(list(self.inputs[name])))
        return channels

    def _sizes(self, n: int | None) -> dict[str, tuple]:
        """The network input shapes, symbolic spatial sizes at n."""
        return {k: tuple(n if isinstance(d, str) and i else d for i, d in enumerate(s))
                for k, s in self.inputs.items()}

    def _infer(self, name: str, n: int | None) -> tuple:
        """Shape of `name`, inferring its not yet inferred ancestors first (no recursion:
        a chain may be thousands of nodes long)."""
        known, inputs = self.known.setdefault(n, {}), self._sizes(n)
        stack, visiting = [name], set()
        while stack:
            top = stack[-1]
            if top in known or top in inputs:
                stack.pop()
                continue
            node = self._expanded(top)
            missing = [i for i in map(self.resolve, node.inputs)
                       if i not in known and i not in inputs]
            if missing and top not in visiting:
                visiting.add(top)
                stack.extend(missing)
                continue
            if missing:
                raise SpecError(f"cannot read the channels of '{name}': its nodes form a "
                                f"cycle through '{top}'")
            known[top] = self._one(node, inputs, known)
            stack.pop()
        return inputs[name] if name in inputs else known[name].shape

    def _expanded(self, name: str):
        node = self.node(name)
        if node is None:
            raise SpecError(f"cannot read the channels of '{name}': no node of that name "
                            "is expanded before this block (one defined later cannot be read)")
        return node

    def _one(self, node, inputs: dict[str, tuple], known: dict[str, Inferred]) -> Inferred:
        names = [self.resolve(i) for i in node.inputs]
        shapes = [inputs[i] if i in inputs else known[i].shape for i in names]
        sources = [known.get(i) for i in names]
        try:
            out = tuple(node.layer.infer_with(shapes, sources))
        except GraphCnnError as exc:
            raise exc.at(node.loc, node.id, node.via) from None
        return Inferred(node.layer, tuple(shapes), out)
