"""The summary table (Keras / torchinfo style) and its JSON form."""
from __future__ import annotations

from dataclasses import dataclass

from .graph import CheckedGraph, NodeInfo
from .layers import fmt_shape


@dataclass(frozen=True)
class Row:
    id: str
    op: str
    shape: tuple
    params: int
    macs: int
    rf: str
    inputs: tuple[str, ...]


def rows(checked: CheckedGraph, depth: int | None = None) -> list[Row]:
    """One row per node, or with `depth` K, block instances below K levels folded into one row
    (top-level nodes are level 1, like torchinfo's depth)."""
    if depth is not None and depth < 1:
        from .errors import GraphCnnError
        raise GraphCnnError("--depth must be at least 1", received=str(depth))
    out: list[Row] = []
    groups: dict[str, int] = {}
    for node in checked.nodes:
        if depth is None or len(node.scope) < depth:
            out.append(node_row(node))
            continue
        scope = node.scope[depth - 1]
        if scope not in groups:
            groups[scope] = len(out)
            out.append(Row(scope, "block", node.shape, 0, 0, str(node.rf), node.inputs))
        row = out[groups[scope]]
        out[groups[scope]] = Row(row.id, row.op, node.shape, row.params + node.param_count,
                                 row.macs + node.macs, str(node.rf), row.inputs)
    return out


def node_row(node: NodeInfo) -> Row:
    return Row(node.id, node.op, node.shape, node.param_count, node.macs, str(node.rf), node.inputs)


def as_json(checked: CheckedGraph) -> dict:
    return {
        "name": checked.name,
        "total_params": checked.total_params,
        "total_macs": checked.total_macs,
        "inputs": {k: ["N", *v] for k, v in checked.inputs.items()},
        "outputs": list(checked.outputs),
        "nodes": [{"id": n.id, "op": n.op, "inputs": list(n.inputs), "output_shape": ["N", *n.shape],
                   "params": n.param_count, "macs": n.macs, "receptive_field": str(n.rf)}
                  for n in checked.nodes],
    }


def render(checked: CheckedGraph, depth: int | None = None, width: int = 140) -> str:
    """The table as text (rich), totals at the bottom."""
    from rich.table import Table

    table = Table(title=f"{checked.name}", show_footer=False, box=None, header_style="bold")
    for col, justify in [("Layer", "left"), ("Op", "left"), ("Output Shape", "left"),
                         ("Param #", "right"), ("MACs", "right"), ("RF", "right"),
                         ("Connected to", "left")]:
        table.add_column(col, justify=justify, overflow="fold")
    for name, shape in checked.inputs.items():
        table.add_row(name, "input", fmt_shape(shape), "0", "0", "", "")
    for row in rows(checked, depth):
        table.add_row(row.id, row.op, fmt_shape(row.shape), f"{row.params:,}", f"{row.macs:,}",
                      row.rf, ", ".join(row.inputs))
    text = rich_text(table, width)
    trainable = checked.total_params
    state = sum(p.size for n in checked.nodes for p in n.params.values() if not p.trainable)
    footer = [f"Total params: {trainable:,}", f"Non-trainable state (running statistics): {state:,}",
              f"Total MACs per sample: {checked.total_macs:,}"]
    footer += list(checked.warnings)
    return text.rstrip() + "\n" + "\n".join(footer) + "\n"


def rich_text(renderable, width: int = 140) -> str:
    """Plain text of a rich renderable (no colour codes), whatever the terminal is."""
    from rich.console import Console

    console = Console(width=width, record=True, file=_Null(), color_system=None)
    console.print(renderable)
    return console.export_text()


class _Null:
    def write(self, _text: str) -> None:
        pass

    def flush(self) -> None:
        pass
