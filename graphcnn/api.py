"""The public entry points the CLI and users call: check, compile, load a model."""
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


def model_for(source: str | Path | NetworkSpec):
    """An ONNX ModelProto to run: a spec (a NetworkSpec, or a .yaml/.yml path) is compiled in
    memory; any other path is read as an ONNX model and checked (runtime.load_model)."""
    from .runtime import existing_file, load_model

    if isinstance(source, NetworkSpec) or str(source).endswith((".yaml", ".yml")):
        return compile_spec(source)
    return load_model(existing_file(source))
