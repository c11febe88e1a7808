"""Preprocessing and labels in a model's metadata: written from the spec (the lowering does it
for every compiled model, graphcnn.lower.metadata), read back by `graphcnn predict` and hosts."""
from __future__ import annotations

import json

import onnx

from ..errors import RunError
from ..lower.metadata import FOLDED, LABELS, PREPROCESS, metadata_props
from ..runtime.images import Recipe
from ..spec.labels import spec_labels
from ..spec.preprocess import MAX_LABELS, PreprocessSection


def model_metadata(spec, labels: list[str] | None = None) -> dict[str, str]:
    """The metadata_props of a spec's `preprocess:` and `labels:` (`labels` overrides the
    section; a labels file is read relative to the spec's file)."""
    return metadata_props(spec.preprocess, labels if labels is not None else spec_labels(spec))


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def read_recipe(model: onnx.ModelProto) -> Recipe | None:
    """The model's recipe, or None when its metadata has none; malformed metadata (the file may
    come from anywhere) is a RunError."""
    meta = metadata(model)
    if PREPROCESS not in meta:
        return None
    try:
        section = PreprocessSection.model_validate(json.loads(meta[PREPROCESS]))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, ValidationError, nesting
        raise RunError(f"the model's {PREPROCESS} metadata is malformed: "
                       f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
    return Recipe.of(section, folded=meta.get(FOLDED) == "true")


def read_labels(model: onnx.ModelProto) -> list[str] | None:
    """The model's class names, or None."""
    text = metadata(model).get(LABELS)
    if text is None:
        return None
    try:
        labels = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        labels = None
    if not (isinstance(labels, list) and 0 < len(labels) <= MAX_LABELS
            and all(isinstance(name, str) for name in labels)):
        raise RunError(f"the model's {LABELS} metadata is not a list of names")
    return labels


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Add or replace these keys, keeping the others."""
    kept = {**metadata(model), **props}
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, kept)
