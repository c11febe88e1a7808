"""Memory before running: activation bytes per value at a batch size, the peak of one inference
pass, an arena estimate, and weight bytes per precision.

The pass: nodes run in the order the checked graph lists them (the spec's topological order,
which onnxruntime's sequential executor mostly keeps); a node's result is allocated when the
node runs, while its inputs are still alive, and freed after its last reader runs; graph inputs
are alive throughout (the caller holds the feed for the whole run), graph outputs to the end.
Every activation is fp32. The peak counts the bytes alive at once, a lower bound for any
allocator; the arena estimate also places each buffer at an offset in one block, as an arena
does, and counts the holes that leaves (docs/benchmarks.md compares both with onnxruntime).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .layers.base import product

FP32 = 4
ALIGN = 64  # onnxruntime aligns each planned buffer to 64 bytes
# Ops whose result may take over the buffer of an input read for the last time, so they need
# no new memory: onnxruntime runs them in place (kernels declared MayInplace or Alias:
# activations, Add, Mul, Dropout, Identity, Reshape, Flatten) or folds them into the conv
# before them (BatchNormalization). Without this the peak of a conv-bn-relu network came out
# 60% above onnxruntime's (squeezenet1_1 at batch 4). A per-op fact: it could become a Layer
# class attribute.
IN_PLACE = frozenset({
    "relu", "relu6", "leaky_relu", "elu", "selu", "sigmoid", "tanh", "hardsigmoid",
    "hardswish", "softplus", "clip", "prelu", "batchnorm1d", "batchnorm2d", "batchnorm3d",
    "scale", "add", "mul", "dropout", "dropout1d", "dropout2d", "dropout3d", "drop_path",
    "identity", "flatten", "reshape"})
PRECISIONS = {"fp32": 4, "fp16": 2, "int8": 1}  # bytes per weight element


@dataclass(frozen=True)
class Memory:
    """Bytes at one batch size: `values` holds each graph input's and node's result."""

    batch: int
    values: dict[str, int]
    peak: int
    peak_at: str  # the node whose run reaches the peak (an input id if the graph has no node)
    arena: int  # the packed block plus the inputs
    weights: dict[str, int]  # precision -> bytes of every parameter (running statistics too)

    @property
    def activations(self) -> int:
        """Every value at once: what a pass needs when nothing is freed (a training step keeps
        about this much for the backward pass)."""
        return sum(self.values.values())

    def to_dict(self) -> dict:
        return {"batch": self.batch, "activation_bytes": self.activations,
                "peak_bytes": self.peak, "peak_at": self.peak_at, "arena_bytes": self.arena,
                "weight_bytes": dict(self.weights)}


def memory(checked, batch: int) -> Memory:
    """The memory of an inference pass over `checked` (a CheckedGraph) at `batch` samples."""
    if batch < 1:
        from .errors import GraphCnnError
        raise GraphCnnError("--batch must be at least 1", received=str(batch))
    graph = checked.reaching_outputs()  # a compiled model holds no unused layer
    values = {name: FP32 * batch * product(shape) for name, shape in graph.inputs.items()}
    values.update({n.id: FP32 * batch * product(n.shape) for n in graph.nodes})
    peak, peak_at = peak_bytes(graph, values)
    feed = sum(values[name] for name in graph.inputs)
    elements = sum(p.size for n in graph.nodes for p in n.params.values())
    weights = {name: size * elements for name, size in PRECISIONS.items()}
    return Memory(batch, values, peak, peak_at, feed + packed_bytes(graph, values), weights)


def steps(graph, values: dict[str, int]) -> Iterator[tuple[str, str | None, set[str]]]:
    """Per node in order: (its id, the input whose buffer its result takes over or None for a
    new buffer, the values freed once it has run)."""
    last = last_reads(graph)
    for step, node in enumerate(graph.nodes):
        donor = _donor(node, step, last, values)
        yield node.id, donor, _dying(node, step, last) - {donor}


def peak_bytes(graph, values: dict[str, int]) -> tuple[int, str]:
    """(the most bytes alive at once, the node running then)."""
    live = sum(values[name] for name in graph.inputs)
    peak, peak_at = live, next(iter(graph.inputs), "")
    for node_id, donor, freed in steps(graph, values):
        if donor is None:  # a new buffer, written while every input is still alive
            live += values[node_id]
        if live > peak:
            peak, peak_at = live, node_id
        live -= sum(values[v] for v in freed)
    return peak, peak_at


def packed_bytes(graph, values: dict[str, int]) -> int:
    """The size of one block holding every node's buffer at an offset, each placed in the
    smallest hole it fits between the live ones (best fit, as onnxruntime's memory pattern
    and TFLite's arena planner do) or after the last; holes make it exceed the peak."""
    blocks: dict[str, tuple[int, int]] = {}  # value -> (offset, size)
    end = 0
    for node_id, donor, freed in steps(graph, values):
        if donor is not None:
            blocks[node_id] = blocks.pop(donor)
        else:
            size = -(-values[node_id] // ALIGN) * ALIGN
            blocks[node_id] = (_best_fit(sorted(blocks.values()), size), size)
            end = max(end, sum(blocks[node_id]))
        for name in freed:
            blocks.pop(name, None)  # graph inputs hold no block: they are the caller's
    return end


def _best_fit(live: list[tuple[int, int]], size: int) -> int:
    """The offset for `size` bytes among live (offset, size) blocks sorted by offset."""
    best, waste, start = None, None, 0
    for offset, length in live:
        gap = offset - start
        if gap >= size and (waste is None or gap - size < waste):
            best, waste = start, gap - size
        start = max(start, offset + length)
    return start if best is None else best


def _donor(node, step: int, last: dict[str, int], values: dict[str, int]) -> str | None:
    """The input whose buffer an in-place node's result takes over: one of the same size read
    for the last time here (never a graph input: that buffer is the caller's)."""
    if node.op not in IN_PLACE:
        return None
    return next((v for v in node.inputs if last[v] == step and values[v] == values[node.id]),
                None)


def last_reads(graph) -> dict[str, int]:
    """The step after which each value may be freed: its last reader's position; a graph input
    or output never (one past the end); a value nobody reads right after it is made."""
    last = {}
    for step, node in enumerate(graph.nodes):
        last[node.id] = step
        for name in node.inputs:
            last[name] = step
    for name in (*graph.inputs, *graph.outputs):
        last[name] = len(graph.nodes)
    return last


def _dying(node, step: int, last: dict[str, int]) -> set[str]:
    """The values freed once `node` has run: its inputs read for the last time, and its own
    result when nothing reads it."""
    names = set(node.inputs) | {node.id}
    return {v for v in names if last[v] == step}
