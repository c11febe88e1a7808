"""Memory of a training step before running it (`graphcnn summary --training`), read off the
step model that `graphcnn train` runs (train/step.py), so that it holds for every layer family:

- kept: the forward values that the backward pass reads (ONNX nodes named `<id>/grad/...` read
  values that forward nodes `<id>/...` wrote), each once, charged to the node that wrote it (a
  view, reshape or flatten, keeps nothing of its own: its input's buffer is charged), the
  network's input to the input;
- carried: trainable parameters, optimizer state (sgd with momentum one tensor per parameter,
  adam two), batchnorm statistics; gradients, one per trained parameter, exist only inside the
  step (each is consumed by its update as soon as it is made);
- the peak of a step on onnxruntime's CPU provider, as tools/train_memory.py measures it (the
  process's resident memory growth, libraries and the caller's batch excluded):
  * the carried tensors once where the step model lets StepRunner update them in place
    (train/in_place.py; it also checks the graph onnxruntime's optimizer makes, which may
    leave fewer), twice for the others: StepRunner reads one set and writes the other;
  * the arena: the step's values planned as onnxruntime plans them, in its order (a reverse
    depth-first walk from the nodes nobody reads): a Reshape, Flatten, Squeeze, Unsqueeze or
    Identity is a view of its input; a value whose only reader is the Identity naming a graph
    output is written into the runner's buffer; an activation may write into its input when
    that is read for the last time there; else a freed buffer of the same shape, else a new
    one (summary_memory.buffers). Those buffers are allocated and freed in that order from a
    simulated BFC arena (onnxruntime's default CPU arena: a 1 MiB region, then each new one
    twice the last; best fit, split, coalesced), counting the bytes ever written. With the
    memory pattern on (onnxruntime's default; the CPU step's session turns it off,
    MEMORY_PATTERN), every later run asks for one block holding all the buffers at once
    (summary_memory.packed), which the first run's freed regions seldom fit, so the arena
    holds both;
  * the constants of the step model;
  * the session and the step model themselves: an estimate of 5 KiB per ONNX node of the step
    (onnxruntime's graph, kernels and plan, the model's Python objects; measured 4.5 to 7 KiB
    per node on the steps of the MNIST-1D CNN, the small ResNet and ResNet-18).
  Not counted: kernels' scratch buffers, onnxruntime's rewrites of the graph (fusions, the NCHWc
  copies, constant folding).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from ..runtime.sessions import CPU_STEP_MEMORY_PATTERN
from ..summary_memory import Value, buffers, packed
from .in_place import VIEWS  # onnxruntime aliases these: a view is its input's buffer
SHAPE_ONLY = {"Shape", "Size"}  # read no data: onnxruntime folds them (every shape is fixed)
# onnxruntime's CPU kernels that may write into their first input (MayInplace): the
# activations; not Add, Mul and the other elementwise math (element_wise_ops.cc)
IN_PLACE = {"Elu", "HardSigmoid", "LeakyRelu", "Relu", "Selu", "Sigmoid", "Softplus", "Softsign",
            "Tanh", "ThresholdedRelu"}
MEMORY_PATTERN = CPU_STEP_MEMORY_PATTERN  # the CPU step's session's, as StepRunner makes it
MOMENTS = (".momentum", ".m", ".v")  # optimizer state names (train/optim.py)
MIB = 1 << 20
SESSION_PER_NODE = 5 << 10  # bytes per ONNX node of the step (see the module docstring)


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes of one training step at `batch` samples (see the module docstring)."""

    batch: int
    optimizer: str
    kept: dict[str, int]  # node or input id -> forward bytes the backward pass reads
    params: int  # trainable parameters
    gradients: int  # one per trained (not frozen) parameter
    optimizer_state: int
    statistics: int  # batchnorm running statistics, other state (fp16's loss scale)
    block: int  # the memory pattern's block: every planned buffer of the step
    arena: int  # the arena's bytes written (first run, then the block)
    constants: int
    session: int  # the estimate for the session and the model (SESSION_PER_NODE)
    peak: int
    unsized: int = 0  # values whose size shape inference could not tell (counted as 0)
    pattern: bool = MEMORY_PATTERN  # the arena with onnxruntime's memory pattern
    in_place: int = 0  # carried bytes written over themselves (train/in_place.py)

    @property
    def kept_total(self) -> int:
        return sum(self.kept.values())

    @property
    def carried(self) -> int:
        return self.params + self.optimizer_state + self.statistics

    @property
    def spare(self) -> int:
        """The second buffers of the carried tensors not updated in place."""
        return self.carried - self.in_place

    def to_dict(self) -> dict:
        return {"batch": self.batch, "optimizer": self.optimizer,
                "kept_bytes": self.kept_total, "kept_bytes_per_node": dict(self.kept),
                "param_bytes": self.params, "gradient_bytes": self.gradients,
                "optimizer_state_bytes": self.optimizer_state,
                "statistics_bytes": self.statistics, "block_bytes": self.block,
                "arena_bytes": self.arena, "constant_bytes": self.constants,
                "session_bytes": self.session,
                "in_place_bytes": self.in_place, "spare_bytes": self.spare,
                "peak_bytes": self.peak, "memory_pattern": self.pattern,
                "unsized_values": self.unsized}


