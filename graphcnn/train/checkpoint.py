"""Checkpoints: everything a run needs to continue exactly where it stopped, in one .npz.

Holds every carried tensor of the training step (parameters, batch-norm statistics, optimizer
moments), the number of finished epochs and steps, the shuffling generator's state and the
metrics so far. Written atomically: a crash mid-write keeps the previous checkpoint.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import RunError
from ..fileio import write_atomic

PREFIX = "carried/"


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
    arrays["meta"] = np.array(json.dumps(meta))
    # updating: the checkpoint a run resumed from (train --resume) is rewritten in place
    write_atomic(path, lambda p: np.savez(open(p, "wb"), **arrays), updating=True)


def load_checkpoint(path: str | Path, names: list[str]) -> Checkpoint:
    """A checkpoint whose tensors are exactly `names` (those of this spec's training step)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"cannot read checkpoint {path}: {exc}") from None
    values = {k[len(PREFIX):]: v for k, v in arrays.items() if k.startswith(PREFIX)}
    if set(values) != set(names):
        missing = sorted(set(names) - set(values))
        extra = sorted(set(values) - set(names))
        raise RunError(f"checkpoint {path} does not belong to this spec and optimizer",
                       expected=f"tensors {', '.join(missing[:5]) or '(none missing)'}",
                       received=f"other tensors {', '.join(extra[:5]) or '(none)'}")
    return Checkpoint(values, meta["epoch"], meta["step"], meta["rng"], meta["history"],
                      meta.get("recipe", {}))


def checkpoint_path(model_path: str | Path) -> Path:
    """trained.onnx -> trained.ckpt.npz, beside the model."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".ckpt.npz")
