"""Weights by spec id, in and out: a checkpoint (.npz, .safetensors, PyTorch .pth/.pt/.bin) read
through a name map onto the spec's parameters, with a report of what went where; and a model's
weights written back out, under spec ids or under a map's checkpoint names.

Loading is strict by default: every checkpoint tensor must land on a spec parameter of the same
shape (or one that differs only by size-1 axes, or by the shape a map rule gives), and every
spec parameter must be filled. Everything is checked from the checkpoint's headers before a
tensor is read. `partial` loads what fits and lists the rest, for a new head.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..graph import CheckedGraph
from ..graph.names import is_generated
from .namemap import IDENTITY, NOT_WEIGHTS, SKIP, NameMap, choose_map

SHOWN = 6  # names listed per kind of problem


def expected_weights(checked: CheckedGraph) -> dict[str, tuple]:
    return {f"{n.id}.{name}": p.shape for n in checked.nodes for name, p in n.params.items()}


@dataclass
class LoadReport:
    """What a load did: printed by every command that loads weights."""

    path: str
    map: str
    total: int = 0                 # tensors in the checkpoint
    loaded: list[str] = field(default_factory=list)        # spec ids filled
    statistics: int = 0            # batchnorm running_mean/var pairs among them
    counters: int = 0              # num_batches_tracked entries skipped
    skipped_by_map: int = 0        # [regex, null] rules
    ignored: list[str] = field(default_factory=list)       # partial: keys not loaded, and why
    kept: list[str] = field(default_factory=list)          # partial: spec ids left initial
    container: str | None = None
    prefix: str | None = None
    not_tensors: int = 0

    def lines(self) -> list[str]:
        weights = len(self.loaded) - 2 * self.statistics
        head = (f"loaded {len(self.loaded)}/{self.total} tensors from {Path(self.path).name} "
                f"(map: {self.map}): {weights} weights, {self.statistics} batchnorm statistics "
                f"pairs")
        skipped = [f"{n} {what}" for n, what in [(self.counters, "num_batches_tracked"),
                                                 (self.skipped_by_map, "by the map's null rules"),
                                                 (self.not_tensors, "non-tensor values")] if n]
        if skipped:
            head += "; skipped " + ", ".join(skipped)
        found = [f"under '{self.container}'" if self.container else "",
                 f"prefix '{self.prefix}' removed" if self.prefix else ""]
        if any(found):
            head += " (" + ", ".join(f for f in found if f) + ")"
        lines = [head]
        if self.ignored:
            lines.append(f"not loaded ({len(self.ignored)}): " + _few(self.ignored))
        if self.kept:
            lines.append(f"kept their initial values ({len(self.kept)}): " + _few(self.kept))
        return lines

    def __str__(self) -> str:
        return "\n".join(self.lines())


def load_weights(path: str | Path, checked: CheckedGraph, *, spec=None, map_name: str | None = None,
                 key: str | None = None, partial: bool = False
                 ) -> tuple[dict[str, np.ndarray], LoadReport]:
    """Arrays by spec id (float32) and the report. `spec` gives the `weights:` maps."""
    from ..checkpoints import read_checkpoint

    ckpt = read_checkpoint(path, key=key)
    want = expected_weights(checked)
    name_map = choose_map(spec, map_name, list(ckpt.entries), set(want))
    plan, report = _plan(ckpt, name_map, want, partial)
    arrays = {}
    for target, (entry, shape) in plan.items():
        arrays[target] = entry.read_float32().reshape(shape)
    return arrays, report


def _plan(ckpt, name_map: NameMap, want: dict[str, tuple], partial: bool):
    """Which checkpoint entry fills which spec parameter, checked from headers only."""
    report = LoadReport(str(ckpt.path), name_map.name, total=len(ckpt.entries),
                        container=ckpt.container, prefix=ckpt.prefix,
                        not_tensors=len(getattr(ckpt, "ignored", []) or []))
    plan, sources = {}, {}
    unmatched, unknown, twice, shapes, integers = [], [], [], [], []
    for name, entry in ckpt.entries.items():
        if NOT_WEIGHTS.search(name):
            report.counters += 1
            continue
        target = name_map.target(name) if name_map is not IDENTITY else name
        if target == SKIP:
            report.skipped_by_map += 1
        elif target is None:
            unmatched.append(name)
        elif target not in want:
            unknown.append(name if target == name else f"{name} -> {target}")
        elif target in plan:
            twice.append(f"{sources[target]} and {name} -> {target}")
        elif not entry.dtype.startswith(("float", "bfloat")):
            integers.append(f"{name} ({entry.dtype}) -> {target}")
        elif not _fits(entry.shape, want[target]):
            shapes.append(f"{name} {list(entry.shape)} -> {target} {list(want[target])}")
        else:
            plan[target], sources[target] = (entry, want[target]), name
    missing = [t for t in want if t not in plan]
    problems = [("keys no rule of the map places", unmatched),
                ("keys that name no spec parameter", unknown),
                ("spec parameters filled twice", twice), ("shapes that differ", shapes),
                ("tensors that are not floating point", integers),
                ("spec parameters no key fills", missing)]
    if twice or integers or (not partial and any(items for _, items in problems)):
        raise DataError(f"checkpoint {ckpt.path} does not fit the spec (map: {name_map.name})" +
                        "".join(f"\n  {what} ({len(items)}): {_few(items)}"
                                for what, items in problems if items),
                        hint=_hint(name_map, partial, missing, unmatched))
    if partial and not plan:  # nothing fits: a wrong map or file, not a new head
        raise DataError(f"checkpoint {ckpt.path} gives none of the spec's parameters "
                        f"(map: {name_map.name}), even with --partial" +
                        "".join(f"\n  {what} ({len(items)}): {_few(items)}"
                                for what, items in problems if items))
    report.ignored = unmatched + unknown + shapes
    report.kept = missing
    report.loaded = list(plan)
    report.statistics = sum(t.endswith(".running_mean") for t in plan)
    return plan, report


def _fits(have: tuple, want: tuple) -> bool:
    """Equal shapes, or the same sizes apart from size-1 axes ([C, 1, 1] layer scale -> [C])."""
    have, want = tuple(have), tuple(want)
    return have == want or [d for d in have if d != 1] == [d for d in want if d != 1]


def _hint(name_map: NameMap, partial: bool, missing: list, unmatched: list) -> str | None:
    if partial:
        return None
    if name_map is IDENTITY and unmatched:
        return ("the names are not spec ids: give a map (--map NAME of the spec's weights: "
                "section, or --map FILE.yaml)")
    return "--partial loads what fits and keeps the initial values of the rest" if missing else None


def _few(items: list[str]) -> str:
    more = f" ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def load_into_model(model, path: str | Path, *, weights_map: str | None = None,
                    weights_key: str | None = None, partial: bool = False) -> LoadReport:
    """Replace a graphcnn model's parameters with a checkpoint's (in place), through the spec the
    model carries: its ids and its `weights:` maps. A model whose parameters a transform
    renamed (--fold-bn, int8) is refused: load the weights into the spec instead."""
    from onnx import numpy_helper

    from ..errors import RunError
    from ..graph import check
    from ..spec import NetworkSpec

    meta = {p.key: p.value for p in model.metadata_props}
    if "graphcnn_spec" not in meta:
        raise RunError("this model carries no graphcnn spec, so its parameters have no spec ids",
                       hint="load the weights when compiling: graphcnn compile SPEC --weights W")
    checked = check(NetworkSpec.from_text(meta["graphcnn_spec"], "<the model's spec>"))
    checked = checked.reaching_outputs()
    arrays, report = load_weights(path, checked, spec=checked.spec, map_name=weights_map,
                                  key=weights_key, partial=partial)
    stored = {t.name: i for i, t in enumerate(model.graph.initializer)}
    absent = [name for name in arrays if name not in stored]
    if absent:
        raise RunError(f"the model has no parameter {absent[0]} (and {len(absent) - 1} more): "
                       "a transform (--fold-bn, --quantize) renamed them",
                       hint="load the weights when compiling: graphcnn compile SPEC --weights W")
    for name, array in arrays.items():
        old = model.graph.initializer[stored[name]]
        dtype = numpy_helper.to_array(old).dtype if not old.external_data else np.float32
        new = numpy_helper.from_array(array.astype(dtype), name)
        old.CopyFrom(new)
    return report


def model_weights(model) -> dict[str, np.ndarray]:
    """The parameter initializers of a graphcnn model, not its constants. The naming rule
    (graph/names.py) makes this exact: constants are `const.*` or `<id>/<name>`, and `check`
    refuses an id that holds `/` or starts with `const`, so no parameter `<id>.<name>` looks
    like one."""
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
            if not is_generated(t.name)}


def renamed_for(weights: dict[str, np.ndarray], name_map: NameMap) -> dict[str, np.ndarray]:
    """The weights under the map's checkpoint names (and shapes): export-weights --map. Every
    spec id must turn around; the ones that do not are listed."""
    renamed, lost = {}, []
    for spec_id, array in weights.items():
        found = name_map.source(spec_id)
        if found is None:
            lost.append(spec_id)
            continue
        key, shape = found
        renamed[key] = array.reshape(shape) if shape else array
    if lost:
        raise DataError(f"map '{name_map.name}' cannot name {len(lost)} of the weights",
                        received=_few(lost),
                        hint="a rule turns around when its regex is literal text outside its "
                             "groups and anchored with ^ (README: Pretrained weights)")
    return renamed