def training_memory(checked, batch: int | None = None, recipe=None) -> TrainingMemory:
    """The memory of `checked`'s training step at `batch` (default: the recipe's) under
    `recipe` (default: the spec's `training:` section)."""
    from .loop import build_step
    from .recipe import recipe_of

    recipe = recipe if recipe is not None else recipe_of(checked.spec)
    if batch is not None:
        recipe = recipe.override(batch=batch)
    step = build_step(checked, recipe)
    return step_memory(checked, step)


def step_memory(checked, step) -> TrainingMemory:
    """The memory of a built TrainingStep of `checked`."""
    model = step.model
    sizes, unsized = value_sizes(model)
    params, grads, state, stats = carried_bytes(model, step, sizes)
    found = plan(model, sizes)
    block, _ = packed(found)
    arena = arena_bytes(found, block, MEMORY_PATTERN)
    constants = sum(_bytes(t) for t in model.graph.initializer)
    session = SESSION_PER_NODE * len(model.graph.node)
    in_place = in_place_bytes(step, sizes)
    peak = 2 * (params + state + stats) - in_place + arena + constants + session
    return TrainingMemory(step.batch, step.optimizer, kept_bytes(model, checked, sizes), params,
                          grads, state, stats, block, arena, constants, session, peak,
                          len(unsized), in_place=in_place)


def in_place_bytes(step, sizes: dict[str, tuple]) -> int:
    """The carried tensors StepRunner updates in place: no second buffer."""
    return sum(sizes[name][0] for name in step.in_place)


def carried_bytes(model, step, sizes: dict[str, tuple]) -> tuple[int, int, int, int]:
    """(parameters, their gradients, optimizer state, other state) in bytes."""
    carried = {name: sizes[name][0] for name in step.carried}
    moments = [n for n in step.state if n.endswith(MOMENTS) and n.rsplit(".", 1)[0] in carried]
    params = sum(carried[n] for n in step.params)
    state = sum(carried[n] for n in moments)
    grads = sum(carried[n] for n in trained_params(model, step.params))
    return params, grads, state, sum(carried.values()) - params - state


def trained_params(model, params: list[str]) -> list[str]:
    """The parameters the step changes: a frozen one's `.new` output is the parameter itself."""
    unchanged = {n.input[0] for n in model.graph.node
                 if n.op_type == "Identity" and n.output[0] == f"{n.input[0]}.new"}
    return [p for p in params if p not in unchanged]


# ---- sizes -----------------------------------------------------------------------------------

