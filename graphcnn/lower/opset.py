"""Which ONNX opset to emit: by default the newest at which onnxruntime's CPU provider has a
kernel for every op the model uses.

A model's opset decides which version of each operator schema its nodes mean; onnxruntime runs
it only if it registered a kernel for exactly that schema version. We read onnxruntime's kernel
registry (version ranges per op) and onnx's schemas instead of trusting one probe op: Relu may
run at the newest opset while QuantizeLinear does not.
"""
from __future__ import annotations

import functools

import onnx

from ..errors import CompileError

MIN_OPSET = 18  # Reduce* take axes as inputs, Pad takes axes: the forms graphcnn emits


# Used when the kernel registry cannot be read: every op graphcnn emits runs at opset 21 in
# onnxruntime >= 1.18, the oldest release graphcnn supports.
FALLBACK_OPSET = 21


@functools.lru_cache(maxsize=1)
def _cpu_kernels() -> dict[str, list[tuple[int, int]]] | None:
    """op -> version ranges of the CPU provider's kernels; None when they cannot be read.

    Reading the registry makes onnxruntime load every provider library it was built with, and
    in onnxruntime-gpu a provider whose libraries are missing (TensorRT, usually) crashes the
    process (seen with 1.31.1). So only a CPU-only build is read in-process; others in a child."""
    import onnxruntime as ort

    if set(ort.get_available_providers()) <= {"CPUExecutionProvider", "AzureExecutionProvider"}:
        return read_cpu_registry()
    return _read_in_child()


def read_cpu_registry() -> dict[str, list[tuple[int, int]]]:
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    ranges: dict[str, list[tuple[int, int]]] = {}
    for kernel in C.get_all_opkernel_def():
        if kernel.domain in ("", "ai.onnx") and kernel.provider == "CPUExecutionProvider":
            ranges.setdefault(kernel.op_name, []).append(tuple(kernel.version_range))
    return ranges


def _read_in_child() -> dict[str, list[tuple[int, int]]] | None:
    import json
    import subprocess
    import sys

    code = ("import json; from graphcnn.lower.opset import read_cpu_registry; "
            "print(json.dumps(read_cpu_registry()))")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120, check=True)
        return {op: [tuple(r) for r in rs] for op, rs in json.loads(done.stdout).items()}
    except (subprocess.SubprocessError, OSError, ValueError):
        return None


def _runs(op: str, version: int) -> bool:
    try:
        since = onnx.defs.get_schema(op, version).since_version
    except onnx.defs.SchemaError:
        return False
    return any(start <= since <= end for start, end in _cpu_kernels().get(op, []))


@functools.lru_cache(maxsize=64)
def newest_runtime_opset(op_types: tuple[str, ...]) -> int:
    """The newest opset (not above onnx's) at which onnxruntime's CPU provider runs every op
    in `op_types` (the ops a model actually uses)."""
    if _cpu_kernels() is None:
        return min(FALLBACK_OPSET, runtime_loads_up_to())
    for version in range(runtime_loads_up_to(), MIN_OPSET - 1, -1):
        if all(_runs(op, version) for op in op_types):
            return version
    return MIN_OPSET


@functools.lru_cache(maxsize=1)
def runtime_loads_up_to() -> int:
    """The newest opset (not above onnx's) whose models onnxruntime loads at all. Its kernel
    registry can reach further than its loader: onnxruntime 1.31 registers kernels for opset
    27 but refuses models above opset 26 and above IR version 13. Probed with a one-node model
    per opset, stamped with the IR version onnx gives that opset."""
    import onnxruntime as ort

    helper = onnx.helper
    for version in range(onnx.defs.onnx_opset_version(), MIN_OPSET, -1):
        opsets = [helper.make_opsetid("", version)]
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])], "probe",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        model = helper.make_model(graph, opset_imports=opsets,
                                  ir_version=helper.find_min_ir_version_for(opsets))
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return version
        except Exception:  # noqa: BLE001 (onnxruntime's own exception types)
            continue
    return MIN_OPSET


def choose_opset(requested: int | None, op_types) -> int:
    """`requested` if onnx knows it, else the newest opset that runs every op in `op_types`."""
    newest = newest_runtime_opset(tuple(sorted(set(op_types))))
    if requested is None:
        return newest
    if not MIN_OPSET <= requested <= onnx.defs.onnx_opset_version():
        raise CompileError(f"opset {requested} is not possible",
                           expected=f"{MIN_OPSET} to {onnx.defs.onnx_opset_version()} (onnx "
                           f"{onnx.__version__}); the installed onnxruntime runs up to {newest}",
                           received=str(requested))
    return requested
