"""Weights by spec id: `<node id>.<param>` arrays in an .npz, both ways.

The names are the ONNX initializer names graphcnn writes, so a weight file moves between
graphcnn, numpy and other frameworks with one rename table at most.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from ..graph import CheckedGraph


def expected_weights(checked: CheckedGraph) -> dict[str, tuple]:
    return {f"{n.id}.{name}": p.shape for n in checked.nodes for name, p in n.params.items()}


def load_weights(path: str | Path, checked: CheckedGraph) -> dict[str, np.ndarray]:
    """Read an .npz and check it against the graph: no missing, extra or mis-shaped array."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read weights file {path}: {exc}") from None
    want = expected_weights(checked)
    missing = sorted(set(want) - set(arrays))
    extra = sorted(set(arrays) - set(want))
    if missing or extra:
        raise DataError(f"weights file {path} does not match the spec",
                        expected=f"{len(want)} arrays named <node id>.<param>",
                        received=_list("missing", missing) + _list("extra", extra))
    for name, shape in want.items():
        if tuple(arrays[name].shape) != tuple(shape):
            raise DataError(f"weight '{name}' has the wrong shape", expected=str(list(shape)),
                            received=str(list(arrays[name].shape)))
        if not np.all(np.isfinite(arrays[name])):
            raise DataError(f"weight '{name}' holds NaN or Inf")
    return {k: v.astype(np.float32) for k, v in arrays.items()}


def _list(kind: str, names: list[str]) -> str:
    if not names:
        return ""
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"{kind}: {', '.join(names[:5])}{more}; "


def model_weights(model) -> dict[str, np.ndarray]:
    """The parameter initializers of a graphcnn model (not its shared constants)."""
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
            if not t.name.startswith("const.") and "/" not in t.name}
