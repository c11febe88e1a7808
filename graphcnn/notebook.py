"""What a checked graph shows in Jupyter: its drawing as SVG when Graphviz's `dot` is installed,
otherwise its summary table as HTML. CheckedGraph.summary and _repr_mimebundle_ come here."""
from __future__ import annotations

import shutil

from .summary import Summary


def summary(checked, depth: int | None = None, batch: int | None = None,
            by_op: bool = False) -> Summary:
    return Summary(checked, depth, batch, by_op)


def mimebundle(checked) -> dict[str, str]:
    """Jupyter's rich display of `checked` (a CheckedGraph), with a one-line text fallback."""
    text = (f"CheckedGraph {checked.name}: {len(checked.nodes)} nodes, "
            f"{checked.total_params:,} parameters")
    if shutil.which("dot") is None:  # no Graphviz: the table still shows the whole graph
        return {"text/html": Summary(checked)._repr_html_(), "text/plain": text}
    from .draw import build, render, to_dot

    return {"image/svg+xml": render(to_dot(build(checked)), "svg").decode("utf-8"),
            "text/plain": text}
