"""`graphcnn lint`: portability findings for a spec (see docs/portability.md)."""
from __future__ import annotations

from ..api import check_spec
from .args import limits, spec_arg
from .output import out, print_json
from .registry import command, configure


@command("lint", "flag constructs that frameworks and ONNX hosts compute differently")
def cmd_lint(args) -> int:
    from ..lint import lint

    checked = check_spec(args.spec, limits(args))
    findings = lint(checked)
    if args.json:
        print_json({"spec": args.spec, "findings": [f.as_json() for f in findings]})
    else:
        for finding in findings:
            out(finding.render())
        out(f"{args.spec}: {len(findings)} portability finding(s)"
            + (f"; {sum(f.rule.rewritable for f in findings)} rewritable by compile --portable"
               if findings else ""))
    return 1 if args.strict and findings else 0


@configure(cmd_lint)
def _lint_args(p):
    spec_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--strict", action="store_true", help="exit 1 when there are findings")
