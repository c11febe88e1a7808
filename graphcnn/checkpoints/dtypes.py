"""Tensor dtypes by the names the checkpoint API reports, and how each format spells them."""
from __future__ import annotations

import ml_dtypes
import numpy as np

from ..errors import DataError

# Little-endian explicitly: every format read here stores little-endian data.
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "float64": np.dtype("<f8"),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "int64": np.dtype("<i8"), "int32": np.dtype("<i4"), "int16": np.dtype("<i2"),
    "int8": np.dtype("i1"), "uint8": np.dtype("u1"), "uint16": np.dtype("<u2"),
    "uint32": np.dtype("<u4"), "uint64": np.dtype("<u8"), "bool": np.dtype("?"),
    "complex64": np.dtype("<c8"), "complex128": np.dtype("<c16"),
}
FLOATS = {"float32", "float16", "float64", "bfloat16", "float8_e4m3fn", "float8_e5m2"}

# torch's typed storage classes (torch.FloatStorage, ...); dtypes without one are saved with
# torch.storage.UntypedStorage (bytes) and the dtype passed to _rebuild_tensor_v3.
STORAGE_CLASSES = {
    "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "DoubleStorage": "float64", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
STORAGE_OF = {dtype: cls for cls, dtype in STORAGE_CLASSES.items()}

SAFETENSORS = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32",
    "U64": "uint64", "BOOL": "bool", "C64": "complex64",
}


def dtype_name(dtype: np.dtype) -> str | None:
    """Our name of a numpy dtype (either byte order), or None for one no checkpoint holds."""
    dtype = np.dtype(dtype)
    if dtype.fields is not None or dtype.subdtype is not None:
        return None
    if dtype.byteorder in "<>=":
        dtype = dtype.newbyteorder("<")
    for name, known in DTYPES.items():
        if known == dtype:
            return name
    return None


def array_dtype_name(array: np.ndarray, name: str, path) -> str:
    """The dtype name of an array to be written, or a DataError naming the tensor."""
    found = dtype_name(array.dtype)
    if found is None:
        raise DataError(f"cannot write tensor '{name}' to {path}: dtype {array.dtype} is not a "
                        "tensor dtype", expected=", ".join(DTYPES))
    return found
