"""Memory before running: activation bytes per value at a batch size, the peak of one inference
pass as onnxruntime's CPU provider plans it, and weight bytes per precision.

The plan follows what onnxruntime (1.32, CPU provider, its default memory pattern) does with
the compiled model, from what each layer knows of its lowering (the `in_place`, `workspace`,
`blocked`, ... facts of layers/base.py); docs/benchmarks.md compares it with the block
onnxruntime asks for, shipped spec by shipped spec:
- order: a reverse depth-first walk from the nodes nobody reads, each node's inputs visited
  latest-written first, a node run once its inputs are (onnxruntime's default order, which
  runs a crop right after the map it crops, not where the spec writes it);
- values: each node's result, the temporaries of its lowering, the values it keeps for a later
  node (a pool's indices) and a copy wherever a value passes between a node that onnxruntime
  runs in its channel-blocked layout (NCHWc, channels padded to a whole block) and a plain one;
- buffers: a result takes over its first input's buffer when that input is read for the last
  time there and has its size, else a freed buffer of exactly its shape (the most recently
  freed first), else a new one; a conv whose result only an add reads (through batch norms
  folded into it) writes the sum into the add's other input, and has no buffer of its own;
- the block: onnxruntime records the first run's buffers and places each, from its first to
  its last use (a reused buffer keeps its place in between), in the smallest hole between the
  buffers alive then, or after the last; each later run asks for that block at once.
The peak is that block plus the graph inputs (the caller's arrays) and outputs (allocated
apart); every activation is fp32.
"""
from __future__ import annotations

from dataclasses import dataclass

from .layers.base import product

FP32 = 4
ALIGN = 64  # onnxruntime aligns each planned buffer to 64 bytes
BLOCK = 8  # channels per block of onnxruntime's NCHWc kernels with AVX2 (16 with AVX-512)
PRECISIONS = {"fp32": 4, "fp16": 2, "int8": 1}  # bytes per weight element


@dataclass(frozen=True)
class Memory:
    """Bytes at one batch size: `values` holds each graph input's and node's result."""

    batch: int
    values: dict[str, int]
    peak: int  # inputs + the planned block + outputs
    peak_at: str  # the node whose buffer set the block's size (an input id if none did)
    weights: dict[str, int]  # precision -> bytes of every parameter (running statistics too)

    @property
    def activations(self) -> int:
        """Every value at once: what a pass needs when nothing is freed (a training step keeps
        about this much for the backward pass)."""
        return sum(self.values.values())

    def to_dict(self) -> dict:
        return {"batch": self.batch, "activation_bytes": self.activations,
                "peak_bytes": self.peak, "peak_at": self.peak_at,
                "weight_bytes": dict(self.weights)}


def memory(checked, batch: int) -> Memory:
    """The memory of an inference pass over `checked` (a CheckedGraph) at `batch` samples."""
    if batch < 1:
        from .errors import GraphCnnError
        raise GraphCnnError("--batch must be at least 1", received=str(batch))
    graph = checked.reaching_outputs()  # a compiled model holds no unused layer
    values = {name: FP32 * batch * product(shape) for name, shape in graph.inputs.items()}
    values.update({n.id: FP32 * batch * product(n.shape) for n in graph.nodes})
    order = run_order(graph)
    block, at = packed(buffers(plan_values(graph, order, batch)))
    outside = sum(values[name] for name in (*graph.inputs, *graph.outputs))
    elements = sum(p.size for n in graph.nodes for p in n.params.values())
    weights = {name: size * elements for name, size in PRECISIONS.items()}
    peak_at = order[at].id if at is not None else next(iter(graph.inputs), "")
    return Memory(batch, values, block + outside, peak_at, weights)


def data_inputs(node) -> list[str]:
    """The inputs whose values `node` reads (not only their shape, fixed when compiled)."""
    shape_only = node.layer.shape_inputs()
    return [v for k, v in enumerate(node.inputs) if k not in shape_only]


def sources(node) -> list[str]:
    """What `node` reads: its data inputs and the nodes whose kept values it needs."""
    return [*data_inputs(node), *(source for source, _ in node.layer.needs(list(node.inputs)))]


def run_order(graph) -> list:
    """The nodes in onnxruntime's default execution order (GraphViewer's topological order):
    a reverse depth-first walk from the nodes nobody reads, each node's inputs pushed in the
    spec's order so that the latest-written is visited first, a node emitted once its inputs
    are."""
    index = {n.id: k for k, n in enumerate(graph.nodes)}
    read = {v for n in graph.nodes for v in sources(n)}
    stack = [(n, False) for n in graph.nodes if n.id not in read]
    seen, order = set(), []
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
        elif node.id not in seen:
            seen.add(node.id)
            stack.append((node, True))
            inputs = sorted({index[v] for v in sources(node) if v in index})
            stack.extend((graph.nodes[k], False) for k in inputs)
    return order


