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


def fold_batchnorm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Returns the rewritten model (in place) and the number of batchnorms folded."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers = _consumers(graph)
    producers = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    folded = 0
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
        prev = producers.get(bn.input[0])
        if prev is None or not _foldable(prev, bn, inits, consumers, outputs):
            continue
        _fold(graph, prev, bn, inits)
        folded += 1
    _drop_unused(graph)
    return model, folded


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


def _fold(graph, prev, bn, inits) -> None:
    gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    scale = gamma / np.sqrt(var + eps)
    w = numpy_helper.to_array(inits[prev.input[1]]).astype(np.float64)
    b = numpy_helper.to_array(inits[prev.input[2]]).astype(np.float64) if len(prev.input) > 2 \
        else np.zeros(w.shape[0])
    w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    b = (b - mean) * scale + beta
    w_name, b_name = prev.input[1], prev.input[2] if len(prev.input) > 2 else prev.input[1] + ".bias"
    _set(graph, inits, w_name, w.astype(np.float32))
    _set(graph, inits, b_name, b.astype(np.float32))
    if len(prev.input) < 3:
        prev.input.append(b_name)
    prev.output[0] = bn.output[0]
    graph.node.remove(bn)


def _set(graph, inits, name, value) -> None:
    tensor = numpy_helper.from_array(value, name)
    if name in inits:
        inits[name].CopyFrom(tensor)
    else:
        graph.initializer.append(tensor)
        inits[name] = graph.initializer[-1]


def _drop_unused(graph) -> None:
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    vis = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(vis)