def value_sizes(model) -> tuple[dict[str, tuple], list[str]]:
    """({value: (bytes, (shape, item size))} for every value of the step, [values left
    unsized]): ONNX shape inference (the batch is fixed), after folding the small shape
    computations that its data propagation leaves (dropout's Range over the element count)."""
    sizes = _inferred(model)
    missing = _unsized(model, sizes)
    if missing:
        sizes = _inferred(_folded(model, sizes))
        missing = _unsized(model, sizes)
    return sizes, missing


def _inferred(model) -> dict[str, tuple]:
    from onnx import helper, shape_inference

    inferred = shape_inference.infer_shapes(model, data_prop=True)
    sizes = {}
    g = inferred.graph
    for info in [*g.value_info, *g.input, *g.output]:
        kind = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in kind.shape.dim]
        if kind.HasField("shape") and None not in dims and kind.elem_type:
            item = np.dtype(helper.tensor_dtype_to_np_dtype(kind.elem_type)).itemsize
            sizes[info.name] = (item * int(np.prod(dims, dtype=np.int64)), (tuple(dims), item))
    sizes.update({t.name: (_bytes(t), (tuple(t.dims), 0)) for t in g.initializer})
    return sizes


def _unsized(model, sizes: dict[str, int]) -> list[str]:
    return [o for n in model.graph.node for o in n.output if o and o not in sizes]


def _bytes(tensor) -> int:
    from onnx import helper

    item = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return item * int(np.prod(tensor.dims, dtype=np.int64))


FOLDABLE = 4096  # elements: only shape computations are folded, never activations


def _folded(model, sizes: dict[str, int]):
    """A copy of the model whose small computable values (shapes, counts) are constants."""
    import onnx
    from onnx import numpy_helper

    known = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    shapes = _static_shapes(model)
    kept = []
    for node in model.graph.node:
        value = _evaluate(node, known, shapes)
        if value is None or value.size > FOLDABLE:
            kept.append(node)
            continue
        known[node.output[0]] = value
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.node[:]
    copy.graph.node.extend(kept)
    made = {o for n in kept for o in n.output}
    old = {t.name for t in model.graph.initializer}
    copy.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), name)
                                  for name, v in known.items() if name not in old
                                  and name not in made)
    return copy


def _static_shapes(model) -> dict[str, tuple]:
    from onnx import shape_inference

    g = shape_inference.infer_shapes(model, data_prop=True).graph
    out = {}
    for info in [*g.value_info, *g.input, *g.output]:
        dims = info.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims) and info.type.tensor_type.HasField("shape"):
            out[info.name] = tuple(d.dim_value for d in dims)
    return out


def _evaluate(node, known: dict, shapes: dict):
    """The value of a one-output node whose inputs are known small constants (Shape: of a
    value whose shape inference gave), else None."""
    if len(node.output) != 1:
        return None
    if node.op_type == "Shape" and node.input[0] in shapes and not node.attribute:
        return np.array(shapes[node.input[0]], np.int64)
    if not node.input or any(v not in known for v in node.input if v):
        return None
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    inputs = [helper.make_tensor_value_info(v, helper.np_dtype_to_tensor_dtype(known[v].dtype),
                                            known[v].shape) for v in node.input if v]
    output = helper.make_tensor_value_info(node.output[0], 0, None)
    graph = helper.make_graph([node], "fold", inputs, [output])
    try:
        return np.asarray(ReferenceEvaluator(helper.make_model(graph)).run(
            None, {v: known[v] for v in node.input if v})[0])
    except Exception:  # noqa: BLE001 - an op onnx.reference lacks: left to the session
        return None


# ---- what the backward pass keeps --------------------------------------------------------------

