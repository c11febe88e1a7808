"""Integer size expressions over one symbol, and fitting one to measured sizes.

A size rule of a window op is out = floor((L + b) / m) or an integer multiple of L plus a
constant; composing them gives c + a * floor((L + b) / m) (nested floors of integer affine maps
collapse: floor((floor(x) + c) / m) = floor((x + c) / m)) or, on an arithmetic progression of
admissible sizes, an exact affine map with a rational slope. `fit` finds the simplest of these
that reproduces every measured point exactly; it never extrapolates a guess.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

MAX_DIVISOR = 64


@dataclass(frozen=True)
class Affine:
    """slope * var + offset (slope a Fraction: exact on the points it was fitted to)."""
    var: str
    slope: Fraction
    offset: Fraction

    def __call__(self, n: int) -> Fraction:
        return self.slope * n + self.offset

    def __str__(self) -> str:
        if self.slope == 0:
            return str(self.offset)
        s = self.slope
        head = self.var if s == 1 else (f"{s.numerator}*{self.var}" if s.denominator == 1
                                        else f"{self.var}*{s.numerator}/{s.denominator}"
                                        if s.numerator != 1 else f"{self.var}/{s.denominator}")
        return head + _signed(self.offset)


@dataclass(frozen=True)
class FloorAffine:
    """scale * floor((var + shift) / divisor) + offset, all integers."""
    var: str
    scale: int
    shift: int
    divisor: int
    offset: int

    def __call__(self, n: int) -> int:
        return self.scale * ((n + self.shift) // self.divisor) + self.offset

    def __str__(self) -> str:
        if self.shift == self.divisor - 1:
            core = f"ceil({self.var}/{self.divisor})"
        else:
            core = f"floor(({self.var}{_signed(self.shift)})/{self.divisor})"
        head = core if self.scale == 1 else f"{self.scale}*{core}"
        return head + _signed(self.offset)


def _signed(value) -> str:
    return "" if value == 0 else (f" + {value}" if value > 0 else f" - {-value}")


def fit(var: str, points: list[tuple[int, int]]):
    """The simplest rule reproducing every (input, output) point exactly, or None."""
    if len(points) < 2:
        return None
    affine = fit_affine(var, points)
    return affine if affine is not None else fit_floor(var, points)


def fit_affine(var: str, points: list[tuple[int, int]]) -> Affine | None:
    (x0, y0), (x1, y1) = points[0], points[-1]
    if x0 == x1:
        return None
    slope = Fraction(y1 - y0, x1 - x0)
    rule = Affine(var, slope, y0 - slope * x0)
    return rule if all(rule(x) == y for x, y in points) else None


def fit_floor(var: str, points: list[tuple[int, int]]) -> FloorAffine | None:
    for divisor in range(2, MAX_DIVISOR + 1):
        for shift in range(divisor):
            floors = [(x + shift) // divisor for x, _ in points]
            pairs = [(f, y) for f, (_, y) in zip(floors, points)]
            inner = fit_affine("f", pairs)
            if inner is None or inner.slope.denominator != 1 or inner.offset.denominator != 1:
                continue
            if inner.slope != 0:
                return FloorAffine(var, int(inner.slope), shift, divisor, int(inner.offset))
    return None


def progression(values: list[int], low: int, high: int) -> tuple[int, int] | None:
    """(first, step) when `values` are exactly first, first + step, ... up to `high` (a rule
    that holds on the whole range, not just on a sample), else None."""
    if len(values) < 2:
        return None
    first, step = values[0], values[1] - values[0]
    return (first, step) if values == list(range(first, high + 1, step)) else None
