"""The metadata that says how to feed a compiled model and what its outputs mean.

    graphcnn.preprocess         JSON of the spec's `preprocess:` section, defaults filled in
    graphcnn.labels             JSON list of class names (one per channel of the first output)
    graphcnn.preprocess_folded  "true" when the model normalises its uint8 input itself
    Image.BitmapPixelFormat     Rgb8 | Bgr8 | Gray8       (ONNX's docs/MetadataProps.md)
    Image.ColorSpaceGamma       SRGB
    Image.NominalPixelRange     Normalized_0_1 | Normalized_1_1 | NominalRange_0_255

The Image.* keys describe the pixels before mean and std (a folded model's input exactly);
a range that is none of ONNX's three leaves Image.NominalPixelRange out.
"""
from __future__ import annotations

import json

PREPROCESS = "graphcnn.preprocess"
LABELS = "graphcnn.labels"
FOLDED = "graphcnn.preprocess_folded"
PIXEL_FORMATS = {"RGB": "Rgb8", "BGR": "Bgr8", "L": "Gray8"}
PIXEL_RANGES = {(0.0, 1.0): "Normalized_0_1", (-1.0, 1.0): "Normalized_1_1",
                (0.0, 255.0): "NominalRange_0_255"}


def metadata_props(preprocess, labels: list[str] | None, folded: bool = False) -> dict[str, str]:
    """The keys above for a PreprocessSection (or None) and class names (or None)."""
    meta = {}
    if preprocess is not None:
        meta[PREPROCESS] = json.dumps(preprocess.model_dump(mode="json", exclude_none=True))
        meta.update(image_props(preprocess.channels, tuple(preprocess.range), folded))
    if labels is not None:
        meta[LABELS] = json.dumps(labels, ensure_ascii=False)
    if folded:
        meta[FOLDED] = "true"
    return meta


def image_props(channels: str, value_range: tuple[float, float], folded: bool) -> dict[str, str]:
    props = {"Image.BitmapPixelFormat": PIXEL_FORMATS[channels], "Image.ColorSpaceGamma": "SRGB"}
    nominal = "NominalRange_0_255" if folded else PIXEL_RANGES.get(tuple(map(float, value_range)))
    if nominal:
        props["Image.NominalPixelRange"] = nominal
    return props


def checked_metadata(checked) -> dict[str, str]:
    """The keys for the spec a checked graph came from. A labels file of a spec read from text
    cannot be found: the names are then left out (graphcnn check and predict say why)."""
    from ..spec.labels import checked_labels

    spec = getattr(checked, "spec", None)
    if spec is None:
        return {}
    return metadata_props(getattr(spec, "preprocess", None), checked_labels(checked, required=False))
