"""Graphviz DOT text for a Drawing, and rendering it to SVG / PNG with the `dot` program."""
from __future__ import annotations

import shutil
import subprocess
from html import escape as _html

from ..errors import GraphCnnError
from ..layers import fmt_shape
from .model import Box, Drawing
from .style import box_fill, dims, edge_style, visible

INSTALL_HINT = ("install Graphviz: `apt-get install graphviz` (Debian/Ubuntu), `brew install "
                "graphviz` (macOS), or see https://graphviz.org/download/; or draw to .mmd")


def to_dot(drawing: Drawing, direction: str = "TB") -> str:
    lines = [f"digraph {_q(drawing.name)} {{",
             f'  graph [rankdir={direction}, fontname="Helvetica", fontsize=12, labelloc=t, '
             f'nodesep=0.3, ranksep=0.35, newrank=true, label={_q(drawing.name)}];',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, '
             'penwidth=0.8];',
             '  edge [fontname="Helvetica", fontsize=8, arrowsize=0.6];']
    lines += _cluster_lines(drawing, None, "  ")
    lines += [f"  {_edge(drawing, e)}" for e in drawing.edges]
    lines += _legend(drawing)
    lines += _level_ranks(drawing)
    return "\n".join(lines + ["}"]) + "\n"


def _cluster_lines(drawing: Drawing, parent: str | None, pad: str) -> list[str]:
    """The boxes directly in `parent` (None: the top level), then its child clusters."""
    lines = [pad + _node(b) for b in drawing.boxes.values() if b.cluster == parent]
    for c in drawing.clusters.values():
        if c.parent == parent:
            lines.append(f"{pad}subgraph {_q('cluster_' + c.id)} {{")
            lines.append(f'{pad}  label={_q(c.label)}; style="rounded,dashed"; color="#7f7f7f"; '
                         f'fontsize=10; fontcolor="#555555";')
            lines += _cluster_lines(drawing, c.id, pad + "  ")
            lines.append(pad + "}")
    return lines


def _node(box: Box) -> str:
    rows = [f"<b>{escape(box.title)}</b>"]
    if box.op != box.title:
        rows.append(escape(box.op))
    if box.detail:
        rows.append(f'<font point-size="8">{escape(box.detail)}</font>')
    rows.append(f'<font point-size="8" color="#555555">{escape(fmt_shape(box.shape))}</font>')
    attrs = [f"label=<{'<br/>'.join(rows)}>", f'fillcolor="{box_fill(box)}"',
             f'class="{box.kind}"']
    if box.kind == "input":
        attrs.append("shape=oval")
    if box.kind == "block":
        attrs.append('style="filled"')
    if box.output:
        attrs.append("penwidth=2")
    return f"{_q(box.id)} [{', '.join(attrs)}];"


def _edge(drawing: Drawing, e) -> str:
    s = edge_style(e.kind)
    attrs = [f"label={_q(dims(e.shape))}", f'color="{s.colour}"', f"style={s.line}",
             f"penwidth={s.width}", f'class="{e.kind}"']
    if e.kind != "forward":
        attrs.append(f'fontcolor="{s.colour}"')
    src, dst = drawing.boxes[e.src], drawing.boxes[e.dst]
    if drawing.u_shaped and dst.level < src.level:  # the decoder climbs: rank it upside down
        attrs.append("dir=back")
        return f"{_q(e.dst)} -> {_q(e.src)} [{', '.join(attrs)}];"
    return f"{_q(e.src)} -> {_q(e.dst)} [{', '.join(attrs)}];"


def _legend(drawing: Drawing) -> list[str]:
    rows = "".join(f'<tr><td align="left"><font color="{edge_style(k).colour}">'
                   f'{edge_style(k).sample}</font></td><td align="left">{escape(k)}</td></tr>'
                   for k in drawing.kinds)
    label = (f'<<table border="1" color="#bbbbbb" cellborder="0" cellspacing="1">'
             f'<tr><td colspan="2"><b>edges</b></td></tr>{rows}</table>>')
    return [f'  "__legend__" [shape=plain, style="", class="legend", label={label}];',
            '  { rank=sink; "__legend__"; }']


def _level_ranks(drawing: Drawing) -> list[str]:
    """One rank per scale level, so an encoder-decoder reads as a U (newrank lets a rank
    cross clusters)."""
    if not drawing.u_shaped:
        return []
    levels: dict[int, list[str]] = {}
    for box in drawing.boxes.values():
        levels.setdefault(box.level, []).append(_q(box.id))
    return [f"  {{ rank=same; {'; '.join(ids)}; }}" for _, ids in sorted(levels.items())]


def escape(text: str) -> str:
    """Text in an HTML-like label: control characters made visible (XML has no place for most
    of them), then HTML's escapes."""
    return _html(visible(text))


def _q(text: str) -> str:
    """A DOT quoted string: control characters made visible, backslashes and quotes escaped."""
    return '"' + visible(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(dot_text: str, fmt: str) -> bytes:
    """SVG or PNG bytes from `dot`; a GraphCnnError saying how to install it when it is missing."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphCnnError(f"Graphviz's `dot` program, needed to write .{fmt}, is not on PATH",
                            hint=INSTALL_HINT)
    proc = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode("utf-8"),
                          capture_output=True, timeout=300)
    if proc.returncode != 0:
        raise GraphCnnError(f"Graphviz `dot` failed (exit {proc.returncode})",
                            received=proc.stderr.decode("utf-8", "replace").strip()[:500])
    return proc.stdout
