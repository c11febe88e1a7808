"""Losses as ONNX nodes, each with its gradient written out (the seed of the backward pass).

Every loss is a mean over the real rows of the batch: `mask` [B] is 1 for a real sample and 0
for a padding row, so a padded last batch gives the same loss and gradients as the bare one.

- cross_entropy: labels int64 [B]; the output is read as logits, or, when the output node is a
  probability output (a softmax: Layer.probability_output), its input is (LogSoftmax +
  GatherElements: stable, and every host runs them).
  d loss / d logits = (softmax(logits) - onehot(label)) * mask / count.
- mse: labels shaped like the output; the mean of (y - t)^2 over the real rows' elements.
  d loss / d y = 2 (y - t) * mask / (count * elements per row).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import CompileError
from ..graph import CheckedGraph
from ..layers.base import fmt_shape, product
from .autodiff import TrainEmitter

LOSSES = ("cross_entropy", "mse")


@dataclass
class LossValues:
    loss: str  # float scalar
    correct: str | None  # int64 scalar (classification only)
    seeds: dict[str, str]  # value -> d loss / d value


def build_loss(g: TrainEmitter, checked: CheckedGraph, kind: str, labels: str) -> LossValues:
    if kind not in LOSSES:
        raise CompileError(f"unknown loss '{kind}'", expected=" or ".join(LOSSES), received=kind)
    if len(checked.outputs) != 1:
        raise CompileError("training needs a network with exactly one output",
                           received=", ".join(checked.outputs))
    g.begin("loss")
    out = checked.outputs[0]
    if kind == "mse":
        return mse(g, out, checked.shape_of(out), labels)
    return cross_entropy(g, *logits_of(checked, out), labels)


def logits_of(checked: CheckedGraph, out: str) -> tuple[str, tuple]:
    name = out
    if out not in checked.inputs and checked.node(out).layer.probability_output:
        name = checked.node(out).inputs[0]
    shape = checked.shape_of(name)
    if len(shape) != 1:
        raise CompileError("cross_entropy needs class scores shaped [N, classes]",
                           node=out, received=fmt_shape(shape),
                           hint="end the network with global pooling or flatten + linear")
    return name, shape


def real_rows(g: TrainEmitter) -> str:
    """The number of real rows, at least 1 (an all-padding batch gives loss 0, not NaN)."""
    return g.op("Max", [g.op("ReduceSum", [g.batch_mask], keepdims=0), g.scalar(1.0)])


def cross_entropy(g: TrainEmitter, logits: str, shape: tuple, labels: str) -> LossValues:
    mask = g.batch_mask
    logp = g.op("LogSoftmax", [logits], axis=1)
    column = g.op("Unsqueeze", [labels, g.ints([1])])
    picked = g.op("Reshape", [g.op("GatherElements", [logp, column], axis=1), g.ints([-1])])
    count = real_rows(g)
    summed = g.op("ReduceSum", [g.op("Mul", [picked, mask])],
                  keepdims=0)
    loss = g.op("Neg", [g.op("Div", [summed, count])])
    onehot = g.op("Cast", [g.op("Equal", [column, g.ints(range(shape[0]))])], to=g.FLOAT)
    weight = g.op("Div", [g.op("Unsqueeze", [mask, g.ints([1])]), count])
    grad = g.op("Mul", [g.op("Sub", [g.op("Exp", [logp]), onehot]), weight])
    hits = g.op("Equal", [g.op("ArgMax", [logits], axis=1, keepdims=0), labels])
    correct = g.op("ReduceSum", [g.op("Mul", [g.op("Cast", [hits], to=g.FLOAT), mask])], keepdims=0)
    return LossValues(loss, g.op("Cast", [correct], to=g.INT64), {logits: grad})


def mse(g: TrainEmitter, out: str, shape: tuple, target: str) -> LossValues:
    rows = g.op("Reshape", [g.batch_mask, g.ints([-1] + [1] * len(shape))])
    diff = g.op("Sub", [out, target])
    denom = g.op("Mul", [real_rows(g), g.scalar(float(product(shape)))])
    masked = g.op("Mul", [diff, rows])
    loss = g.op("Div", [g.op("ReduceSum", [g.op("Mul", [masked, diff])], keepdims=0), denom])
    grad = g.op("Div", [g.op("Mul", [masked, g.scalar(2.0)]), denom])
    return LossValues(loss, None, {out: grad})
