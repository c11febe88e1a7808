"""Carried tensors updated in place: a parameter's (or optimizer moment's, statistic's) new
value written over the old one, so that a step holds one copy of them instead of two.

StepRunner binds the output `<name>.new` to the buffer of the input `<name>` when that is safe
whatever order onnxruntime runs the nodes in: the node writing `<name>.new` (the writer) must
run after every other node that reads `<name>`, and read it, if at all, element by element
(out[i] from in[i], as Sub(p, lr * g) does). Only data dependencies order a graph, so:

- gate_late_readers: a reader that the writer does not already depend on (a conv's weight is
  read by its input gradient's flipped filter, which the weight's own gradient never needs)
  is made an ancestor of the writer through the learning rate (tensors of GATED_FROM
  elements and more): the update's `lr` becomes
  Where(Greater(s, +inf), lr, lr), always lr, with s one element of each such reader's output
  (a few scalar ops per parameter; nothing full-size is read or written again);
- in_place_names: which carried names the final step model (after the precision rewrite)
  lets StepRunner update in place; the others keep two buffers, read one, write the other.

A Reshape, Flatten, Squeeze, Unsqueeze or Identity of a carried tensor is a view of its buffer
(onnxruntime aliases them), so the readers of a view read the tensor. onnxruntime's own rewrites
(the NCHWc layout, fusions) keep every value its readers' results depend on upstream of them.
A step that fails midway leaves in-place tensors partly updated: training stops there anyway.
"""
from __future__ import annotations

from collections import defaultdict
from heapq import heapify, heappop, heappush

VIEWS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Where", "Max", "Min"})


class Flow:
    """Who makes and who reads each value of a node list."""

    def __init__(self, nodes: list):
        self.producer = {v: n for n in nodes for v in n.output}
        self.readers = defaultdict(list)
        for node in nodes:
            for value in node.input:
                self.readers[value].append(node)

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
        before = self.ancestors(writer)
        return [n for n in self.reads(name) if n is not writer and id(n) not in before]


# Elements from which a tensor with late readers is gated: the gate's six scalar nodes cost
# onnxruntime a few microseconds each per step, which a small tensor's second buffer does not
# repay (MNIST-1D's whole step is about 2 ms); ungated, it keeps two buffers.
GATED_FROM = 1 << 14


def gate_late_readers(g, nodes: list, carried: dict[str, int], lr: str) -> list:
    """`nodes` (topologically sorted) with the late readers of each carried tensor (name ->
    elements) of at least GATED_FROM elements made ancestors of its writer through a gated
    learning rate, sorted again; g makes the new nodes."""
    flow, start = Flow(nodes), len(g.nodes)
    order = {id(n): float(i) for i, n in enumerate(nodes)}
    for name in (n for n, size in carried.items() if size >= GATED_FROM):
        writer = flow.producer.get(f"{name}.new")
        if writer is None or writer.op_type not in ELEMENTWISE:
            continue
        late = flow.late_readers(name, writer)
        before = flow.ancestors(writer)
        rate = [n for n in nodes if id(n) in before and lr in n.input]
        if late and rate:
            g.begin(name, "in_place/")
            made = len(g.nodes)
            gated = g.op("Where", [after(g, [n.output[0] for n in late]), lr, lr])
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


def topological(nodes: list, order: dict[int, float]) -> list:
    """The nodes in an order where each comes after the makers of its inputs, as close to
    `order` (id -> key) as that allows (Kahn's algorithm, smallest key first)."""
    flow = Flow(nodes)
    by_id = {id(n): n for n in nodes}
    waiting = {id(n): sum(v in flow.producer for v in n.input) for n in nodes}
    ready = [(order[id(n)], id(n)) for n in nodes if waiting[id(n)] == 0]
    heapify(ready)
    ordered = []
    while ready:
        node = by_id[heappop(ready)[1]]
        ordered.append(node)
        for value in node.output:
            for reader in flow.readers[value]:
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