@dataclass
class Value:
    """A tensor of the pass: its bytes, its shape key (onnxruntime reuses a freed buffer only
    for a value of the same shape and element size), the instants it is written and last read
    (node k's input copies are written at 2k, the node runs at 2k + 1) and the value whose
    buffer it may take over."""

    name: str
    size: int
    key: tuple
    start: int
    end: int
    donors: tuple[str, ...] = ()


def plan_values(graph, order: list, batch: int) -> list[Value]:
    """The values onnxruntime plans into its block, in the order they are written: graph inputs
    and plain outputs are not among them (the caller's arrays; allocated apart)."""
    made: dict[str, Value] = {}

    def make(name: str, shape, start: int, itemsize: int = FP32, donors=()) -> Value:
        key = (tuple(shape), itemsize)
        made[name] = Value(name, itemsize * batch * product(shape), key, start, start, donors)
        return made[name]

    def read(name: str, at: int) -> None:
        if name in made:
            made[name].end = max(made[name].end, at)

    kept, keeping = kept_values(order)
    blocked = layouts(graph, order, keeping)
    fused = fused_into_adds(graph, order)
    shapes = {**graph.inputs, **{n.id: n.shape for n in order}}
    copies: dict[str, str] = {}
    deferred: dict[str, list[str]] = {}  # an add -> what the convs fused into it read
    for step, node in enumerate(order):
        now = 2 * step + 1
        reads = []
        for name in data_inputs(node):
            if blocked.get(name, False) == blocked[node.id] or name in fused or \
                    (blocked[node.id] and shapes[name][0] < BLOCK):  # read as it is
                reads.append(name)
            else:  # onnxruntime reorders it into the other layout, once for all such readers
                if name not in copies:
                    copies[name] = f"{name} ({'blocked' if blocked[node.id] else 'plain'})"
                    make(copies[name], _laid(shapes[name], blocked[node.id]), now - 1)
                    read(name, now - 1)
                reads.append(copies[name])
        if node.id in fused:  # it runs with the add: its result is the add's
            deferred.setdefault(fused[node.id], []).extend(reads)
            continue
        for name in (*reads, *kept.get(node.id, ()), *deferred.get(node.id, ())):
            read(name, now)
        temps = [make(f"{node.id} (temporary {k})", shape, now).name
                 for k, shape in enumerate(node.layer.workspace(node))]
        if node.id in graph.outputs and not blocked[node.id]:
            continue  # allocated apart from the block
        make(node.id, _laid(node.shape, blocked[node.id]), now, donors=_donors(node, reads, fused, temps))
        for name, size in keeping.get(node.id, {}).items():
            make(name, (size,), now, itemsize=1)
    return list(made.values())


