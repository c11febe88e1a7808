"""Which epoch's model a run keeps (`keep: best`) and when it stops early (`patience`), both
judged on the held-out set: the highest accuracy for a classifier, the lowest loss otherwise
(the earliest epoch on ties).

The best epoch's tensors are written beside the checkpoint (`<stem>.best.npz`, the checkpoint
format) whenever an epoch beats the others, so a resumed run still exports them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError, RunError
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint


def score(record: dict, loss: str) -> float:
    return record["test_accuracy"] if loss == "cross_entropy" else -record["test_loss"]


def best_epoch(history: list[dict], loss: str) -> int | None:
    """The epoch with the best held-out score, or None before any."""
    scored = [r for r in history if "test_loss" in r]
    return max(scored, key=lambda r: (score(r, loss), -r["epoch"]))["epoch"] if scored else None


def stop_early(history: list[dict], loss: str, patience: int | None) -> bool:
    """True when the last `patience` epochs did not beat the best one."""
    best = best_epoch(history, loss)
    return patience is not None and best is not None and history[-1]["epoch"] - best >= patience


def best_path(checkpoint: str | Path) -> Path:
    """trained.ckpt.npz -> trained.best.npz."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.replace(".ckpt.npz", "") + ".best.npz")


class BestKeeper:
    """The tensors of the best epoch so far, in memory and (with a checkpoint) on disk."""

    def __init__(self, recipe, checkpoint: str | Path | None, has_held_out: bool):
        if (recipe.keep == "best" or recipe.patience) and not has_held_out:
            raise DataError("--keep best and --patience judge epochs on a held-out set, and "
                            "this data has none", hint="give --val 0.2 (or a val/ folder, or "
                            "x_test and y_test in the .npz)")
        self.active = recipe.keep == "best"
        self.loss, self.patience = recipe.loss, recipe.patience
        self.path = best_path(checkpoint) if checkpoint is not None and self.active else None
        self.values: dict[str, np.ndarray] | None = None

    def resume(self, history: list[dict], shapes: dict[str, tuple[int, ...]]) -> None:
        """After a resume: the best epoch's tensors (`shapes`: the step's carried tensors),
        from the file the first run wrote."""
        if self.active and best_epoch(history, self.loss) is not None:
            if self.path is None or not self.path.exists():
                raise RunError("--keep best: the best epoch's tensors are not beside the "
                               "checkpoint", expected=str(self.path))
            self.values = load_checkpoint(self.path, shapes, what="--keep best").values

    def update(self, history: list[dict], values: dict[str, np.ndarray], ckpt: Checkpoint) -> None:
        if self.active and best_epoch(history, self.loss) == history[-1]["epoch"]:
            self.values = values
            if self.path is not None:
                save_checkpoint(self.path, ckpt)

    def stop(self, history: list[dict]) -> bool:
        return stop_early(history, self.loss, self.patience)

    def chosen(self, last: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.values if self.active and self.values is not None else last
