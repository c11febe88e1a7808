"""Carried tensors updated in place: a parameter's (or optimizer moment's, statistic's) new
value written over the old one, so that a step holds one copy of them instead of two.

StepRunner binds the output `<name>.new` to the buffer of the input `<name>` when that is safe
whatever order onnxruntime runs the nodes in: the node writing `<name>.new` (the writer) must
run after every other node that reads `<name>`, and read it, if at all, element by element
(out[i] from in[i], as Sub(p, lr * g) does). Only data dependencies order a graph, so:

- gate_late_readers: a reader that the writer does not already depend on (a conv's weight is
  read by its input gradient's flipped filter, which the weight's own gradient never needs)
  is made an ancestor of the writer through the learning rate (tensors of GATED_FROM
  elements and more): the update's `lr` becomes Where(Greater(s, +inf), lr, lr), always lr,
  with s one element of each value where the tensor's use meets the batch's data (the input
  gradient conv's output, not the flipped filter itself: onnxruntime's optimizer moves and
  copies Transposes of a weight, which then no longer feed the gate); a few scalar ops per
  parameter, nothing full-size read or written again;
- in_place_names: which carried names a graph lets StepRunner update in place. It is checked
  twice: on the step model, and on the graph onnxruntime's optimizer made of it, which is
  what runs (executed_in_place); a name that fails either keeps two buffers, read one, write
  the other.

A Reshape, Flatten, Squeeze, Unsqueeze or Identity of a carried tensor is a view of its buffer
(onnxruntime aliases them), so the readers of a view read the tensor. A step that fails midway
leaves in-place tensors partly updated: training stops there anyway.
"""
from __future__ import annotations

import tempfile
from collections import defaultdict
from contextlib import contextmanager
from heapq import heapify, heappop, heappush
from pathlib import Path

# ops onnxruntime runs as views of their input's buffer (train/memory.py plans them so too)
VIEWS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Where", "Max", "Min"})
HUB = "loss"  # the step's loss: the forward pass is upstream of it, every update downstream


class Flow:
    """Who makes and who reads each value of a node list, and which nodes precede which."""

    def __init__(self, nodes: list, constants=frozenset()):
        self.constants = set(constants)
        self.producer, self.readers = links(nodes)
        ordered = topological(nodes, {id(n): float(i) for i, n in enumerate(nodes)})
        self.position = {id(n): i for i, n in enumerate(ordered)}
        hub = self.producer.get(HUB)
        self.before_hub = self.ancestors(hub) | {id(hub)} if hub is not None else set()
        self.after_hub = self.descendants(hub) | {id(hub)} if hub is not None else set()

    def ancestors(self, node) -> set[int]:
        """ids of the nodes `node` depends on."""
        seen, stack = set(), [node]
        while stack:
            for value in stack.pop().input:
                made_by = self.producer.get(value)
                if made_by is not None and id(made_by) not in seen:
                    seen.add(id(made_by))
                    stack.append(made_by)
        return seen

    def descendants(self, node) -> set[int]:
        """ids of the nodes that depend on `node`."""
        seen, stack = set(), [node]
        while stack:
            for value in stack.pop().output:
                for reader in self.readers[value]:
                    if id(reader) not in seen:
                        seen.add(id(reader))
                        stack.append(reader)
        return seen

    def precedes(self, first, then) -> bool:
        """Whether `then` depends on `first`. Through the loss when the forward pass reads it
        and the update comes after the loss; else searched back from `then` among the nodes
        sorted after `first` (no path from `first` passes an earlier node)."""
        if id(first) in self.before_hub and id(then) in self.after_hub:
            return True
        floor, seen, stack = self.position[id(first)], set(), [then]
        while stack:
            for value in stack.pop().input:
                made_by = self.producer.get(value)
                if made_by is first:
                    return True
                if made_by is not None and id(made_by) not in seen \
                        and self.position[id(made_by)] > floor:
                    seen.add(id(made_by))
                    stack.append(made_by)
        return False

    def reads(self, name: str) -> list:
        """The nodes that read `name`'s buffer: its readers, through views of it."""
        found, values = [], [name]
        while values:
            for node in self.readers[values.pop()]:
                if node.op_type in VIEWS:
                    values.extend(node.output)
                else:
                    found.append(node)
        return found

    def late_readers(self, name: str, writer) -> list:
        """Readers of `name` that `writer` does not depend on (itself excluded)."""
        return [n for n in self.reads(name) if n is not writer and not self.precedes(n, writer)]

    def meeting_data(self, name: str, start) -> list:
        """Where `name`'s use from node `start` meets other runtime values: the nodes reached
        from `start` through nodes whose every input is `name`, derived from it alone, or a
        constant, plus the first node past them that reads something else (the input gradient
        conv of a flipped filter); `start` itself when it reads other data."""
        derived, met, stack, seen = {name}, [], [start], set()
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if not all(v in derived or v in self.constants or v == "" or self._viewed(v, derived)
                       for v in node.input):
                met.append(node)
                continue
            derived.update(node.output)
            followers = [r for v in node.output for r in self.readers[v]]
            if not followers:
                met.append(node)  # a graph output made from the tensor alone
            stack.extend(followers)
        return met

    def _viewed(self, value: str, derived: set) -> bool:
        made_by = self.producer.get(value)
        return made_by is not None and made_by.op_type in VIEWS and made_by.input[0] in derived \
            and all(v in self.constants for v in made_by.input[1:])


