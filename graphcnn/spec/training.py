"""The spec's `training:` section: how to train a network, validated with the rest of the spec,
so `graphcnn check` refuses a bad section at its line before anything is trained.

Every key has a default, so a spec without `training:` trains too; the command line overrides
the section key by key (train/recipe.py).
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# torchvision's segmentation references mark unlabelled pixels (VOC's object borders) with 255
SEGMENTATION_IGNORE = 255

# Adam's moment decay rates: at 1 a moment never forgets, and its bias correction 1 - beta^t is 0
Decay = Annotated[float, Field(ge=0, lt=1)]
Share = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Ratio = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class AugmentSection(BaseModel):
    """Image augmentation, drawn afresh for every image of every epoch (train/augment.py).
    `random_resized_crop` [min, max]: the share of the image's area a crop covers (torchvision's
    RandomResizedCrop scale, aspect `ratio`), resized to the input size in place of the
    `preprocess:` resize and center crop; `pad_crop`: zero padding on each side, then a random
    crop back to the input size; `hflip`: the probability of a horizontal flip."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    random_resized_crop: Optional[tuple[Share, Share]] = None
    ratio: tuple[Ratio, Ratio] = (3 / 4, 4 / 3)
    pad_crop: int = Field(0, ge=0, le=4096)
    hflip: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self):
        for name in ("random_resized_crop", "ratio"):
            low, high = getattr(self, name) or (0, 0)
            if low > high:
                raise ValueError(f"{name} is [low, high] with low <= high; received [{low}, {high}]")
        return self

    @property
    def active(self) -> bool:
        return bool(self.random_resized_crop or self.pad_crop or self.hflip)


class ScheduleSection(BaseModel):
    """How the learning rate moves (train/schedule.py), per step, from `lr`: constant;
    step (times `gamma` every `step_size` epochs); multistep (times `gamma` at each of the
    `milestones`, in epochs); cosine (down to `min_lr` over the run, after `warmup` epochs of
    linear warmup); onecycle (torch's OneCycleLR with `lr` as its max_lr: up from lr /
    `div_factor` for `pct_start` of the run, then down to that / `final_div_factor`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["constant", "step", "multistep", "cosine", "onecycle"] = "constant"
    step_size: int = Field(1, ge=1)
    milestones: list[Annotated[int, Field(ge=1)]] = []
    gamma: float = Field(0.1, gt=0, allow_inf_nan=False)
    warmup: float = Field(0.0, ge=0, allow_inf_nan=False)
    min_lr: float = Field(0.0, ge=0, allow_inf_nan=False)
    pct_start: float = Field(0.3, gt=0, lt=1)
    div_factor: float = Field(25.0, gt=0, allow_inf_nan=False)
    final_div_factor: float = Field(1e4, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _consistent(self):
        if self.milestones != sorted(set(self.milestones)):
            raise ValueError(f"milestones must increase; received {self.milestones}")
        if self.kind == "multistep" and not self.milestones:
            raise ValueError("multistep needs milestones (epochs)")
        if self.warmup and self.kind == "onecycle":
            raise ValueError("onecycle warms up by itself (pct_start); leave out warmup")
        return self


class TrainingSection(BaseModel):
    """Loss, optimizer and schedule. `data` is 'mnist1d', an .npz, a folder of class folders or
    a CSV of `path,label` rows (relative to the spec). `ignore_index`: the label cross_entropy
    leaves out (default: 255, as torchvision's segmentation references, for per-pixel scores
    [N, C, *spatial]; none for class scores). `val`: the share of the training data held out
    for validation (when the data has no held-out set of its own); `max_bad`: the share of
    images that may be unreadable (skipped and listed) before the run stops; `keep`: export the
    last epoch's model or the best validation epoch's; `patience`: stop after this many epochs
    without a better validation result. `label_smoothing` (torch's): the target puts that
    share on all classes evenly; `clip_norm`: scale the gradients down to this global L2 norm;
    `no_decay_norm_bias`: no weight decay on tensors of one axis (biases, normalisation
    scales); `freeze`: node ids, block instances or patterns (`stage1`, `stage*.block0`) kept
    fixed, their gradients not computed, their batchnorm in inference mode. `precision`: the
    forward and backward passes in fp16 or bf16 where the execution provider has the kernels
    (train/precision.py; weights, optimizer state, batchnorm statistics and the loss stay
    fp32); fp16 scales the loss dynamically, doubling the scale after `loss_scale_window`
    steps without an overflow (train/loss_scale.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0, allow_inf_nan=False)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    betas: tuple[Decay, Decay] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0, allow_inf_nan=False)
    epochs: int = Field(10, ge=1, le=10 ** 6)  # as --epochs (commands/args.MAX_EPOCHS)
    batch: int = Field(100, ge=1)
    data: str | None = None
    seed: int = Field(0, ge=0)
    ignore_index: int | None = None
    val: Optional[float] = Field(None, gt=0, lt=1)
    augment: AugmentSection = AugmentSection()
    max_bad: float = Field(0.01, ge=0, le=1)
    keep: Literal["last", "best"] = "last"
    patience: Optional[int] = Field(None, ge=1)
    schedule: ScheduleSection = ScheduleSection()
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    clip_norm: Optional[float] = Field(None, gt=0, allow_inf_nan=False)
    no_decay_norm_bias: bool = False
    freeze: list[str] = []
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    loss_scale_window: int = Field(2000, ge=1)

    @field_validator("lr", "momentum", "weight_decay", "eps", "epochs", "batch", "seed",
                     "ignore_index", "val", "max_bad", "patience", "label_smoothing",
                     "clip_norm", "loss_scale_window", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value):
        """pydantic reads `epochs: true` as 1; a YAML true/false is not a number."""
        if isinstance(value, bool):
            raise ValueError("true/false is not a number here")
        return value

    @model_validator(mode="after")
    def _ignore_index_needs_labels(self):
        used = {"ignore_index": self.ignore_index is not None,
                "label_smoothing": self.label_smoothing > 0}
        for key in (k for k, v in used.items() if v and self.loss != "cross_entropy"):
            raise ValueError(f"{key} applies to loss: cross_entropy only")
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
