"""Reading ONNX models from elsewhere: checked first, external data kept inside the folder."""
from __future__ import annotations

from pathlib import Path

from ..errors import RunError


def existing_file(path: str | Path) -> Path:
    """The path of a file that is there (a model, its inputs), or the error that says it is not."""
    p = Path(path)
    if not p.is_file():
        raise RunError(f"no such file: {path}")
    return p


def load_model(path: str | Path):
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise RunError(f"{path} is not a readable ONNX model: {exc}") from None
    check_external_paths(model, path)
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:  # onnx.checker.ValidationError and I/O errors
        raise RunError(f"{path} fails the ONNX checker: {str(exc).splitlines()[0]}") from None
    if _has_external(model):
        onnx.load_external_data_for_model(model, str(path.parent))
    return model


def _has_external(model) -> bool:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return any(uses_external_data(t) for t in _get_all_tensors(model))


def check_external_paths(model, path: Path) -> None:
    """Refuse external-data locations that leave the model's folder (path traversal)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    folder = path.resolve().parent
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if Path(location).is_absolute() or folder not in target.parents:
            raise RunError(f"tensor '{tensor.name}' points outside the model's folder",
                           expected=f"a file inside {folder}", received=location)
