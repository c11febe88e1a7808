"""Portability lint (`graphcnn lint`, the portability section of `graphcnn check`) and the
rewrites of `graphcnn compile --portable`."""
from .findings import Finding, lint
from .rewrite import portable
from .rules import RULES, Rule

__all__ = ["Finding", "RULES", "Rule", "lint", "portable"]