# Elements from which a tensor with late readers is gated: the gate's six scalar nodes cost
# onnxruntime a few microseconds each per step, which a small tensor's second buffer does not
# repay (MNIST-1D's whole step is about 2 ms); ungated, it keeps two buffers.
GATED_FROM = 1 << 14


def gate_late_readers(g, nodes: list, carried: dict[str, int], lr: str) -> list:
    """`nodes` (topologically sorted) with the late readers of each carried tensor (name ->
    elements) of at least GATED_FROM elements made ancestors of its writer through a gated
    learning rate, sorted again; g makes the new nodes."""
    flow, start = Flow(nodes, g.constants), len(g.nodes)
    order = {id(n): float(i) for i, n in enumerate(nodes)}
    for name in (n for n, size in carried.items() if size >= GATED_FROM):
        writer = flow.producer.get(f"{name}.new")
        if writer is None or writer.op_type not in ELEMENTWISE:
            continue
        late = flow.late_readers(name, writer)
        # lr's readers as first built: one rewired for an earlier tensor reads its gate now,
        # and rewiring it again changes nothing (in_place_names then finds the late reader)
        rate = [n for n in flow.readers[lr] if flow.precedes(n, writer)]
        if late and rate:
            met = {id(n): n for r in late for n in flow.meeting_data(name, r)}.values()
            g.begin(name, "in_place/")
            made = len(g.nodes)
            gated = g.op("Where", [after(g, [n.output[0] for n in met]), lr, lr])
            for node in rate:
                node.input[:] = [gated if v == lr else v for v in node.input]
            # placed just before the update they gate, not after the whole backward pass
            first = min(order[id(n)] for n in rate)
            gate = g.nodes[made:]
            order.update({id(n): first - 1 + (i + 1) / (len(gate) + 1) for i, n in enumerate(gate)})
    return topological(nodes + g.nodes[start:], order)


def after(g, values: list[str]) -> str:
    """A boolean scalar, always false, computed from one element of each value."""
    firsts = [g.op("Cast", [g.op("Slice", [g.op("Reshape", [v, g.ints([-1])]), g.ints([0]),
                                            g.ints([1])])], to=g.FLOAT) for v in values]
    joined = firsts[0] if len(firsts) == 1 else g.op("Concat", firsts, axis=0)
    # NaN > inf and inf > inf are false too: the gate never changes lr, whatever the value
    return g.op("Greater", [g.op("ReduceSum", [joined], keepdims=0), g.scalar(float("inf"))])


def links(nodes: list) -> tuple[dict, defaultdict]:
    """({value: the node that makes it}, {value: the nodes that read it})."""
    producer = {v: n for n in nodes for v in n.output}
    readers = defaultdict(list)
    for node in nodes:
        for value in node.input:
            readers[value].append(node)
    return producer, readers


def topological(nodes: list, order: dict[int, float]) -> list:
    """The nodes in an order where each comes after the makers of its inputs, as close to
    `order` (id -> key) as that allows (Kahn's algorithm, smallest key first)."""
    producer, readers = links(nodes)
    by_id = {id(n): n for n in nodes}
    waiting = {id(n): sum(v in producer for v in n.input) for n in nodes}
    ready = [(order[id(n)], id(n)) for n in nodes if waiting[id(n)] == 0]
    heapify(ready)
    ordered = []
    while ready:
        node = by_id[heappop(ready)[1]]
        ordered.append(node)
        for value in node.output:
            for reader in readers[value]:
                waiting[id(reader)] -= 1
                if waiting[id(reader)] == 0:
                    heappush(ready, (order[id(reader)], id(reader)))
    if len(ordered) != len(nodes):
        raise AssertionError("the step's nodes form a cycle")
    return ordered


def in_place_names(nodes: list, carried: list[str]) -> list[str]:
    """The carried names whose `<name>.new` can be written over `<name>` (module docstring)."""
    flow, safe = Flow(list(nodes)), []
    for name in carried:
        writer = flow.producer.get(f"{name}.new")
        if writer is None or writer.op_type not in ELEMENTWISE:
            continue  # unchanged (an Identity of the input) or not element by element
        if any(v != name and flow.producer.get(v) is not None
               and name in flow.producer[v].input and flow.producer[v].op_type in VIEWS
               for v in writer.input):
            continue  # reads a view of it: same buffer, other indexing
        if not flow.late_readers(name, writer):
            safe.append(name)
    return safe


@contextmanager
def optimized_graph_file():
    """A path for onnxruntime to write the graph its optimizer made (SessionOptions'
    optimized_model_filepath), removed afterwards."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / "executed.onnx"


def executed_in_place(path: Path, names: list[str]) -> set[str]:
    """`names` that stay safe in the graph onnxruntime wrote to `path` (none if it wrote
    nothing readable)."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except (OSError, ValueError, onnx.onnx_cpp2py_export.checker.ValidationError):
        return set()
    return set(in_place_names(graph.node, names))
