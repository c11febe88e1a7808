"""The summary table (Keras / torchinfo style), its JSON form, and the Summary object a
notebook displays (str: the table, to_dict(): the JSON, an HTML table in Jupyter)."""
from __future__ import annotations

from dataclasses import dataclass
from html import escape

from .layers import fmt_shape
from .summary_memory import Memory, memory

# CheckedGraph and NodeInfo (graphcnn.graph) name types in annotations only and are not
# imported, not even under TYPE_CHECKING (import_cycles.py counts every import statement):
# graph/checked.py imports graphcnn.notebook, which imports this module.


@dataclass(frozen=True)
class Row:
    id: str
    op: str
    shape: tuple
    params: int
    macs: int
    rf: str
    inputs: tuple[str, ...]
    bytes: int = 0  # activation memory at the summary's batch size (0 without one)
    kept: int = 0  # forward bytes the training step's backward pass keeps (--training)


def rows(checked: CheckedGraph, depth: int | None = None,
         values: dict[str, int] | None = None, kept: dict[str, int] | None = None) -> list[Row]:
    """One row per node, or with `depth` K, block instances below K levels folded into one row
    (top-level nodes are level 1, like torchinfo's depth); `values`: bytes per node id, `kept`:
    bytes kept for the backward pass per node id."""
    check_depth(depth)
    values, kept = values or {}, kept or {}
    out: list[Row] = []
    groups: dict[str, int] = {}
    for node in checked.nodes:
        size = values.get(node.id, 0)  # an unused layer: not in a compiled model
        if depth is None or len(node.scope) < depth:
            out.append(node_row(node, size, kept.get(node.id, 0)))
            continue
        scope = node.scope[depth - 1]
        if scope not in groups:
            groups[scope] = len(out)
            out.append(Row(scope, "block", node.shape, 0, 0, str(node.rf), node.inputs))
        row = out[groups[scope]]
        out[groups[scope]] = Row(row.id, row.op, node.shape, row.params + node.param_count,
                                 row.macs + node.macs, str(node.rf), row.inputs, row.bytes + size,
                                 row.kept + kept.get(node.id, 0))
    return out


def check_depth(depth: int | None) -> None:
    if depth is not None and depth < 1:
        from .errors import GraphCnnError
        raise GraphCnnError("--depth must be at least 1", received=str(depth))


def node_row(node: NodeInfo, size: int = 0, kept: int = 0) -> Row:
    return Row(node.id, node.op, node.shape, node.param_count, node.macs, str(node.rf), node.inputs,
               size, kept)


@dataclass(frozen=True)
class OpRow:
    op: str
    layers: int
    params: int
    macs: int
    bytes: int
    kept: int = 0


def op_rows(checked: CheckedGraph, values: dict[str, int] | None = None,
            kept: dict[str, int] | None = None) -> list[OpRow]:
    """Totals per op type (`--by-op`), most MACs first; `values`: bytes per node id, `kept`:
    bytes kept for the backward pass per node id."""
    totals: dict[str, OpRow] = {}
    values, kept = values or {}, kept or {}
    for node in checked.nodes:
        row = totals.get(node.op, OpRow(node.op, 0, 0, 0, 0))
        totals[node.op] = OpRow(node.op, row.layers + 1, row.params + node.param_count,
                                row.macs + node.macs, row.bytes + values.get(node.id, 0),
                                row.kept + kept.get(node.id, 0))
    return sorted(totals.values(), key=lambda r: (-r.macs, r.op))


def as_json(checked: CheckedGraph, batch: int | None = None, by_op: bool = False,
            training=None) -> dict:
    """The JSON form; `batch` adds "memory" (and bytes per node), `by_op` the totals per op,
    `training` (train/memory.py's TrainingMemory, at `batch`) "training" and kept bytes."""
    mem = memory(checked, batch) if batch is not None else None
    kept = training.kept if training is not None else None
    data = {
        "name": checked.name,
        "total_params": checked.total_params,
        "total_macs": checked.total_macs,
        "total_flops": 2 * checked.total_macs,  # per sample; a FLOP is half a multiply-add
        "inputs": {k: ["N", *v] for k, v in checked.inputs.items()},
        "outputs": list(checked.outputs),
        "nodes": [_node_json(n, mem, kept) for n in checked.nodes],
    }
    if mem is not None:
        data["memory"] = mem.to_dict()
    if training is not None:
        data["training"] = training.to_dict()
    if by_op:
        data["by_op"] = [{"op": r.op, "layers": r.layers, "params": r.params, "macs": r.macs,
                          "flops": 2 * r.macs, **_bytes_json(r.bytes, mem),
                          **_kept_json(r.kept, kept)}
                         for r in op_rows(checked, mem.values if mem else None, kept)]
    return data


