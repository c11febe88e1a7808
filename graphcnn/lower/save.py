"""Saving models: atomically, with external data past protobuf's 2 GiB limit."""
from __future__ import annotations

from pathlib import Path

import onnx

from ..fileio import atomic_path, write_bytes_atomic

PROTOBUF_LIMIT = 2 ** 31 - 1


def save_model(model: onnx.ModelProto, path: str | Path) -> None:
    path = Path(path)
    if model.ByteSize() < PROTOBUF_LIMIT:
        write_bytes_atomic(path, model.SerializeToString())
        return
    save_external(model, path)


def save_external(model: onnx.ModelProto, path: Path) -> None:
    """Weights go to `<name>.data` beside the model. The data file is renamed into place first,
    then the model that refers to it."""
    data_name = path.name + ".data"
    with atomic_path(path.parent / data_name) as data_tmp, atomic_path(path) as model_tmp:
        onnx.external_data_helper.convert_model_to_external_data(
            model, all_tensors_to_one_file=True, location=data_tmp.name, size_threshold=1024)
        onnx.save_model(model, str(model_tmp))
        for tensor in onnx.external_data_helper._get_all_tensors(model):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = data_name
        onnx.save_model(model, str(model_tmp))
