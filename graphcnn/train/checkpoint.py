"""Checkpoints: everything a run needs to continue exactly where it stopped, in one .npz.

Holds every carried tensor of the training step (parameters, batch-norm statistics, optimizer
moments), the number of finished epochs and steps, the shuffling generator's state and the
metrics so far. Written atomically: a crash mid-write keeps the previous checkpoint.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..checkpoints.arrays import Want, read_arrays
from ..errors import DataError
from ..fileio import write_atomic
from .recipe import Recipe

PREFIX = "carried/"
META = "meta"  # the metadata's JSON, as uint8


@dataclass
class Checkpoint:
    values: dict[str, np.ndarray]
    epoch: int  # epochs finished
    step: int  # optimizer steps taken
    rng_state: dict
    history: list[dict] = field(default_factory=list)
    recipe: dict = field(default_factory=dict)


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    arrays = {PREFIX + name: value for name, value in ckpt.values.items()}
    meta = {"epoch": ckpt.epoch, "step": ckpt.step, "rng": ckpt.rng_state,
            "history": ckpt.history, "recipe": ckpt.recipe}
    # JSON as bytes: a numeric array the reading layer reads (it reads no text arrays)
    arrays[META] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    # updating: the checkpoint a run resumed from (train --resume) is rewritten in place
    write_atomic(path, lambda p: np.savez(open(p, "wb"), **arrays), updating=True)


def load_checkpoint(path: str | Path, expected: Mapping[str, tuple] | Iterable[str],
                    what: str = "--resume", optional: Mapping[str, tuple] | None = None) -> Checkpoint:
    """The checkpoint of a run whose training step carries exactly `expected` (names with
    their shapes, or names alone), every tensor float32: names, shapes and dtypes checked
    from the headers before any array is read (checkpoints.arrays), then the metadata against
    its schema, so a checkpoint of another spec or a tampered field fails here, before any
    training. `optional` names tensors it may hold or lack (read when held, with the shape
    given). `what` names the option in errors."""
    shapes = expected if isinstance(expected, Mapping) else dict.fromkeys(expected)
    wants = {PREFIX + name: Want(None if shape is None else tuple(shape), "float32", exact=True)
             for name, shape in shapes.items()}
    wants.update({PREFIX + name: Want(tuple(shape), "float32", required=False, exact=True)
                  for name, shape in (optional or {}).items()})
    wants[META] = Want((None,), "uint8", exact=True)
    arrays = _read(path, wants, what)
    meta = read_meta(arrays.pop(META), f"{what} {path}")
    values = {name[len(PREFIX):]: value for name, value in arrays.items()}
    return Checkpoint(values, meta.epoch, meta.step, meta.rng, meta.records(), meta.recipe)


FITTING = "only a checkpoint graphcnn train wrote for this spec fits (the same --set, optimizer " \
          "and --freeze)"


def _read(path, wants: dict[str, Want], what: str, **options) -> dict[str, np.ndarray]:
    """read_arrays, its errors saying which checkpoints fit."""
    try:
        return read_arrays(path, wants, what, **options)
    except DataError as exc:
        exc.hint = exc.hint or FITTING
        exc.args = (exc.render(),)
        raise


class EpochRecord(BaseModel):
    """One finished epoch, as train.loop.epoch_record writes it."""

    model_config = ConfigDict(extra="forbid", strict=True)
    epoch: int = Field(ge=1)
    step: int = Field(ge=0)
    train_loss: float
    train_accuracy: float
    test_loss: float | None = None
    test_accuracy: float | None = None
    test_top5: float | None = None
    lr: float
    seconds: float
    loader_wait: float
    skipped_steps: int | None = Field(None, ge=0)  # fp16 steps an overflow skipped


class CheckpointMeta(BaseModel):
    """The metadata: epochs and steps finished, the shuffle's generator state, the history
    (one record per finished epoch, the last at `step`) and the recipe the run trained by."""

    model_config = ConfigDict(extra="forbid", strict=True)
    epoch: int = Field(ge=0, le=10 ** 6)
    step: int = Field(ge=0, le=2 ** 62)  # fed as an int64 scalar
    rng: dict
    history: list[EpochRecord]
    recipe: dict

    @model_validator(mode="after")
    def _consistent(self):
        if [r.epoch for r in self.history] != list(range(1, self.epoch + 1)):
            raise ValueError(f"history holds epochs {[r.epoch for r in self.history][:8]} for "
                             f"{self.epoch} finished epochs")
        if self.history and self.history[-1].step != self.step:
            raise ValueError(f"step {self.step} is not the last epoch's ({self.history[-1].step})")
        try:
            np.random.default_rng().bit_generator.state = self.rng  # numpy checks every key
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise ValueError(f"rng: not a PCG64 state ({type(exc).__name__}: {exc})") from None
        try:
            Recipe.model_validate(self.recipe)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValueError(f"recipe.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        return self

    def records(self) -> list[dict]:
        return [r.model_dump(exclude_unset=True) for r in self.history]


def stored_recipe(path: str | Path, what: str = "--resume") -> dict:
    """The recipe a checkpoint's run trained by, its metadata checked, no tensor read."""
    raw = _read(path, {META: Want((None,), "uint8", exact=True)}, what, extra="ignore")
    return read_meta(raw[META], f"{what} {path}").recipe


def read_meta(raw: np.ndarray, where: str) -> CheckpointMeta:
    """The metadata, parsed and checked against CheckpointMeta."""
    try:
        return CheckpointMeta.model_validate(json.loads(raw.tobytes().decode("utf-8")))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(part) for part in err["loc"])
        said = err["msg"].removeprefix("Value error, ")
        raise DataError(f"{where}: bad metadata" + (f" field {field}" if field else "")
                        + f": {said}", received=repr(err.get("input"))[:80] if field else None,
                        hint=FITTING) from None
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
        raise DataError(f"{where}: unreadable metadata ({type(exc).__name__}: {exc})",
                        hint=FITTING) from None


def checkpoint_path(model_path: str | Path) -> Path:
    """trained.onnx -> trained.ckpt.npz, beside the model."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".ckpt.npz")
