"""`graphcnn sizes SPEC`: the input sizes a network accepts, the output size at each, the rule."""
from __future__ import annotations

from ..errors import SpecError
from .args import spec_positional
from .output import out, print_json
from .registry import command, configure

PER_LINE = 8
# Sizes one run tries: each is a full shape check (about 1 ms for a small spec, 5 for ResNet-18),
# so --range 1:100000000 would run for a day.
MAX_SIZES = 10_000


@command("sizes", "list the spatial input sizes a spec accepts and the output size at each")
def cmd_sizes(args) -> int:
    from ..api import load_spec
    from ..graph.sweep import Sweep
    from ..shapes.sizes import admissible

    low, high = _range(args.range)
    report = admissible(Sweep.of_spec(load_spec(args.spec), args.axis), low, high)
    if args.json:
        print_json(as_json(report))
    else:
        out(render(args.spec, report))
    return 0


@configure(cmd_sizes)
def _sizes_args(p):
    spec_positional(p, help="a spec YAML file (symbolic sizes like [3, H, W] or concrete)")
    p.add_argument("--range", default="1:1100", metavar="A:B",
                   help="the input sizes to try, both ends included (default %(default)s)")
    p.add_argument("--axis", default=None, metavar="NAME",
                   help="vary only this spatial axis (a symbol of the spec, or L / H, W / D, H, W "
                        "by position); the others keep the spec's sizes. Default: all spatial "
                        "axes of every input take the same size")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(v) for v in text.split(":"))
    except ValueError:
        raise SpecError("--range takes A:B with whole numbers", received=text) from None
    if not 1 <= low <= high:
        raise SpecError("--range needs 1 <= A <= B", received=text)
    if high - low + 1 > MAX_SIZES:
        raise SpecError(f"--range covers at most {MAX_SIZES:,} sizes", received=text,
                        hint="give a smaller range: the rule it prints, when one is found, "
                        "holds past it")
    return low, high


def render(spec: str, report) -> str:
    head = (f"{spec}: sizes {report.low}..{report.high} with {report.axes}; "
            f"output {report.outputs[0]}")
    if not report.sizes:
        return f"{head}\nno admissible size; at {report.high}: {report.failure}"
    lines = [head, f"admissible: {len(report.sizes)} sizes: {compact(report.sizes)}"]
    rule = report.rule_text()
    lines.append(f"rule: {rule}" if rule else "rule: none found (the sizes are listed)")
    if report.resized:
        lines.append(f"note: the parameter shapes of {report.resized} change with the input "
                     "size: each size is another network (weights trained at one do not fit)")
    pairs = [f"{n} -> {_size(report.output_size(n))}" for n in report.sizes]
    width = max(len(p) for p in pairs) + 2
    for i in range(0, len(pairs), PER_LINE):
        lines.append("  " + "".join(p.ljust(width) for p in pairs[i:i + PER_LINE]).rstrip())
    return "\n".join(lines)


def _size(value) -> str:
    return "x".join(map(str, value)) if isinstance(value, list) and len(value) > 1 else str(value)


def compact(sizes: list[int]) -> str:
    """Runs of equal steps written first, first+step, ..., last."""
    parts, i = [], 0
    while i < len(sizes):
        j = i + 1
        if j < len(sizes):
            step = sizes[j] - sizes[i]
            while j + 1 < len(sizes) and sizes[j + 1] - sizes[j] == step:
                j += 1
        run = sizes[i:j + 1] if j < len(sizes) else sizes[i:]
        if len(run) >= 4:
            parts.append(f"{run[0]}, {run[1]}, ..., {run[-1]}")
            i = j + 1
        else:
            parts.append(str(sizes[i]))
            i += 1
    return ", ".join(parts)


def as_json(report) -> dict:
    return {"range": [report.low, report.high], "axes": report.axes, "outputs": report.outputs,
            "admissible": [{"input": n, "output": {o: list(s) for o, s in report.shapes[n].items()}}
                           for n in report.sizes],
            "input_rule": ({"first": report.input_rule[0], "step": report.input_rule[1]}
                           if report.input_rule else None),
            "output_rule": str(report.output_rule) if report.output_rule is not None else None,
            "rule": report.rule_text(), "failure": report.failure,
            "parameters_change_at": report.resized}
