"""The held-out set's scores for the current tensors: loss, top-1 and top-5 accuracy and the
confusion matrix, through the inference lowering (batchnorm in inference mode), so the
numbers printed during training are those of the model that gets exported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..runtime import session
from ..runtime.failures import run_session
from ..spec.training import ignored_label
from .trained_model import evaluation_model, prediction_loss, weight_names

TOP_K = 5


@dataclass
class Scores:
    loss: float
    accuracy: float
    top5: float | None = None  # class scores [N, C] with more than 5 classes
    confusion: np.ndarray | None = None  # [true class, predicted class] counts, class scores only

    def record(self, prefix: str = "test") -> dict:
        """The epoch record's columns (test_loss, test_accuracy, test_top5)."""
        row = {f"{prefix}_loss": self.loss, f"{prefix}_accuracy": self.accuracy}
        return row if self.top5 is None else {**row, f"{prefix}_top5": self.top5}


class Evaluator:
    """One session of the inference model with its weights as inputs, fed each epoch's tensors."""

    def __init__(self, checked, loss: str, provider: str = "cpu", chunk: int = 1000,
                 ignore_index: int | None = None):
        self.checked, self.loss, self.chunk = checked, loss, chunk
        out_shape = checked.shape_of(checked.outputs[0])
        self.ignore = ignored_label(ignore_index, out_shape)
        self.classes = out_shape[0] if loss == "cross_entropy" and len(out_shape) == 1 else None
        self.sess = session(evaluation_model(checked), provider, nchwc=True)
        self.names = weight_names(checked)
        self.probabilities = checked.node(checked.outputs[0]).layer.probability_output

    def __call__(self, values: dict[str, np.ndarray],
                 chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> Scores:
        weights = {n: values[n] for n in self.names}
        (name,) = self.checked.inputs
        totals = np.zeros(4)  # summed loss, correct targets, counted targets, top-5 hits
        confusion = np.zeros((self.classes,) * 2, np.int64) if self.classes else None
        for x, y in chunks:
            out = run_session(self.sess, {name: x, **weights})[0]
            totals[:3] += prediction_loss(out, y, self.loss, self.probabilities, self.ignore)
            if confusion is not None:
                out, y = (out, y) if self.ignore is None else (out[y != self.ignore], y[y != self.ignore])
                totals[3] += top_k_hits(out, y, TOP_K)
                np.add.at(confusion, (y, out.argmax(axis=1)), 1)
        counted = max(totals[2], 1.0)
        top5 = totals[3] / counted if self.classes and self.classes > TOP_K else None
        return Scores(float(totals[0] / counted), float(totals[1] / counted),
                      None if top5 is None else float(top5), confusion)


def top_k_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> int:
    """How many rows have their label among their k highest scores (ties: the label's score
    is beaten by fewer than k others)."""
    own = np.take_along_axis(scores, labels[:, None], axis=1)
    return int(((scores > own).sum(axis=1) < k).sum())
