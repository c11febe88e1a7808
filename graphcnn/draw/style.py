"""Colours and line styles shared by the DOT and Mermaid writers."""
from __future__ import annotations

from dataclasses import dataclass

from ..layers import REGISTRY


@dataclass(frozen=True)
class EdgeStyle:
    colour: str
    line: str  # solid | dashed | dotted
    width: float
    sample: str  # how the legend draws the line in text


EDGE_STYLES = {
    "forward": EdgeStyle("#333333", "solid", 1.2, "━━━"),
    "residual": EdgeStyle("#1f77b4", "dashed", 1.8, "╍╍╍"),
    "concat": EdgeStyle("#2ca02c", "dashed", 1.8, "╍╍╍"),
    "highway": EdgeStyle("#d62728", "dotted", 2.0, "┅┅┅"),
    "crop": EdgeStyle("#8c564b", "dashed", 1.8, "╍╍╍"),
    "unpool": EdgeStyle("#9467bd", "dotted", 2.0, "┅┅┅"),
}
DEFAULT_EDGE = EdgeStyle("#ff7f0e", "dashed", 1.5, "╍╍╍")  # kinds added later, until styled

# Fill colour by op family (Layer.draw_family), so stages of a drawing read at a glance.
FAMILY_FILLS = {
    "upsample": "#f2d7ee",  # transposed convs, upsampling, unpooling
    "conv": "#dbe9f6",
    "pool": "#fde2c8",      # pooling and subsampling
    "norm": "#fff3c4",
    "merge": "#f8d0d0",     # add, concat, highway
    "dense": "#e4dcf1",     # linear, flatten, reshape, permute
    "crop": "#e8dccb",      # crop, pad
}
INPUT_FILL, BLOCK_FILL, OTHER_FILL = "#ffffff", "#e6e6e6", "#e3f2dc"


def edge_style(kind: str) -> EdgeStyle:
    return EDGE_STYLES.get(kind, DEFAULT_EDGE)


def fill(op: str, box_kind: str) -> str:
    if box_kind == "input":
        return INPUT_FILL
    if box_kind == "block":
        return BLOCK_FILL
    layer = REGISTRY.get(op)
    return FAMILY_FILLS.get(layer.draw_family, OTHER_FILL) if layer else OTHER_FILL


def box_fill(box) -> str:
    """The box's fill: its highlight where a caller set one, else by its op's family."""
    return box.highlight or fill(box.op, box.kind)


def dims(shape) -> str:
    """A tensor shape without the batch axis, as the chapter's figures write it: 16×32×32."""
    return "×".join(str(d) for d in shape)


def visible(text: str) -> str:
    """`text` with its control characters written as escapes (`\\n`, `\\x01`): a name is drawn
    as one line, and a newline in an id cannot start a statement of the drawing's language."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
