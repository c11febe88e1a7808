"""Run the portability rules over a checked graph; findings print like a linter's."""
from __future__ import annotations

from dataclasses import dataclass

from ..graph import CheckedGraph
from .rules import RULES, Rule


@dataclass(frozen=True)
class Finding:
    rule: Rule
    node: str
    loc: str | None   # file:line:col of the node in the spec
    detail: str       # what happens at this node

    def render(self) -> str:
        head = f"{self.loc}: " if self.loc else ""
        return (f"{head}{self.node}: {self.rule.id} {self.rule.title}: {self.detail}\n"
                f"    differs: {self.rule.differs}\n"
                f"    see: {', '.join(self.rule.refs)}\n"
                f"    rewrite: {self.rule.rewrite}")

    def as_json(self) -> dict:
        return {"rule": self.rule.id, "title": self.rule.title, "node": self.node,
                "loc": self.loc, "detail": self.detail, "differs": self.rule.differs,
                "references": list(self.rule.refs), "rewrite": self.rule.rewrite,
                "rewritable": self.rule.rewritable}


def lint(checked: CheckedGraph) -> list[Finding]:
    """Every rule on every node, in graph order."""
    found = []
    for node in checked.nodes:
        for rule in RULES:
            detail = rule.check(node)
            if detail:
                found.append(Finding(rule, node.id, str(node.loc) if node.loc else None, detail))
    return found
