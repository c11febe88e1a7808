"""Which ONNX opset to emit: by default the newest that both onnx and onnxruntime support."""
from __future__ import annotations

import functools

import onnx
from onnx import helper

from ..errors import CompileError

MIN_OPSET = 18  # Reduce* take axes as inputs, Pad takes axes: the forms graphcnn emits


@functools.lru_cache(maxsize=1)
def newest_runtime_opset() -> int:
    """Probe onnxruntime with a one-node model per opset, newest first (a few ms)."""
    import onnxruntime as ort

    for version in range(onnx.defs.onnx_opset_version(), MIN_OPSET - 1, -1):
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                                  [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", version)])
        model.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", version)])
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return version
        except Exception:  # noqa: BLE001 - any refusal means "not this opset"
            continue
    return MIN_OPSET


def choose_opset(requested: int | None) -> int:
    newest = newest_runtime_opset()
    if requested is None:
        return newest
    if not MIN_OPSET <= requested <= onnx.defs.onnx_opset_version():
        raise CompileError(f"opset {requested} is not possible",
                           expected=f"{MIN_OPSET} to {onnx.defs.onnx_opset_version()} (onnx "
                           f"{onnx.__version__}); the installed onnxruntime runs up to {newest}",
                           received=str(requested))
    return requested
