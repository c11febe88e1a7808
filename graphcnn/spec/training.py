"""The spec's `training:` section: how to train a network, validated with the rest of the spec,
so `graphcnn check` refuses a bad section at its line before anything is trained.

Every key has a default, so a spec without `training:` trains too; the command line overrides
the section key by key (train/recipe.py).
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# torchvision's segmentation references mark unlabelled pixels (VOC's object borders) with 255
SEGMENTATION_IGNORE = 255

# Adam's moment decay rates: at 1 a moment never forgets, and its bias correction 1 - beta^t is 0
Decay = Annotated[float, Field(ge=0, lt=1)]


class TrainingSection(BaseModel):
    """Loss, optimizer and schedule. `data` is 'mnist1d' or an .npz path (relative to the spec).
    `ignore_index`: the label cross_entropy leaves out (default: 255, as torchvision's
    segmentation references, for per-pixel scores [N, C, *spatial]; none for class scores)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0, allow_inf_nan=False)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    betas: tuple[Decay, Decay] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0, allow_inf_nan=False)
    epochs: int = Field(10, ge=1)
    batch: int = Field(100, ge=1)
    data: str | None = None
    seed: int = Field(0, ge=0)
    ignore_index: int | None = None

    @field_validator("lr", "momentum", "weight_decay", "eps", "epochs", "batch", "seed",
                     "ignore_index", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value):
        """pydantic reads `epochs: true` as 1; a YAML true/false is not a number."""
        if isinstance(value, bool):
            raise ValueError("true/false is not a number here")
        return value

    @model_validator(mode="after")
    def _ignore_index_needs_labels(self):
        if self.ignore_index is not None and self.loss != "cross_entropy":
            raise ValueError("ignore_index applies to loss: cross_entropy only")
        return self

    def written(self) -> dict:
        """The keys the spec wrote, as plain data (what `to_yaml` writes back)."""
        return self.model_dump(mode="json", exclude_unset=True)


def ignored_label(ignore_index: int | None, out_shape: tuple[int, ...]) -> int | None:
    """The target value cross_entropy leaves out for an output of `out_shape` (without the
    batch): the section's ignore_index, else 255 for a spatial output, else none."""
    if ignore_index is not None or len(out_shape) == 1:
        return ignore_index
    return SEGMENTATION_IGNORE
