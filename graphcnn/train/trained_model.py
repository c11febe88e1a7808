"""From training back to inference: the exported model, and the per-epoch evaluation.

Both use the inference lowering (batch-norm in inference mode, running statistics as weights),
so the test numbers printed during training are the numbers of the model that gets exported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
from onnx import helper

from ..lower.inference import lower
from ..lower.save import save_model


def weight_names(checked) -> list[str]:
    """Every tensor the inference model takes from training (parameters and running stats)."""
    return [f"{n.id}.{p}" for n in checked.nodes for p in n.params]


def export_model(checked, values: Mapping[str, np.ndarray], path: str | Path, *,
                 spec_text: str | None = None, seed: int = 0) -> onnx.ModelProto:
    weights = {name: values[name] for name in weight_names(checked)}
    model = lower(checked, seed=seed, weights=weights, spec_text=spec_text)
    save_model(model, path)
    return model


def evaluation_model(checked) -> onnx.ModelProto:
    """The inference model with its weights turned into inputs: one session evaluates every
    epoch, fed the training step's current tensors without rebuilding the model."""
    model = lower(checked)
    graph = model.graph
    names = set(weight_names(checked))
    keep = [t for t in graph.initializer if t.name not in names]
    moved = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
             for t in graph.initializer if t.name in names]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    graph.input.extend(moved)
    return model


def prediction_loss(outputs: np.ndarray, y: np.ndarray, loss: str, probabilities: bool,
                    ignore: int | None = None) -> tuple[float, int, int]:
    """(summed loss, correct targets, counted targets) of the model's outputs for labels y.
    mse: one target per row (its mean squared error; nothing is correct). cross_entropy: one
    target per row, or per pixel for outputs [N, C, *S] and labels [N, *S], leaving out labels
    equal to `ignore`; a probability output is read as probabilities (the loss is -log p_y),
    any other output as logits."""
    rows = len(outputs)
    if loss == "mse":
        diff = outputs.reshape(rows, -1).astype(np.float64) - y.reshape(rows, -1)
        return float(np.mean(diff * diff, axis=1).sum()), 0, rows
    labels = y.reshape(outputs.shape[:1] + outputs.shape[2:])
    valid = np.ones(labels.shape, bool) if ignore is None else labels != ignore
    logp = log_probabilities(outputs.astype(np.float64), probabilities)
    picked = np.take_along_axis(logp, np.where(valid, labels, 0)[:, None], axis=1)[:, 0]
    hits = (outputs.argmax(axis=1) == labels) & valid
    return float(-picked[valid].sum()), int(hits.sum()), int(valid.sum())


def log_probabilities(outputs: np.ndarray, probabilities: bool) -> np.ndarray:
    """log p along axis 1, of probabilities or of logits (a stable log-softmax)."""
    if probabilities:
        return np.log(np.clip(outputs, 1e-30, None))
    shifted = outputs - outputs.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
