"""`graphcnn diff A B`: what differs between two specs, models or weight files.

Exit status as `git diff`'s: 0 whatever the differences; with --exit-code, 1 when they differ.
A user error (a missing file, a bad spec) also exits 1, with `error: ...` on stderr.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import GraphCnnError
from ..fileio import OutputPath
from .output import out, print_json
from .registry import command, configure

DRAW_FORMATS = (".svg", ".png", ".dot", ".mmd")
MARKS = {"added": "+", "removed": "-", "changed": "~", "affected": ">"}
MARKS_LEGEND = ("+ added, - removed, ~ changed (op, fields or inputs), "
                "> affected (shape, parameters or MACs, from upstream)")


@command("diff", "compare two specs, models or weight files: nodes, shapes, params, MACs, weights")
def cmd_diff(args) -> int:
    from ..workbench.diff import as_json, diff

    if args.weights is not None and len(args.weights) not in (0, 2):
        raise GraphCnnError("--weights takes no file (compare the models' own) or two files",
                            expected="--weights, or --weights A.npz B.npz",
                            received=" ".join(args.weights))
    table_depth = 1 if args.depth is None else args.depth or None
    result = diff(args.a, args.b, depth=table_depth, weights=args.weights is not None,
                  weight_files=tuple(args.weights) if args.weights else None)
    if args.draw:
        _draw(result, args)
    if args.json:
        print_json(as_json(result))
    else:
        out(render(result))
    return 1 if args.exit_code and result.differs else 0


@configure(cmd_diff)
def _diff_args(p):
    p.add_argument("a", help="A: a spec (.yaml), a model written by graphcnn (.onnx) or a weight "
                             "file (.npz, .safetensors, .pth)")
    p.add_argument("b", help="B: the same kinds as A")
    p.add_argument("--depth", type=int, default=None, metavar="K",
                   help="fold ids below K levels into one row (default 1: per stage; 0: a row per "
                        "node); the --draw drawing is folded only when --depth is given")
    p.add_argument("--weights", nargs="*", metavar="FILE",
                   help="compare weights too: the two models' own, or two files given here "
                        "(beside two specs): the largest |a - b| per tensor")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--draw", metavar="OUT", type=OutputPath,
                   help="draw B with the differences coloured: OUT.svg, .png (need Graphviz), "
                        ".dot or .mmd")
    p.add_argument("--exit-code", action="store_true",
                   help="exit 1 when the two differ (as git diff --exit-code)")


def _draw(result, args) -> None:
    from ..draw import render, to_dot, to_mermaid
    from ..fileio import write_bytes_atomic, write_text_atomic
    from ..workbench.diff import highlighted_drawing

    target = Path(args.draw)
    suffix = target.suffix.lower()
    if suffix not in DRAW_FORMATS:
        raise GraphCnnError("unknown diagram format", expected=" or ".join(DRAW_FORMATS),
                            received=str(target))
    if result.structure is None:
        raise GraphCnnError("--draw needs two specs or graphcnn models", hint=result.notes[0])
    drawing = highlighted_drawing(result.structure, result.a.checked, result.b.checked,
                                  args.depth or None)
    if suffix in (".dot", ".mmd"):
        text = to_dot(drawing) if suffix == ".dot" else to_mermaid(drawing)
        write_text_atomic(target, text)
    else:
        write_bytes_atomic(target, render(to_dot(drawing), suffix[1:]))
    if not args.json:  # --json keeps stdout to the JSON alone
        out(f"wrote {target}")


def render(result, width: int = 150) -> str:
    """The diff as text: a header, the group table, the node lines, the weights."""
    lines = [f"A: {_side(result.a)}", f"B: {_side(result.b)}", *result.notes]
    if result.structure is not None:
        lines += _structure_text(result.structure, width)
    if result.weights is not None:
        lines += _weights_text(result.weights, width)
    if not result.differs:
        lines.append("no differences")
    return "\n".join(lines) + "\n"


def _side(side) -> str:
    name = f"{side.checked.name}, " if side.checked is not None else ""
    return f"{side.source} ({name}{side.kind})"


def _structure_text(s, width: int) -> list[str]:
    counts = s.counts
    if not s.differs:  # the table would repeat the summary with nothing to show
        return [f"structure: the same: {counts['same']} nodes, {s.params[1]:,} params, "
                f"{s.macs[1]:,} MACs"]
    lines = [_table_text(_group_table(s), width), MARKS_LEGEND,
             "nodes: " + ", ".join(f"{counts[k]} {k}" for k in counts)]
    lines += [f"input {name}: {_shapes(pair)}" for name, pair in s.inputs.items()]
    if s.outputs:
        lines.append(f"outputs: {', '.join(s.outputs[0])} -> {', '.join(s.outputs[1])}")
    return lines + [_node_line(n) for n in s.nodes if n.status != "same"]


def _group_table(s):
    from rich.table import Table
    from rich.text import Text

    depth = "a row per node" if s.depth is None else f"folded at depth {s.depth}"
    table = Table(title=Text(f"{s.names[0]} -> {s.names[1]} ({depth})"), title_justify="left",
                  box=None, header_style="bold")
    for col in ("Group", "Nodes", "Changes", "Params A", "Params B", "Params +/-", "MACs A",
                "MACs B", "MACs +/-", "Output Shape"):
        justify = "left" if col in ("Group", "Changes", "Output Shape") else "right"
        table.add_column(col, justify=justify, overflow="fold")
    for g in s.groups:
        table.add_row(*map(Text, [g.id, _pair(g.nodes, str), _changes(g.counts),
                                  *_sums(g.params), *_sums(g.macs), _dims(g.shape)]))
    total = [sum(g.nodes[i] for g in s.groups) for i in (0, 1)]
    table.add_row(*map(Text, ["total", _pair(total, str), _changes(s.counts), *_sums(s.params),
                              *_sums(s.macs), ""]), style="bold")
    return table


def _changes(counts: dict) -> str:
    marks = [f"{MARKS[k]}{counts[k]}" for k in MARKS if counts[k]]
    return " ".join(marks) or "="


def _sums(pair) -> list[str]:
    a, b = pair
    return [f"{a:,}", f"{b:,}", f"{b - a:+,}" if b != a else "0"]


def _pair(pair, fmt) -> str:
    a, b = (fmt(x) if x is not None else "-" for x in pair)
    return a if a == b else f"{a} -> {b}"


def _shapes(pair) -> str:
    from ..layers import fmt_shape
    return _pair(pair, fmt_shape)


def _dims(pair) -> str:
    """Shapes without the batch axis, 256x56x56: the table stays narrow."""
    return _pair(pair, lambda shape: "x".join(map(str, shape)) or "scalar")


def _table_text(table, width: int) -> str:
    from ..summary import rich_text
    return "\n".join(line.rstrip() for line in rich_text(table, width).splitlines()).strip("\n")


def _node_line(n) -> str:
    """`~ id  what changed`: fields, then shape, parameters and MACs where they differ."""
    if n.status in ("added", "removed"):
        side = 1 if n.status == "added" else 0
        sizes = [f"{n.params[side]:,} params"] * bool(n.params[side])
        sizes += [f"{n.macs[side]:,} MACs"] * bool(n.macs[side])
        return "  ".join([f"{MARKS[n.status]} {n.id}", n.op[side],
                          _shapes((n.shape[side],) * 2), *sizes])
    parts = [f"{k}: {_value(a)} -> {_value(b)}" for k, (a, b) in n.fields.items()]
    if n.shape[0] != n.shape[1]:
        parts.append(f"shape {_shapes(n.shape)}")
    for what, pair in (("params", n.params), ("MACs", n.macs)):
        if pair[0] != pair[1]:
            parts.append(f"{what} {_pair(pair, '{:,}'.format)}")
    return f"{MARKS[n.status]} {n.id}  " + "; ".join(parts)


def _value(v) -> str:
    if v is None:
        return "-"
    return ", ".join(map(str, v)) if isinstance(v, list) else str(v)


def _weights_text(w, width: int) -> list[str]:
    from rich.table import Table
    from rich.text import Text

    lines = [f"weights: {len(w.tensors)} tensors compared, {len(w.differing)} differ, "
             f"{len(w.only_a)} only in A, {len(w.only_b)} only in B, "
             f"{len(w.shapes)} of another shape"]
    if w.differing:
        table = Table(box=None, header_style="bold")
        for col in ("Tensor", "Shape", "max |a - b|", "relative"):
            table.add_column(col, justify="left" if col in ("Tensor", "Shape") else "right",
                             overflow="fold")
        for t in w.differing:
            table.add_row(*map(Text, [t.name, str(list(t.shape)),
                                      f"{t.max_abs:.4g}", f"{t.max_rel:.3g}"]))
        lines.append(_table_text(table, width))
    lines += [f"only in A: {name}" for name in w.only_a]
    lines += [f"only in B: {name}" for name in w.only_b]
    lines += [f"shape differs: {name} {list(a)} -> {list(b)}" for name, a, b in w.shapes]
    return lines
