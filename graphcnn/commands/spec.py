"""Commands that read a spec and report on it: check and summary."""
from __future__ import annotations

from ..api import check_spec
from .args import MAX_BATCH, limits, positive_int, spec_arg
from .output import out, print_json
from .registry import command, configure


@command("check", "validate a spec: wiring, shapes, parameter counts")
def cmd_check(args) -> int:
    from ..spec.labels import checked_labels

    checked = check_spec(args.spec, limits(args))
    checked_labels(checked)  # the labels: file reads, and names each class of the first output
    for warning in checked.warnings:
        out(warning)
    out(f"{args.spec}: ok: {len(checked.nodes)} nodes, {checked.total_params:,} parameters, "
        f"output {', '.join(_shape(checked, o) for o in checked.outputs)}")
    _portability_section(checked)
    return 0


def _portability_section(checked) -> None:
    """The lint findings (graphcnn lint), printed only when there are some."""
    from ..lint import lint

    findings = lint(checked)
    if findings:
        out(f"portability: {len(findings)} finding(s) (details: graphcnn lint SPEC)")
        for finding in findings:
            out("  " + finding.render().splitlines()[0])


configure(cmd_check)(spec_arg)


def _shape(checked, name):
    from ..layers import fmt_shape
    return f"{name} {fmt_shape(checked.shape_of(name))}"


@command("summary", "print the layer table: shapes, parameters, MACs, receptive fields")
def cmd_summary(args) -> int:
    from ..summary import as_json, render

    checked = check_spec(args.spec, limits(args))
    batch, training = args.batch, None
    if args.training:
        from ..train.memory import training_memory

        batch = batch or default_batch(checked)
        training = training_memory(checked, batch)
    if args.json:
        print_json(as_json(checked, batch=batch, by_op=args.by_op, training=training))
    else:
        out(render(checked, depth=args.depth, batch=batch, by_op=args.by_op, training=training))
    return 0


def default_batch(checked) -> int:
    """The spec's `training: batch`, else 1."""
    section = getattr(checked.spec, "training", None)
    return section.batch if section is not None else 1


@configure(cmd_summary)
def _summary_args(p):
    spec_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--depth", type=int, default=None, help="fold block instances below K levels")
    p.add_argument("--batch", type=positive_int(MAX_BATCH), default=None, metavar="B",
                   help="add activation memory per layer at batch B, the peak of an inference "
                        "pass, weight bytes per precision and FLOPs (2 x MACs)")
    p.add_argument("--by-op", action="store_true", help="one row per op type: totals")
    p.add_argument("--training", action="store_true",
                   help="add the training step's memory at batch B (default: the spec's "
                        "training batch, else 1): forward bytes each layer keeps for the "
                        "backward pass, parameters, gradients, optimizer state and the "
                        "step's predicted peak")