def _node_json(n: NodeInfo, mem: Memory | None, kept: dict[str, int] | None = None) -> dict:
    return {"id": n.id, "op": n.op, "inputs": list(n.inputs), "output_shape": ["N", *n.shape],
            "params": n.param_count, "macs": n.macs, "receptive_field": str(n.rf),
            **_bytes_json(mem.values.get(n.id, 0) if mem else 0, mem),
            **_kept_json((kept or {}).get(n.id, 0), kept)}


def _bytes_json(size: int, mem: Memory | None) -> dict:
    return {"activation_bytes": size} if mem is not None else {}


def _kept_json(size: int, kept: dict[str, int] | None) -> dict:
    return {"kept_bytes": size} if kept is not None else {}


def render(checked: CheckedGraph, depth: int | None = None, width: int = 140,
           batch: int | None = None, by_op: bool = False, training=None) -> str:
    """The table as text (rich), totals at the bottom; `batch` adds a Memory column and the
    memory footer, `by_op` gives one row per op type instead of one per layer, `training`
    (train/memory.py's TrainingMemory, at `batch`) a Kept column and the training footer."""
    from rich.table import Table

    mem = memory(checked, batch) if batch is not None else None
    table = Table(title=f"{checked.name}", show_footer=False, box=None, header_style="bold")
    for col, justify in columns(mem is not None, by_op, training is not None):
        table.add_column(col, justify=justify, overflow="fold")
    for cells in table_cells(checked, depth, mem, by_op, training):
        table.add_row(*cells)
    text = rich_text(table, width)
    return text.rstrip() + "\n" + "\n".join(footer(checked, mem, training)) + "\n"


def columns(with_memory: bool, by_op: bool = False,
            with_kept: bool = False) -> list[tuple[str, str]]:
    extra = ([("Memory", "right")] if with_memory else []) + \
        ([("Kept", "right")] if with_kept else [])
    if by_op:
        return [("Op", "left"), ("Layers", "right"), ("Param #", "right"), ("MACs", "right"),
                ("FLOPs", "right"), *extra]
    cols = [("Layer", "left"), ("Op", "left"), ("Output Shape", "left"), ("Param #", "right"),
            ("MACs", "right")]
    return cols + extra + [("RF", "right"), ("Connected to", "left")]


def table_cells(checked: CheckedGraph, depth: int | None, mem: Memory | None,
                by_op: bool = False, training=None) -> list[list[str]]:
    """The table's rows as text cells, in the order of `columns`."""
    values = mem.values if mem else None
    kept = training.kept if training is not None else None

    def extra(size: int, held: int) -> list[str]:
        return ([fmt_bytes(size)] if mem else []) + ([fmt_bytes(held)] if kept is not None else [])

    if by_op:
        return [[r.op, f"{r.layers:,}", f"{r.params:,}", f"{r.macs:,}", f"{2 * r.macs:,}",
                 *extra(r.bytes, r.kept)] for r in op_rows(checked, values, kept)]
    cells = [[name, "input", fmt_shape(shape), "0", "0",
              *extra(values[name] if mem else 0, (kept or {}).get(name, 0)), "", ""]
             for name, shape in checked.inputs.items()]
    return cells + [[r.id, r.op, fmt_shape(r.shape), f"{r.params:,}", f"{r.macs:,}",
                     *extra(r.bytes, r.kept), r.rf, ", ".join(r.inputs)]
                    for r in rows(checked, depth, values, kept)]


def footer(checked: CheckedGraph, mem: Memory | None, training=None) -> list[str]:
    trainable = checked.total_params
    state = sum(p.size for n in checked.nodes for p in n.params.values() if not p.trainable)
    lines = [f"Total params: {trainable:,}", f"Non-trainable state (running statistics): {state:,}",
             f"Total MACs per sample: {checked.total_macs:,}"]
    if mem is not None:
        lines += memory_footer(checked, mem)
    if training is not None:
        lines += training_footer(training)
    return lines + list(checked.warnings)


