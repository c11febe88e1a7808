"""An ONNX model's external data, checked before onnx reads any of it.

onnx reads `length` bytes (or to the file's end) from `location` at `offset` into memory, and
the checker and onnxruntime then trust the tensor's dims: a 3 GB sparse file read whole, or
dims that disagree with the bytes, ended in gigabytes allocated or a segmentation fault. So
each external tensor is checked here from its fields and os.stat alone: the location is a
plain relative path inside the model's folder (no absolute path, no '..', no NUL byte; a
symlink must resolve inside too, a symlink loop is refused), the target a regular file,
offset + length inside it, and the length exactly what the dims and type need.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import RunError

# Bits per element of ONNX's packed sub-byte types (UINT4, INT4, FLOAT4E2M1, UINT2, INT2,
# FLOAT6E2M3, FLOAT6E3M2); the others take their numpy itemsize.
PACKED_BITS = {21: 4, 22: 4, 23: 4, 25: 2, 26: 2, 27: 6, 28: 6}


def check_external_data(model, path: Path) -> None:
    """Refuse any external-data tensor of `model` (read from `path`) that fails the checks
    above, naming the model file, the tensor and its location."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    folder = Path(os.path.realpath(Path(path).parent))  # where onnx will look
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            fields = {e.key: e.value for e in tensor.external_data}
            where = f"{path}: tensor '{tensor.name}'"
            if not all(isinstance(t, str) for t in (*fields, *fields.values())):
                # protobuf hands invalid UTF-8 in a string field over as bytes
                raise RunError(f"{where} has external-data fields that are not valid UTF-8")
            target = _target(fields.get("location", ""), folder, where)
            _check_span(tensor, fields, target, where)


def _target(location: str, folder: Path, where: str) -> Path:
    """The external-data file: inside `folder` once every symlink is resolved, and regular."""
    if not location or "\0" in location:
        raise RunError(f"{where} has an external-data location that is empty or holds a NUL "
                       "byte", received=repr(location))
    outside = RunError(f"{where} points outside the model's folder",
                       expected=f"a file inside {folder}", received=location)
    if Path(location).is_absolute() or ".." in Path(location).parts:
        raise outside
    try:
        target = Path(os.path.realpath(folder / location, strict=True))
    except OSError as e:  # ELOOP for a symlink loop, ENOENT, EACCES
        raise RunError(f"{where}: its external data {location} cannot be opened: "
                       f"{e.strerror or e}") from None
    if folder not in target.parents:
        raise outside  # a symlink inside the folder that leads out of it
    if not target.is_file():
        raise RunError(f"{where}: its external data {location} is not a regular file")
    return target


def _check_span(tensor, fields: dict, target: Path, where: str) -> None:
    """offset + length inside the file, and length what the dims and type need."""
    size = target.stat().st_size
    offset = _count(fields, "offset", 0, where)
    length = _count(fields, "length", max(size - offset, 0), where)  # onnx reads to the end
    if offset + length > size:
        raise RunError(f"{where} declares external data bytes [{offset}, {offset + length}) of "
                       f"{fields['location']}, which holds {size}")
    need = _data_bytes(tensor, where)
    if length != need:
        raise RunError(f"{where} declares dims {list(tensor.dims)} ({need} bytes); its external "
                       f"data in {fields['location']} is {length} bytes")


def _count(fields: dict, key: str, default: int, where: str) -> int:
    text = fields.get(key)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise RunError(f"{where} has external-data {key} {text[:40]!r}",
                       expected="a non-negative whole number")
    return int(text)


def _data_bytes(tensor, where: str) -> int:
    """The bytes the tensor's dims and element type need."""
    from onnx.helper import tensor_dtype_to_np_dtype

    if any(d < 0 for d in tensor.dims):
        raise RunError(f"{where} has negative dims {list(tensor.dims)}")
    count = 1
    for d in tensor.dims:
        count *= d
    if tensor.data_type in PACKED_BITS:
        return (count * PACKED_BITS[tensor.data_type] + 7) // 8
    try:
        dtype = tensor_dtype_to_np_dtype(tensor.data_type)
    except (KeyError, ValueError):
        dtype = None
    if dtype is None or dtype.hasobject:  # UNDEFINED, STRING, or a type this onnx lacks
        raise RunError(f"{where} has element type {tensor.data_type}, which external data "
                       "cannot hold")
    return count * dtype.itemsize
