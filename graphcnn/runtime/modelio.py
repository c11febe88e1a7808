"""Reading ONNX models from elsewhere: checked first, external data kept inside the folder."""
from __future__ import annotations

from pathlib import Path

from ..errors import RunError
from ..fileio import existing_file
from .external import check_external_data as check_external_paths

# protobuf cannot parse a message over 2 GiB: a bigger model keeps its weights in external data
MAX_MODEL_BYTES = 2 << 30


def load_model(path: str | Path, with_data: bool = True):
    """The checked ModelProto of a file; with_data=False leaves external data on disk."""
    import onnx

    path = existing_file(path)
    size = path.stat().st_size
    if not 0 < size <= MAX_MODEL_BYTES:
        raise RunError(f"{path} is not an ONNX model: it is {size} bytes",
                       expected=f"1 to {MAX_MODEL_BYTES} bytes",
                       hint="a larger model keeps its weights in external data")
    try:  # the protobuf alone: external data is checked before anything reads it
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise RunError(f"{path} is not a readable ONNX model: {exc}") from None
    check_external_paths(model, path)
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # onnx.checker.ValidationError and I/O errors
        raise RunError(f"{path} fails the ONNX checker: {str(exc).splitlines()[0]}") from None
    if with_data and has_external_data(model):
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:  # noqa: BLE001 -- a file changed since checked, an I/O error
            raise RunError(f"{path}: cannot read its external data: {exc}") from None
    return model


def has_external_data(model) -> bool:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return any(uses_external_data(t) for t in _get_all_tensors(model))
