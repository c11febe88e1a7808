"""Fold inference batchnorm into the convolution or linear layer before it.

BN(conv(x)) = conv'(x) with W' = W * s and b' = (b - mean) * s + beta, s = gamma / sqrt(var + eps)
per output channel. The rewrite happens on the ONNX graph, so it applies to any model graphcnn
wrote, trained or not; the folded node takes the batchnorm's output name, so names downstream
(and the outputs) do not change.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..lower.save import without_initializers


def fold_batchnorm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A new model with every foldable batchnorm folded, and how many were (the argument is
    left as it was; its weights are copied once, the folded ones computed anew)."""
    new = without_initializers(model)
    graph = new.graph
    weights = Weights(model.graph.initializer)
    consumers = _consumers(graph)
    producers = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    folded = 0
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
        prev = producers.get(bn.input[0])
        if prev is None or not _foldable(prev, bn, weights, consumers, outputs):
            continue
        _fold(graph, prev, bn, weights)
        folded += 1
    weights.write_used(graph)
    _drop_unused_value_info(graph)
    return new, folded


class Weights:
    """The source model's initializers, read-only, with the tensors the folds replace or add."""

    def __init__(self, initializers):
        self.source = list(initializers)
        self.by_name = {t.name: t for t in self.source}
        self.added: list = []

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.by_name[name])

    def set(self, name: str, value: np.ndarray) -> None:
        if name not in self.by_name:
            self.added.append(name)
        self.by_name[name] = numpy_helper.from_array(value, name)

    def write_used(self, graph) -> None:
        """The initializers some node reads, in the source's order, then the added ones."""
        used = {i for n in graph.node for i in n.input}
        names = [t.name for t in self.source] + self.added
        graph.initializer.extend(self.by_name[n] for n in names if n in used)


def _consumers(graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
    return counts


def _foldable(prev, bn, inits, consumers, outputs) -> bool:
    if prev.op_type not in ("Conv", "Gemm") or consumers.get(prev.output[0], 0) != 1:
        return False
    if prev.output[0] in outputs or not all(i in inits for i in prev.input[1:]):
        return False
    if prev.op_type == "Gemm" and not _gemm_is_linear(prev):
        return False
    return all(i in inits for i in bn.input[1:])


def _gemm_is_linear(node) -> bool:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return attrs.get("transB", 0) == 1 and attrs.get("transA", 0) == 0 and \
        attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0


def _fold(graph, prev, bn, weights: Weights) -> None:
    gamma, beta, mean, var = (weights.array(n).astype(np.float64) for n in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    scale = gamma / np.sqrt(var + eps)
    w = weights.array(prev.input[1]).astype(np.float64)
    b = weights.array(prev.input[2]).astype(np.float64) if len(prev.input) > 2 \
        else np.zeros(w.shape[0])
    w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    b = (b - mean) * scale + beta
    w_name, b_name = prev.input[1], prev.input[2] if len(prev.input) > 2 else prev.input[1] + ".bias"
    weights.set(w_name, w.astype(np.float32))
    weights.set(b_name, b.astype(np.float32))
    if len(prev.input) < 3:
        prev.input.append(b_name)
    prev.output[0] = bn.output[0]
    graph.node.remove(bn)


def _drop_unused_value_info(graph) -> None:
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    vis = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(vis)
