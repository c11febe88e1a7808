"""The public entry points the CLI and users call."""
from __future__ import annotations

from pathlib import Path

from .graph import CheckedGraph, Limits, check
from .graph.check import gc_paused
from .spec import NetworkSpec


@gc_paused()
def load_spec(source: str | Path | NetworkSpec) -> NetworkSpec:
    """A spec from a YAML file path, or the spec itself."""
    if isinstance(source, NetworkSpec):
        return source
    return NetworkSpec.from_yaml(source)


@gc_paused()
def check_spec(source: str | Path | NetworkSpec, limits: Limits | None = None) -> CheckedGraph:
    return check(load_spec(source), limits)


@gc_paused()
def compile_spec(source, *, seed: int = 0, opset: int | None = None, batch: int | None = None,
                 weights=None):
    """Spec -> checked graph -> ONNX ModelProto (imports onnx only when called)."""
    from .lower.inference import lower

    spec = load_spec(source)
    checked = check(spec)
    return lower(checked, seed=seed, opset=opset, batch=batch, weights=weights,
                 spec_text=spec.to_yaml())