def _laid(shape, blocked: bool) -> tuple[int, ...]:
    """The shape as stored: NCHWc pads the channels up to a whole block."""
    return (-(-shape[0] // BLOCK) * BLOCK, *shape[1:]) if blocked else tuple(shape)


def _donors(node, reads: list[str], fused: dict, temps: list[str]) -> tuple[str, ...]:
    """The values whose buffer the result may take over: a fused conv's sum goes into the add's
    other input; an in-place op's result into its first input, else into a temporary."""
    if any(name in fused for name in node.inputs):
        return (*(v for v, name in zip(reads, data_inputs(node)) if name not in fused), *temps)
    return (*reads[:1], *temps) if node.layer.in_place else ()


def kept_values(order: list) -> tuple[dict, dict]:
    """What nodes keep for later readers (Layer.needs: a pool's indices for an unpool):
    ({reader: [the kept values it reads]}, {source: {a kept value: bytes per sample}})."""
    reads: dict[str, list[str]] = {}
    writes: dict[str, dict[str, int]] = {}
    nodes = {n.id: n for n in order}
    for node in order:
        for source_id, kind in node.layer.needs(list(node.inputs)):
            source, name = nodes[source_id], f"{source_id} ({kind.__name__})"
            reads.setdefault(node.id, []).append(name)
            writes.setdefault(source_id, {})[name] = source.layer.kept_bytes(source, kind)
    return reads, writes


def layouts(graph, order: list, keeping: dict) -> dict[str, bool]:
    """Whether onnxruntime runs each node (and graph input: never) in its blocked layout; a
    node that keeps a second value for later (a pool's indices) runs plain, as onnxruntime's
    blocked kernels write one output."""
    blocked = {name: False for name in graph.inputs}
    for node in order:
        inputs = [blocked.get(v, False) for v in node.inputs]
        blocked[node.id] = node.id not in keeping and node.layer.blocked(node, inputs, BLOCK)
    return blocked


def fused_into_adds(graph, order: list) -> dict[str, str]:
    """{conv or batch norm: the add} for the convs (Layer.fuses_add) and the batch norms folded
    into them (Layer.folds_into_conv) whose result only a two-input add reads: onnxruntime runs
    the conv and the add as one node, where the add is."""
    readers: dict[str, list] = {}
    for node in order:
        for name in data_inputs(node):
            readers.setdefault(name, []).append(node)
    producer = {n.id: n for n in order}
    fused = {}
    for node in order:
        if node.op != "add" or len(node.inputs) != 2:
            continue
        for name in node.inputs:
            chain = []
            source = producer.get(name)
            while source is not None and source.layer.folds_into_conv and \
                    len(readers.get(source.id, ())) == 1:
                chain.append(source.id)
                source = producer.get(source.inputs[0])
            if source is not None and source.layer.fuses_add and \
                    len(readers.get(source.id, ())) == 1 and name not in graph.outputs:
                fused.update(dict.fromkeys((*chain, source.id), node.id))
                break
    return fused


@dataclass
class Buffer:
    """A buffer of the plan: bytes, the shape key of its values, first and last use."""

    size: int
    key: tuple
    start: int
    end: int


def buffers(values: list[Value]) -> list[Buffer]:
    """onnxruntime's allocation plan: each value takes over a donor's buffer when the donor is
    read for the last time as it is written and has its size, else a freed buffer of its shape
    (most recently freed first), else a new one. A buffer lasts from its first value's writing
    to its last value's last read."""
    owner: dict[str, int] = {}
    users: dict[int, int] = {}
    found: list[Buffer] = []
    free: list[int] = []
    starting: dict[int, list[Value]] = {}
    ending: dict[int, list[Value]] = {}
    for value in values:
        starting.setdefault(value.start, []).append(value)
        ending.setdefault(value.end, []).append(value)
    last = {v.name: v.end for v in values}
    for now in sorted(set(starting) | set(ending)):
        for value in starting.get(now, ()):
            donor = next((owner[d] for d in value.donors
                          if d in owner and last[d] == now and users[owner[d]] == 1
                          and found[owner[d]].size == value.size), None)
            if donor is None:
                donor = next((b for b in free if found[b].key == value.key), None)
                if donor is not None:
                    free.remove(donor)
            if donor is None:
                found.append(Buffer(value.size, value.key, now, now))
                donor = len(found) - 1
            owner[value.name] = donor
            users[donor] = users.get(donor, 0) + 1
        for value in ending.get(now, ()):
            b = owner[value.name]
            users[b] -= 1
            if users[b] == 0:
                found[b].end = now
                free.insert(0, b)
    return found


def packed(found: list[Buffer]) -> tuple[int, int | None]:
    """(the size of the block holding every buffer at an offset, the position in the run order
    of the node whose buffer set it): buffers placed in the order they are first written, each in the smallest hole
    between the buffers alive then that fits it, else after the last one, as onnxruntime's
    memory pattern planner does."""
    events = sorted([(b.start, 0, k) for k, b in enumerate(found)] +
                    [(b.end, 1, k) for k, b in enumerate(found)])
    live: list[tuple[int, int, int]] = []  # (offset, size, buffer), by offset
    end, at = 0, None
    for now, freed, k in events:
        if freed:
            live = [block for block in live if block[2] != k]
            continue
        size = -(-found[k].size // ALIGN) * ALIGN
        offset, place = _best_fit(live, size)
        live.insert(place, (offset, size, k))
        if offset + size > end:
            end, at = offset + size, now // 2
    return end, at


def _best_fit(live: list[tuple[int, int, int]], size: int) -> tuple[int, int]:
    """(offset, list position) for `size` bytes among the live blocks sorted by offset."""
    best = (live[-1][0] + live[-1][1], len(live)) if live else (0, 0)
    waste, start = None, 0
    for place, (offset, length, _) in enumerate(live):
        gap = offset - start
        if gap >= size and (waste is None or gap - size < waste):
            best, waste = (start, place), gap - size
        start = offset + length
    return best
