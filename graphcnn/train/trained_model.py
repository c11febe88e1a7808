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


def prediction_loss(outputs: np.ndarray, y: np.ndarray, loss: str, probabilities: bool):
    """Per-row loss and correctness for the model's output. A probability output is read as
    probabilities (cross-entropy is -log p_y); any other output as logits."""
    rows = len(outputs)
    flat = outputs.reshape(rows, -1).astype(np.float64)
    if loss == "mse":
        diff = flat - y.reshape(rows, -1)
        return np.mean(diff * diff, axis=1), np.zeros(rows)
    if probabilities:
        logp = np.log(np.clip(flat, 1e-30, None))
    else:
        shifted = flat - flat.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    losses = -logp[np.arange(rows), y]
    return losses, (flat.argmax(axis=1) == y).astype(np.float64)
