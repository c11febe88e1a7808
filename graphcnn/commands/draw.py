"""`graphcnn draw`: a diagram of the layer graph as SVG, PNG, DOT or Mermaid."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..api import check_spec
from ..errors import GraphCnnError
from .args import spec_positional
from .output import out
from .registry import command, configure

FORMATS = (".svg", ".png", ".dot", ".mmd")


@command("draw", "draw the layer graph (boxes, blocks as clusters, skip edges by kind)")
def cmd_draw(args) -> int:
    from ..draw import build, to_dot, to_mermaid
    from ..fileio import write_bytes_atomic, write_text_atomic

    target = Path(args.output)
    suffix = target.suffix.lower()
    if suffix not in FORMATS:
        raise GraphCnnError("unknown diagram format", expected=" or ".join(FORMATS),
                            received=str(target))
    drawing = build(check_spec(args.spec), depth=args.depth)
    if suffix == ".mmd":
        write_text_atomic(target, to_mermaid(drawing, args.direction))
    elif suffix == ".dot":
        write_text_atomic(target, to_dot(drawing, args.direction))
    else:
        write_bytes_atomic(target, _rendered(to_dot(drawing, args.direction), target))
    out(f"wrote {target}: {len(drawing.boxes)} boxes, {len(drawing.edges)} edges, "
        f"{len(drawing.clusters)} clusters")
    return 0


def _rendered(dot_text: str, target: Path) -> bytes:
    """Render with Graphviz; without it, keep the .dot next to the target and say how to install."""
    from ..draw.dot import INSTALL_HINT, render
    from ..fileio import write_text_atomic

    if shutil.which("dot") is None:
        fallback = target.with_suffix(".dot")
        write_text_atomic(fallback, dot_text)
        out(f"Graphviz is not installed. {INSTALL_HINT}")
        raise GraphCnnError(f"cannot write {target}: Graphviz's `dot` program is not on PATH",
                            hint=f"wrote {fallback} instead; render it later with "
                                 f"`dot -T{target.suffix[1:].lower()} {fallback} -o {target}`")
    return render(dot_text, target.suffix[1:].lower())


@configure(cmd_draw)
def _draw_args(p):
    spec_positional(p)
    p.add_argument("-o", "--output", required=True,
                   help="net.svg or net.png (needs Graphviz), net.dot, or net.mmd (Mermaid)")
    p.add_argument("--depth", type=int, default=None,
                   help="fold block instances below K levels into one box (1: top level only)")
    p.add_argument("--direction", choices=("TB", "LR"), default="TB",
                   help="top-to-bottom (default) or left-to-right")
