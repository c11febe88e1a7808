"""Diagrams of the layer graph: a folded drawing model (model.py) written as Graphviz DOT
(dot.py, rendered to SVG/PNG by the `dot` program) or as a Mermaid flowchart (mermaid.py)."""
from .dot import render, to_dot
from .mermaid import to_mermaid
from .model import Drawing, build

__all__ = ["Drawing", "build", "render", "to_dot", "to_mermaid"]
