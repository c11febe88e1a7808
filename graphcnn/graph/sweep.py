"""A size sweep: the checker's shape propagation re-run at any size of the input's spatial axes
(the spec is parsed and expanded once; a U-Net takes ~2 ms per size).

Axes that vary: the spatial axes of every input, symbolic (`[3, H, W]`) or not (a concrete
spec is treated as if its spatial axes were symbolic). By default they all take the same size n
(square inputs); `axis` varies that one axis alone while the others keep the spec's sizes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

from ..errors import GraphCnnError, SpecError
from ..spec.expand import FlatSpec, flatten
from .propagate import propagate
from .wiring import build_graph, topological

CONVENTIONAL = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}
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
