"""Losses as ONNX nodes, each with its gradient written out (the seed of the backward pass).

Every loss is a mean over the real rows of the batch: `mask` [B] is 1 for a real sample and 0
for a padding row, so a padded last batch gives the same loss and gradients as the bare one.

- cross_entropy (torch's F.cross_entropy): logits [B, C] with labels int64 [B], or per pixel
  logits [B, C, *S] with labels [B, *S]; the output is read as logits, or, when the output
  node is a probability output (a softmax: Layer.probability_output), its input is (LogSoftmax
  + GatherElements: stable, and every host runs them). The mean runs over the counted targets:
  those of real rows whose label is not the ignore index (spec/training.py ignored_label).
  d loss / d logits = (softmax(logits) - onehot(label)) * counted / count.
- mse: labels shaped like the output; the mean of (y - t)^2 over the real rows' elements.
  d loss / d y = 2 (y - t) * mask / (count * elements per row).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CompileError
from ..graph import CheckedGraph
from ..layers.base import product
from ..spec.training import ignored_label
from .autodiff import TrainEmitter

LOSSES = ("cross_entropy", "mse")


@dataclass
class LossValues:
    loss: str  # float scalar
    correct: str | None  # int64 scalar (classification only)
    seeds: dict[str, str]  # value -> d loss / d value
    # int64 scalar: how many targets the loss and `correct` count, where that is not the
    # number of real rows (per-pixel targets, an ignore_index); None otherwise
    counted: str | None = None


def build_loss(g: TrainEmitter, checked: CheckedGraph, kind: str, labels: str,
               ignore_index: int | None = None, label_smoothing: float = 0.0) -> LossValues:
    """The loss of the network's one output; `ignore_index` is the spec's setting (None: the
    default for the output's shape, spec/training.py ignored_label); `label_smoothing` as
    torch's cross_entropy."""
    if kind not in LOSSES:
        raise CompileError(f"unknown loss '{kind}'", expected=" or ".join(LOSSES), received=kind)
    if len(checked.outputs) != 1:
        raise CompileError("training needs a network with exactly one output",
                           received=", ".join(checked.outputs))
    g.begin("loss")
    out = checked.outputs[0]
    if kind == "mse":
        return mse(g, out, checked.shape_of(out), labels)
    logits, shape = logits_of(checked, out)
    return cross_entropy(g, logits, shape, labels, ignored_label(ignore_index, shape),
                         label_smoothing)


def logits_of(checked: CheckedGraph, out: str) -> tuple[str, tuple]:
    """The value read as logits [N, C, *spatial] (a softmax output's input), and its shape."""
    name = out
    if out not in checked.inputs and checked.node(out).layer.probability_output:
        name = checked.node(out).inputs[0]
    return name, checked.shape_of(name)


def real_rows(g: TrainEmitter) -> str:
    """The number of real rows, at least 1 (an all-padding batch gives loss 0, not NaN)."""
    return g.op("Max", [g.op("ReduceSum", [g.batch_mask], keepdims=0), g.scalar(1.0)])


def cross_entropy(g: TrainEmitter, logits: str, shape: tuple, labels: str,
                  ignore: int | None = None, smoothing: float = 0.0) -> LossValues:
    """Mean over the counted targets (real rows, targets not equal to `ignore`) of
    -log softmax(logits)[target] along axis 1; logits [B, C, *S], labels [B, *S]. With
    `smoothing` e the target is (1 - e) onehot + e / C (torch's label_smoothing): the loss
    -(1 - e) log p[target] - e mean_c log p[c], the gradient softmax - that target."""
    weight = target_weights(g, labels, len(shape) - 1, ignore)  # [B, *S]: 1 counted, else 0
    summed_weight = g.op("ReduceSum", [weight], keepdims=0)
    count = g.op("Max", [summed_weight, g.scalar(1.0)])  # no target counted: loss 0, not NaN
    safe = labels if ignore is None else \
        g.op("Where", [g.op("Equal", [labels, g.ints([ignore])]), g.ints([0]), labels])
    column = g.op("Unsqueeze", [safe, g.ints([1])])
    logp = g.op("LogSoftmax", [logits], axis=1)
    picked = g.op("Squeeze", [g.op("GatherElements", [logp, column], axis=1), g.ints([1])])
    if smoothing:
        spread = g.op("Mul", [g.op("ReduceSum", [logp, g.ints([1])], keepdims=0),
                              g.scalar(smoothing / shape[0])])
        picked = g.op("Add", [g.op("Mul", [picked, g.scalar(1 - smoothing)]), spread])
    summed = g.op("ReduceSum", [g.op("Mul", [picked, weight])], keepdims=0)
    loss = g.op("Neg", [g.op("Div", [summed, count])])
    classes = g.array("classes", np.arange(shape[0]).reshape([-1] + [1] * (len(shape) - 1)))
    onehot = g.op("Cast", [g.op("Equal", [column, classes])], to=g.FLOAT)
    if smoothing:
        onehot = g.op("Add", [g.op("Mul", [onehot, g.scalar(1 - smoothing)]),
                              g.scalar(smoothing / shape[0])])
    scale = g.op("Unsqueeze", [g.op("Div", [weight, count]), g.ints([1])])
    grad = g.op("Mul", [g.op("Sub", [g.op("Exp", [logp]), onehot]), scale])
    hits = g.op("Equal", [g.op("ArgMax", [logits], axis=1, keepdims=0), labels])
    correct = g.op("ReduceSum", [g.op("Mul", [g.op("Cast", [hits], to=g.FLOAT), weight])],
                   keepdims=0)
    counted = None if ignore is None and len(shape) == 1 else \
        g.op("Cast", [summed_weight], to=g.INT64)
    return LossValues(loss, g.op("Cast", [correct], to=g.INT64), {logits: grad}, counted)


def target_weights(g: TrainEmitter, labels: str, spatial: int, ignore: int | None) -> str:
    """[B, *S] float: the batch mask on every target of a row, 0 where the label is `ignore`."""
    mask = g.batch_mask
    if spatial:
        mask = g.op("Reshape", [mask, g.ints([-1] + [1] * spatial)])
    if ignore is None:
        return mask if not spatial else g.op("Expand", [mask, g.op("Shape", [labels])])
    kept = g.op("Cast", [g.op("Not", [g.op("Equal", [labels, g.ints([ignore])])])], to=g.FLOAT)
    return g.op("Mul", [kept, mask])


def mse(g: TrainEmitter, out: str, shape: tuple, target: str) -> LossValues:
    rows = g.op("Reshape", [g.batch_mask, g.ints([-1] + [1] * len(shape))])
    diff = g.op("Sub", [out, target])
    denom = g.op("Mul", [real_rows(g), g.scalar(float(product(shape)))])
    masked = g.op("Mul", [diff, rows])
    loss = g.op("Div", [g.op("ReduceSum", [g.op("Mul", [masked, diff])], keepdims=0), denom])
    grad = g.op("Div", [g.op("Mul", [masked, g.scalar(2.0)]), denom])
    return LossValues(loss, None, {out: grad})
