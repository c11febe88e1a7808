"""Mermaid flowchart text for a Drawing: needs no program, and GitHub renders it in Markdown."""
from __future__ import annotations

import json

from ..layers import fmt_shape
from .model import Box, Drawing
from .style import box_fill, dims, edge_style, visible

_DASH = {"solid": "", "dashed": ",stroke-dasharray:6 4", "dotted": ",stroke-dasharray:2 3"}


def to_mermaid(drawing: Drawing, direction: str = "TB") -> str:
    ids = {box: f"n{i}" for i, box in enumerate(drawing.boxes)}
    fills = {f: f"f{i}" for i, f in enumerate(dict.fromkeys(
        box_fill(b) for b in drawing.boxes.values()))}
    # the front matter is YAML: the title as a JSON string, which YAML reads as it is
    lines = ["---", f"title: {json.dumps(visible(drawing.name), ensure_ascii=False)}", "---",
             f"flowchart {direction}"]
    lines += [f"  classDef {name} fill:{colour},stroke:#555,color:#000"
              for colour, name in fills.items()]
    lines += _scope(drawing, None, ids, fills, "  ", {c: f"c{i}" for i, c in enumerate(drawing.clusters)})
    links: dict[str, list[int]] = {}
    for n, e in enumerate(drawing.edges):
        arrow = "-->" if e.kind == "forward" else "-.->"
        lines.append(f'  {ids[e.src]} {arrow}|"{_text(dims(e.shape))}"| {ids[e.dst]}')
        links.setdefault(e.kind, []).append(n)
    lines += _legend(drawing, links)
    lines += [_link_style(kind, numbers) for kind, numbers in links.items()]
    return "\n".join(lines) + "\n"


def _scope(drawing: Drawing, parent, ids, fills, pad, cluster_ids) -> list[str]:
    lines = [pad + _node(b, ids[b.id], fills) for b in drawing.boxes.values() if b.cluster == parent]
    for c in drawing.clusters.values():
        if c.parent == parent:
            lines.append(f'{pad}subgraph {cluster_ids[c.id]}["{_text(c.label)}"]')
            lines += _scope(drawing, c.id, ids, fills, pad + "  ", cluster_ids)
            lines.append(f"{pad}end")
    return lines


def _node(box: Box, node_id: str, fills) -> str:
    rows = [f"<b>{_text(box.title)}</b>"]
    if box.op != box.title:
        rows.append(_text(box.op))
    if box.detail:
        rows.append(f"<small>{_text(box.detail)}</small>")
    rows.append(_text(fmt_shape(box.shape)))
    label = "<br/>".join(rows)
    open_, close = ("([", "])") if box.kind == "input" else ("[", "]")
    return f'{node_id}{open_}"{label}"{close}:::{fills[box_fill(box)]}'


def _legend(drawing: Drawing, links: dict[str, list[int]]) -> list[str]:
    """A small subgraph with one sample link per edge kind (styled like the real ones)."""
    lines = ['  subgraph legend["edges"]', "    direction LR"]
    count = sum(map(len, links.values()))  # legend links are numbered after the real ones
    for i, kind in enumerate(drawing.kinds):
        lines.append(f'    lg{i}a[" "] ---|"{_text(kind)}"| lg{i}b[" "]')
        links[kind].append(count + i)
    return lines + ["  end"]


def _link_style(kind: str, numbers: list[int]) -> str:
    s = edge_style(kind)
    return (f"  linkStyle {','.join(map(str, numbers))} stroke:{s.colour},"
            f"stroke-width:{s.width}px{_DASH[s.line]}")


_ENTITIES = {"&": "#amp;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "#": "#35;"}


def _text(text: str) -> str:
    """Mermaid's escapes inside a quoted label, in one pass (a `#` written in a name stays a
    `#`, not the start of an entity), control characters made visible first."""
    return "".join(_ENTITIES.get(c, c) for c in visible(text))
