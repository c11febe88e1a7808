"""Static int8 quantization (QDQ format) with onnxruntime's quantization tools.

Calibration data: an .npz whose `x` (or first array) holds samples shaped like the model input,
or `random` (standard normal; fine for speed, not for accuracy). The report compares the int8
model with the fp32 one on the calibration data: largest output difference and, for
classifiers, how often the top class agrees.
"""
from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

# QuantizeLinear/DequantizeLinear past opset 21 have no CPU kernels in onnxruntime 1.32 (seen:
# "Could not find an implementation for QuantizeLinear(28)"), so int8 exports use opset 21.
QUANT_OPSET = 21


@dataclass
class QuantReport:
    samples: int
    max_abs_diff: float
    top1_agreement: float | None

    def __str__(self) -> str:
        agree = f", top-1 agreement {self.top1_agreement:.1%}" if self.top1_agreement is not None else ""
        return f"int8 vs fp32 on {self.samples} calibration samples: largest output difference " \
               f"{self.max_abs_diff:.3g}{agree}"


def calibration_data(source: str, model: onnx.ModelProto, count: int = 64) -> np.ndarray:
    """`count` samples shaped like the model's first input: standard normal for 'random', else
    the .npz's `x` (or its first array; a .npy is the array), read through checkpoints.arrays:
    shape checked from the header before reading, values as float32 (overflow refused)."""
    from ..checkpoints.arrays import Want, array_names, read_arrays

    inp = model.graph.input[0]
    dims = [d.dim_value or d.dim_param or None for d in inp.type.tensor_type.shape.dim][1:]
    if source == "random":
        fixed = [d if isinstance(d, int) else 1 for d in dims]
        return np.random.default_rng(0).standard_normal((count, *fixed)).astype(np.float32)
    names = array_names(source, "--calibrate", single="x")
    name = "x" if "x" in names else names[0]
    x = read_arrays(source, {name: Want(("N", *dims))}, "--calibrate", single="x",
                    extra="ignore")[name]
    return x[:count]


def quantize_int8(model: onnx.ModelProto, data: np.ndarray, batch: int = 8):
    """Returns (int8 model, QuantReport)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.chunks = iter([{name: data[i:i + batch]} for i in range(0, len(data), batch)])

        def get_next(self):
            return next(self.chunks, None)

    with quiet_quantization_tool(), tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(model, str(src))
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        quantized = onnx.load(str(dst))
    return quantized, compare(model, quantized, data)


@contextmanager
def quiet_quantization_tool():
    """Hide the quantization tool's warnings (on every call it suggests an optional
    pre-processing) and leave every other log record alone. The tool logs with
    `logging.warning(...)`, on the root logger itself, so a filter there drops the records
    below ERROR that come from the tool's own files; its named loggers (onnxruntime.quantization.*)
    get level ERROR. Both are undone on the way out."""
    import onnxruntime.quantization as tool

    folder = str(Path(tool.__file__).parent) + os.sep
    root, named = logging.getLogger(), logging.getLogger(tool.__name__)

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not record.pathname.startswith(folder)

    level = named.level
    root.addFilter(keep)
    named.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeFilter(keep)
        named.setLevel(level)


def compare(reference: onnx.ModelProto, other: onnx.ModelProto, data: np.ndarray) -> QuantReport:
    from ..runtime import session

    name = reference.graph.input[0].name
    a = session(reference).run(None, {name: data})[0]
    b = session(other).run(None, {name: data})[0]
    agree = float(np.mean(a.argmax(1) == b.argmax(1))) if a.ndim == 2 else None
    return QuantReport(len(data), float(np.max(np.abs(a - b))), agree)