def training_footer(t) -> list[str]:
    """The training step's totals (train/memory.py says what each counts)."""
    block = "the first run's buffers, then the memory pattern's block of" if t.pattern else \
        "a run's buffers, allocated one by one; packed at once:"
    return [f"Training step at batch {t.batch} ({t.optimizer}): the backward pass keeps "
            f"{fmt_bytes(t.kept_total)} of forward values (the Kept column)",
            f"Parameters {fmt_bytes(t.params)}, gradients {fmt_bytes(t.gradients)}, optimizer "
            f"state {fmt_bytes(t.optimizer_state)}, running statistics {fmt_bytes(t.statistics)}",
            f"Peak of a training step (onnxruntime's CPU provider, as tools/train_memory.py "
            f"measures it): {fmt_bytes(t.peak)}: parameters and state {fmt_bytes(t.carried)} "
            f"({fmt_bytes(t.in_place)} of it written over itself, the rest read from one buffer "
            f"and written to a second: {fmt_bytes(t.spare)}), arena {fmt_bytes(t.arena)} "
            f"({block} {fmt_bytes(t.block)}), constants {fmt_bytes(t.constants)}, session about "
            f"{fmt_bytes(t.session)}"]


def memory_footer(checked: CheckedGraph, mem: Memory) -> list[str]:
    w = mem.weights
    return [f"Total FLOPs at batch {mem.batch} (2 x MACs): {2 * mem.batch * checked.total_macs:,}",
            f"Activations at batch {mem.batch} (fp32), all values: {fmt_bytes(mem.activations)}",
            f"Peak of an inference pass at batch {mem.batch} (onnxruntime's CPU plan: inputs, "
            f"outputs, its block of the values between): {fmt_bytes(mem.peak)}, reached at "
            f"{mem.peak_at}",
            f"Weights: {fmt_bytes(w['fp32'])} fp32, {fmt_bytes(w['fp16'])} fp16, "
            f"{fmt_bytes(w['int8'])} int8",
            f"Peak with fp32 weights: {fmt_bytes(mem.peak + w['fp32'])}"]


def fmt_bytes(size: int) -> str:
    """1,024-based units with one decimal (MiB, as memory is counted), plain bytes below 1 KiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size} B"


@dataclass(frozen=True, repr=False)
class Summary:
    """`checked.summary(depth, batch)`: str() is the table, to_dict() the JSON, and Jupyter
    shows an HTML table (as torchinfo's and Keras's summaries do). `training`: a TrainingMemory
    (graphcnn.train.memory.training_memory(checked, batch)) for the Kept column and the
    training footer."""

    checked: CheckedGraph
    depth: int | None = None
    batch: int | None = None
    by_op: bool = False
    training: object = None

    def __post_init__(self) -> None:
        check_depth(self.depth)  # refuse at the call, not when first displayed
        if self.batch is not None:
            memory(self.checked, self.batch)

    def __str__(self) -> str:
        return render(self.checked, self.depth, batch=self.batch, by_op=self.by_op,
                      training=self.training)

    __repr__ = __str__

    def to_dict(self) -> dict:
        return as_json(self.checked, batch=self.batch, by_op=self.by_op,
                       training=self.training)

    def _repr_html_(self) -> str:
        mem = memory(self.checked, self.batch) if self.batch is not None else None
        cols = columns(mem is not None, self.by_op, self.training is not None)
        head = "".join(f'<th style="text-align:{j}">{escape(c)}</th>' for c, j in cols)
        body = "".join("<tr>" + "".join(f'<td style="text-align:{j}">{escape(c)}</td>'
                                        for c, (_, j) in zip(cells, cols)) + "</tr>"
                       for cells in table_cells(self.checked, self.depth, mem, self.by_op,
                                                self.training))
        notes = "<br>".join(escape(line) for line in footer(self.checked, mem, self.training))
        return (f"<div><b>{escape(self.checked.name)}</b><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table><p>{notes}</p></div>")


def rich_text(renderable, width: int = 140) -> str:
    """Plain text of a rich renderable (no colour codes), whatever the terminal is."""
    from rich.console import Console

    # force_jupyter=False: in a notebook rich would display the table itself as well;
    # markup=False: cells are ids, paths and labels, printed as written (`[red]b` is an id)
    console = Console(width=width, record=True, file=_Null(), color_system=None,
                      force_jupyter=False, markup=False)
    console.print(renderable)
    return console.export_text()


class _Null:
    def write(self, _text: str) -> None:
        pass

    def flush(self) -> None:
        pass
