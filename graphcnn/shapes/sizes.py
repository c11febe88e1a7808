"""Admissible input sizes, found exactly: the real checker's shape propagation re-run at every
size of a range (the spec is parsed and expanded once; a U-Net takes ~2 ms per size).

Axes that vary: the spatial axes of every input, symbolic (`[3, H, W]`) or not (a concrete
spec is treated as if its spatial axes were symbolic). By default they all take the same size n
(square inputs); `axis` varies that one axis alone while the others keep the spec's sizes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

from ..errors import GraphCnnError, SpecError
from ..graph.check import build_graph, propagate, topological
from ..spec.expand import FlatSpec, flatten
from .expr import fit, progression

CONVENTIONAL = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}
DEFAULT_RANGE = (1, 1100)
NEAREST_STEPS, NEAREST_SECONDS = 64, 3.0  # an error path: bounded search


def axis_names(shape) -> list[str]:
    """Names of the spatial axes: the symbol where the spec wrote one, else L / H, W / D, H, W."""
    spatial = list(shape[1:])
    conventional = CONVENTIONAL.get(len(spatial), ())
    return [d if isinstance(d, str) else conventional[i] for i, d in enumerate(spatial)]


def is_symbolic(inputs: dict) -> bool:
    return any(isinstance(d, str) for shape in inputs.values() for d in shape)


@dataclass(frozen=True)
class Axis:
    input: str
    index: int   # position in the shape (0 is channels)
    name: str


class Sweep:
    """The spec expanded once; node shapes re-propagated for any size of the varying axes."""

    def __init__(self, flat: FlatSpec, order, axis: str | None = None, keep_offsets: bool = False):
        self.flat, self.order, self.keep_offsets = flat, order, keep_offsets
        self.axes = [Axis(name, i + 1, a) for name, shape in flat.inputs.items()
                     for i, a in enumerate(axis_names(shape)) if axis is None or a == axis]
        if not self.axes:
            known = sorted({a for s in flat.inputs.values() for a in axis_names(s)})
            raise SpecError("no input has that spatial axis" if axis
                            else "no input has spatial axes",
                            expected=", ".join(known) or "an input [C, L] or more", received=axis)
        for name, shape in flat.inputs.items():
            if isinstance(shape[0], str):
                raise SpecError(f"input '{name}': the channel count must be a number",
                                received=str(list(shape)))
        first = self.axes[0]
        self.base = flat.inputs[first.input][first.index]

    @classmethod
    def of_spec(cls, spec, axis: str | None = None) -> "Sweep":
        flat = flatten(spec)
        return cls(flat, topological(build_graph(flat), flat), axis)

    def shapes(self, n: int) -> dict[str, tuple]:
        """Input shapes with every varying axis at n (plus its offset from the first one when
        offsets are kept: a 570 x 600 input moves along 570+d x 600+d)."""
        bound = {k: list(v) for k, v in self.flat.inputs.items()}
        for ax in self.axes:
            offset = bound[ax.input][ax.index] - self.base if self.keep_offsets else 0
            bound[ax.input][ax.index] = n + offset
        for name, shape in bound.items():
            fixed = [d for d in shape if isinstance(d, str)]
            if fixed:
                raise SpecError(f"input '{name}' axis {fixed[0]} is symbolic but does not vary",
                                hint="vary all spatial axes together (leave out --axis)")
        return {k: tuple(v) for k, v in bound.items()}

    def run(self, n: int):
        """Every NodeInfo at size n; raises the checker's error when n does not fit."""
        return propagate(replace(self.flat, inputs=self.shapes(n)), self.order)

    def admits(self, n: int):
        if n < 1 or any(d < 1 for s in self.shapes(n).values() for d in s):
            return None
        try:
            return self.run(n)
        except GraphCnnError:
            return None

    def describe(self) -> str:
        names = " = ".join(dict.fromkeys(a.name for a in self.axes))
        return f"{names} = n"


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


def nearest(sweep: Sweep, n: int) -> list[int]:
    """The closest admissible sizes below and above n, each within NEAREST_STEPS of it."""
    found: dict[str, int] = {}
    start = time.monotonic()
    for d in range(1, NEAREST_STEPS + 1):
        for side, m in (("below", n - d), ("above", n + d)):
            if side not in found and sweep.admits(m) is not None:
                found[side] = m
        if len(found) == 2 or time.monotonic() - start > NEAREST_SECONDS:
            break
    return sorted(found.values())
