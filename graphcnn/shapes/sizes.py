"""The `graphcnn sizes` report: the admissible input sizes of a range, found exactly by a size
sweep (graph/sweep.py: the real checker's shape propagation at every size), the output size at
each, and the rule behind them (shapes/expr.py fits it)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import GraphCnnError
from ..graph.sweep import Sweep
from .expr import fit, progression


@dataclass
class SizeReport:
    low: int
    high: int
    axes: str
    outputs: list[str]
    sizes: list[int]
    shapes: dict[int, dict[str, tuple]]   # size -> output name -> shape (without the batch)
    input_rule: tuple[int, int] | None
    output_rule: str | None
    failure: str | None                   # why `high` fails, when nothing fits
    resized: str | None = None            # the first node whose parameter shapes follow the size

    def output_size(self, n: int):
        """The first output's spatial size (one number when square), or its whole shape."""
        shape = self.shapes[n][self.outputs[0]]
        spatial = shape[1:]
        if not spatial:
            return list(shape)
        return spatial[0] if len(set(spatial)) == 1 else list(spatial)

    def rule_text(self) -> str | None:
        parts = []
        if self.input_rule:
            first, step = self.input_rule
            parts.append(f"input >= {first}" if step == 1
                         else f"input = {first} + {step}k (k >= 0)")
        if self.output_rule is not None:
            parts.append(f"output = {self.output_rule}")
        elif self.sizes and len({str(self.output_size(n)) for n in self.sizes}) == 1:
            parts.append(f"output = {self.output_size(self.sizes[0])} at every size")
        return ", ".join(parts) or None


def admissible(sweep: Sweep, low: int, high: int) -> SizeReport:
    sizes, shapes, first_params, resized = [], {}, None, None
    for n in range(low, high + 1):
        infos = sweep.admits(n)
        if infos is None:
            continue
        by_id = {i.id: i.shape for i in infos}
        sizes.append(n)
        shapes[n] = {o: by_id.get(o, sweep.shapes(n).get(o)) for o in sweep.flat.outputs}
        params = [(i, {k: p.shape for k, p in i.params.items()}) for i in infos]
        first_params = first_params or params
        resized = resized or next((f"{a.op} '{a.id}'" for (a, pa), (_, pb) in
                                   zip(first_params, params) if pa != pb), None)
    report = SizeReport(low, high, sweep.describe(), list(sweep.flat.outputs), sizes, shapes,
                        progression(sizes, low, high), None, None, resized)
    report.output_rule = _output_rule(report)
    if not sizes:
        report.failure = _failure(sweep, high)
    return report


def _output_rule(report: SizeReport) -> str | None:
    """One formula per spatial axis of the first output ('input - 184', or '388 x (input - 184)'
    when one axis varies alone); None when an axis follows no rule or nothing varies."""
    dims = [report.shapes[n][report.outputs[0]][1:] for n in report.sizes]
    if not dims or not dims[0] or len(set(dims)) == 1:
        return None
    parts = []
    for k in range(len(dims[0])):
        values = [(n, d[k]) for n, d in zip(report.sizes, dims)]
        rule = values[0][1] if len({v for _, v in values}) == 1 else fit("input", values)
        if rule is None:
            return None
        parts.append(str(rule))
    if len(set(parts)) == 1:
        return parts[0]
    return " x ".join(f"({p})" if " " in p else p for p in parts)


def _failure(sweep: Sweep, n: int) -> str:
    try:
        sweep.run(n)
    except GraphCnnError as exc:
        return str(exc)
    return ""

