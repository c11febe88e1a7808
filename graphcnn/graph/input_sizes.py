"""What the checker says about input sizes: a concrete size that does not fit names the nearest
sizes that do; a symbolic spec is checked at its smallest admissible size."""
from __future__ import annotations

from dataclasses import replace

from ..errors import GraphCnnError, InputsDisagree, ShapeError, SpecError
from .sweep import Sweep, axis_names, is_symbolic, nearest

DEFAULT_RANGE = (1, 1100)  # where a symbolic spec's smallest admissible size is looked for


def explain_size(flat, order, exc: ShapeError, spec) -> GraphCnnError:
    """`exc` restated at the input when another input size fits: 'input 570 x 570 does not fit:
    dec4.crop (where): ...; nearest admissible sizes: 556, 572'. Errors no size fixes
    (channels, wiring) come back unchanged."""
    spatial = [(k, s) for k, s in flat.inputs.items() if len(s) >= 2]
    if not spatial or is_symbolic(flat.inputs) or isinstance(exc, InputsDisagree):
        return exc
    sweep = Sweep(flat, order, keep_offsets=True)
    near = [sweep.shapes(n) for n in _nearest(sweep)]
    if not near:
        return exc
    name, shape = spatial[0]
    dims = lambda s: " x ".join(map(str, s[1:]))  # noqa: E731
    square = all(len(set(s[name][1:])) == 1 for s in near)
    sizes = ", ".join(str(s[name][1]) if square else dims(s[name]) for s in near)
    where = f"{exc.node} ({exc.loc})" if exc.loc else exc.node
    err = ShapeError(f"input {dims(shape)} does not fit: {where}: {exc.message}",
                     loc=spec.location(("inputs", name)) if spec is not None else None,
                     expected=exc.expected, received=exc.received, rule=exc.rule,
                     hint="; ".join(filter(None, [exc.hint, f"nearest admissible sizes: {sizes}"])),
                     via=exc.via)
    err.node = exc.node  # for callers; the message already names it after the input
    return err


def _nearest(sweep: Sweep) -> list[int]:
    """The admissible sizes nearest the spec's (one seam: brute-force tests skip the search)."""
    return nearest(sweep, sweep.base)


def bind_smallest(flat, order, spec) -> tuple:
    """The flat spec with every symbolic axis at the smallest admissible size, and a note."""
    sweep = Sweep(flat, order)
    low, high = DEFAULT_RANGE
    for n in range(low, high + 1):
        if sweep.admits(n) is not None:
            break
    else:
        raise SpecError(f"no input size in {low}..{high} fits this network",
                        hint="graphcnn sizes SPEC --range A:B explains further")
    notes = []
    for name, shape in flat.inputs.items():
        symbols = [a for a, d in zip(axis_names(shape), shape[1:]) if isinstance(d, str)]
        if symbols:
            loc = spec.location(("inputs", name)) if spec is not None else None
            notes.append(f"{loc or name}: note: input '{name}' {list(shape)} checked at "
                         f"{' = '.join(symbols)} = {n}, its smallest admissible size "
                         "(graphcnn sizes lists them all)")
    return replace(flat, inputs=sweep.shapes(n)), notes