def kept_bytes(model, checked, sizes: dict[str, tuple]) -> dict[str, int]:
    """{node or input id: bytes of its forward values read by backward nodes}, each buffer once
    (a view's reads are charged to the value it views)."""
    ids = {n.id for n in checked.nodes}
    producer = {o: n for n in model.graph.node for o in n.output}
    outside = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}

    def root(value: str) -> str:
        while value in producer and producer[value].op_type in VIEWS and \
                _is_forward(producer[value].name, ids):
            value = producer[value].input[0]
        return value

    read = {root(v) for n in model.graph.node if "/grad/" in n.name and
            n.op_type not in SHAPE_ONLY for v in n.input if v}
    kept: dict[str, int] = {}
    for value in sorted(read):
        if value in checked.inputs:
            owner = value
        elif value in producer and value not in outside and _is_forward(producer[value].name, ids):
            owner = producer[value].name.split("/")[0]
        else:
            continue  # a parameter, a constant, a loss or backward value
        kept[owner] = kept.get(owner, 0) + sizes.get(value, (0,))[0]
    return kept


def _is_forward(name: str, ids: set[str]) -> bool:
    """ONNX node names are `<id>/<Op><k>` (or the id) in the forward pass, `<id>/grad/...`
    in the backward one (lower/emitter.py)."""
    return name.split("/")[0] in ids and "/grad/" not in name


# ---- onnxruntime's plan ----------------------------------------------------------------------

def run_order(nodes: list) -> list[int]:
    """onnxruntime's default order (GraphViewer): a reverse depth-first walk from the nodes
    whose outputs no node reads, each node's producers visited highest index first, a node
    emitted once they are."""
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    inputs = [sorted({producer[v] for v in n.input if v in producer}) for n in nodes]
    read = {k for ks in inputs for k in ks}
    stack = [(k, False) for k in range(len(nodes)) if k not in read]
    seen, order = set(), []
    while stack:
        k, done = stack.pop()
        if done:
            order.append(k)
        elif k not in seen:
            seen.add(k)
            stack.append((k, True))
            stack.extend((p, False) for p in inputs[k])
    return order


def plan(model, sizes: dict[str, tuple]) -> list:
    """onnxruntime's buffers for the step's values (summary_memory.Buffer: bytes, first and
    last use), in its order: views share their input's buffer; graph inputs, constants and
    graph outputs (bound to the runner's tensors) are not planned."""
    g = model.graph
    nodes = list(g.node)
    outside = {i.name for i in g.input} | {t.name for t in g.initializer} | \
        {o.name for o in g.output} | written_as_outputs(nodes, g)
    viewed: dict[str, str] = {}
    made: dict[str, Value] = {}

    def base(value: str) -> str:
        while value in viewed:
            value = viewed[value]
        return value

    for step, k in enumerate(run_order(nodes)):
        node, now = nodes[k], 2 * step + 1
        for name in node.input if node.op_type not in SHAPE_ONLY else ():
            if base(name) in made:
                made[base(name)].end = now
        if node.op_type in VIEWS and node.output[0] not in outside:
            viewed[node.output[0]] = node.input[0]
            continue
        donors = (base(node.input[0]),) if node.op_type in IN_PLACE and node.input else ()
        for out in node.output:
            if out and out not in outside:
                size, key = sizes.get(out, (0, out))
                made[out] = Value(out, size, key, now, now, donors)
    return buffers(list(made.values()))


def written_as_outputs(nodes: list, graph) -> set[str]:
    """Values that onnxruntime writes straight into a graph output: the input of an Identity
    that names the output, when the Identity is its only reader (its EliminateIdentity)."""
    outputs = {o.name for o in graph.output}
    made = {o for n in nodes for o in n.output}
    readers: dict[str, int] = {}
    for node in nodes:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    return {n.input[0] for n in nodes if n.op_type == "Identity" and n.output[0] in outputs
            and n.input[0] in made and n.input[0] not in outputs and readers[n.input[0]] == 1}


