"""The spec's `preprocess:` and `labels:` sections: how to feed the network an image, and what
its outputs mean. Both travel into the compiled model's metadata, so the file says how to use it.

    preprocess:                  # torchvision's ImageNet weight transforms
      resize: 256                # the shorter side to 256 (or [H, W]: exactly that size)
      crop: 224                  # then a center crop (or [H, W])
      interpolation: bilinear    # nearest | bilinear | bicubic
      range: [0, 1]              # pixel values 0..255 scaled to this range
      mean: [0.485, 0.456, 0.406]
      std: [0.229, 0.224, 0.225]
      channels: RGB              # RGB | BGR | L (grayscale)
    labels: labels/imagenet.txt  # one name per line, relative to the spec; or an inline list
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Size = Union[int, tuple[int, int]]
MAX_LABELS = 1_000_000


class PreprocessSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    resize: Optional[Size] = None
    crop: Optional[Size] = None
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bilinear"
    range: tuple[float, float] = (0.0, 1.0)
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    channels: Literal["RGB", "BGR", "L"] = "RGB"

    @field_validator("resize", "crop")
    @classmethod
    def _positive(cls, size):
        sizes = (size,) if isinstance(size, int) else size or ()
        if any(isinstance(s, bool) or s < 1 or s > 65536 for s in sizes):
            raise ValueError(f"sizes are whole numbers from 1 to 65536; received {size!r}")
        return size

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, values):
        if values is not None and not (1 <= len(values) <= 4096):
            raise ValueError("one value per channel")
        if values is not None and not all(abs(v) < float("inf") for v in values):
            raise ValueError("values must be finite")
        return values

    @model_validator(mode="after")
    def _consistent(self):
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive; received {self.std}")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values and std {len(self.std)}")
        low, high = self.range
        if not (abs(low) < float("inf") and abs(high) < float("inf")) or low >= high:
            raise ValueError(f"range is [low, high] with low < high; received {list(self.range)}")
        return self

    def written(self) -> dict:
        return self.model_dump(mode="json", exclude_unset=True)

    def channel_count(self) -> int:
        return 1 if self.channels == "L" else 3


Labels = Union[list[str], str]  # inline names, or a file of one name per line (relative to the spec)


def check_labels(labels):
    if isinstance(labels, list) and not 1 <= len(labels) <= MAX_LABELS:
        raise ValueError(f"labels: 1 to {MAX_LABELS:,} names")
    if isinstance(labels, str) and (not labels or "\0" in labels):
        raise ValueError("labels: a file name relative to the spec, or a list of names")
    return labels
