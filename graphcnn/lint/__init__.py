"""Portability lint (`graphcnn lint`, the portability section of `graphcnn check`) and the
rewrites of `graphcnn compile --portable`."""
from .findings import Finding, lint
from .rewrite import portable
from .rules import RULES, Rule, register_rule, unregister_rule

__all__ = ["Finding", "RULES", "Rule", "lint", "portable", "register_rule", "unregister_rule"]