def arena_bytes(found: list, block: int, pattern: bool = True) -> int:
    """Bytes written in onnxruntime's CPU arena: the first run allocates each buffer as it is
    written and frees it after its last use; with the memory pattern, the later runs ask for
    the block at once (twice here: the second run may place it where the third does not)."""
    arena = Arena()
    events = sorted([(b.start, 0, k) for k, b in enumerate(found)] +
                    [(b.end, 1, k) for k, b in enumerate(found)])
    where: dict[int, int] = {}
    for _, freed, k in events:
        if freed:
            if k in where:
                arena.free(where.pop(k))
        elif found[k].size:
            where[k] = arena.allocate(found[k].size)
    for _ in range(2 if pattern and block else 0):
        arena.free(arena.allocate(block))
    return arena.written()


@dataclass
class Chunk:
    size: int
    region: int
    used: bool = False


class Arena:
    """onnxruntime's BFCArena with its default settings (bfc_arena.cc): sizes rounded up to 256
    bytes; the smallest free chunk that fits (lowest address on a tie), split when it is at
    least twice the request; a freed chunk merged with free neighbours of its region; when none
    fits, a new region: 1 MiB first, then the last size doubled (kNextPowerOfTwo), or doubled
    until the request fits. Records which bytes were ever handed out (resident memory)."""

    def __init__(self, first: int = MIB):
        self.next_region = first
        self.chunks: dict[int, Chunk] = {}
        self.free_list: list[tuple[int, int]] = []  # (size, address), sorted
        self.regions: list[tuple[int, int]] = []  # (address, size)
        self.spans: list[tuple[int, int]] = []

    def allocate(self, size: int) -> int:
        rounded = -(-max(size, 1) // 256) * 256
        k = bisect.bisect_left(self.free_list, (rounded, -1))
        if k == len(self.free_list):
            self._extend(rounded)
            k = bisect.bisect_left(self.free_list, (rounded, -1))
        length, address = self.free_list.pop(k)
        chunk = self.chunks[address]
        if length >= 2 * rounded or length - rounded >= 128 * MIB:
            self._add_free(address + rounded, length - rounded, chunk.region)
            chunk.size = rounded
        chunk.used = True
        self.spans.append((address, address + size))
        return address

    def _extend(self, rounded: int) -> None:
        grew = rounded > self.next_region
        while rounded > self.next_region:
            self.next_region *= 2
        size = self.next_region
        if not grew and 2 * self.next_region < 1 << 30:  # max_power_of_two_extend_bytes
            self.next_region *= 2
        start = self.regions[-1][0] + self.regions[-1][1] + (1 << 40) if self.regions else 0
        self.regions.append((start, size))
        self._add_free(start, size, len(self.regions) - 1)

    def _add_free(self, address: int, size: int, region: int) -> None:
        self.chunks[address] = Chunk(size, region)
        bisect.insort(self.free_list, (size, address))

    def free(self, address: int) -> None:
        chunk = self.chunks.pop(address)
        start, end = address, address + chunk.size
        after = self.chunks.get(end)
        if after is not None and not after.used and after.region == chunk.region:
            self._take(end)
            end += after.size
        before = self._before(start, chunk.region)
        if before is not None:
            start = before
            self._take(before)
        self._add_free(start, end - start, chunk.region)

    def _take(self, address: int) -> None:
        chunk = self.chunks.pop(address)
        self.free_list.remove((chunk.size, address))

    def _before(self, address: int, region: int) -> int | None:
        """The free chunk that ends at `address` in the same region."""
        for length, start in self.free_list:
            if start + length == address and self.chunks[start].region == region:
                return start
        return None

    def written(self) -> int:
        """Bytes in the union of everything handed out."""
        total, low, high = 0, None, None
        for a, b in sorted(self.spans):
            if high is None or a > high:
                total += (high - low) if high is not None else 0
                low, high = a, b
            else:
                high = max(high, b)
        return total + ((high - low) if high is not None else 0)
