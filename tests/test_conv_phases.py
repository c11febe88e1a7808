"""A strided 2-D conv's input gradient by phases (graphcnn/layers/conv_phases.py) against the
transposed conv written from its definition in numpy, and the geometries it takes."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from graphcnn.layers import conv_phases
from graphcnn.layers.conv_phases import WIDE, applies, axis_taps, input_grad_by_phases
from graphcnn.lower.emitter import Emitter
from graphcnn.lower.inference import make_model
from test_gradients import PRE2, check_gradients


def reference(dy, w, size, k, s, pads):
    """dX[c, u, v] = sum of W[o, c, kh, kw] dY[o, i, j] over s*i + kh - p = u (each axis)."""
    n, c_out, rows, cols = dy.shape
    dx = np.zeros((n, w.shape[1], *size), np.float64)
    for kh in range(k[0]):
        for kw in range(k[1]):
            for i in range(rows):
                for j in range(cols):
                    u, v = s * i + kh - pads[0], s * j + kw - pads[1]
                    if 0 <= u < size[0] and 0 <= v < size[1]:
                        dx[:, :, u, v] += dy[:, :, i, j] @ w[:, :, kh, kw]
    return dx


def by_phases(dy, w, size, k, s, pads):
    g = Emitter()
    shape, out = (w.shape[1], *size), (w.shape[0], *dy.shape[2:])
    dx = input_grad_by_phases(g, "dy", "w", shape, out, k, (s, s), [(b, b) for b in pads])
    graph = helper.make_graph(
        g.nodes + [helper.make_node("Identity", [dx], ["dx"])], "phases",
        [helper.make_tensor_value_info("dy", TensorProto.FLOAT, list(dy.shape)),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w.shape))],
        [helper.make_tensor_value_info("dx", TensorProto.FLOAT, None)],
        initializer=list(g.constants.values()))
    sess = ort.InferenceSession(make_model(graph, 18).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {"dy": dy, "w": w})[0]


def out_length(n, k, s, p):
    return (n + 2 * p - k) // s + 1


@pytest.mark.parametrize("k, s, pads, size", [
    ((3, 3), 2, (1, 1), (8, 8)),      # ResNet's 3x3/2
    ((3, 3), 2, (1, 1), (7, 9)),      # odd sizes: the last row's phase is cut
    ((3, 3), 2, (0, 0), (9, 8)),      # no padding: the forward leaves the last row unread
    ((7, 7), 2, (3, 3), (12, 10)),    # a stem
    ((5, 4), 3, (2, 0), (11, 10)),    # stride 3, different kernel and pads per axis
    ((4, 4), 2, (1, 2), (8, 9)),      # even kernel
    ((3, 3), 2, (2, 2), (6, 6)),      # pads as wide as the kernel allows
])
def test_phases_equal_the_transposed_conv(k, s, pads, size):
    rng = np.random.default_rng(0)
    rows, cols = (out_length(n, kk, s, p) for n, kk, p in zip(size, k, pads))
    dy = rng.standard_normal((2, 5, rows, cols)).astype(np.float32)
    w = rng.standard_normal((5, 3, *k)).astype(np.float32)
    assert applies(k, (s, s), (1, 1), [(p, p) for p in pads], 1, WIDE)
    np.testing.assert_allclose(by_phases(dy, w, size, k, s, pads),
                               reference(dy, w, size, k, s, pads), rtol=1e-4, atol=1e-4)


def test_each_tap_lands_in_one_phase():
    taps, size, lead = axis_taps(3, 2, 1)  # u = 2U: W[1] dY[U]; u = 2U + 1: W[2] dY[U], W[0] dY[U + 1]
    assert sorted(taps) == [(0, 1, 1), (1, 0, 0), (2, 1, 0)] and (size, lead) == (2, 0)


@pytest.mark.parametrize("k, s, d, pads, groups, channels", [
    ((3, 3), (1, 1), (1, 1), [(1, 1)] * 2, 1, WIDE),   # stride 1: a plain conv already
    ((1, 1), (2, 2), (1, 1), [(0, 0)] * 2, 1, WIDE),   # kernel within the stride: one tap a phase
    ((3, 3), (2, 1), (1, 1), [(1, 1)] * 2, 1, WIDE),   # different strides: DepthToSpace has one
    ((3, 3), (2, 2), (2, 2), [(1, 1)] * 2, 1, WIDE),   # dilated
    ((3, 3), (2, 2), (1, 1), [(1, 1)] * 2, 2, WIDE),   # grouped
    ((3,), (2,), (1,), [(1, 1)], 1, WIDE),              # 1-D
    ((3, 3), (2, 2), (1, 1), [(1, 1)] * 2, 1, 64 * 128),  # narrow: the transposed conv is faster
])
def test_other_geometries_keep_the_transposed_conv(k, s, d, pads, groups, channels):
    assert not applies(k, s, d, pads, groups, channels)


def test_training_gradients_through_the_phases(monkeypatch):
    """Finite differences through a training step whose strided conv takes the phases (made
    to at 4 channels)."""
    monkeypatch.setattr(conv_phases, "WIDE", 1)
    conv = {"id": "c", "op": "conv2d", "channels": 4, "kernel": 3, "stride": 2, "padding": 1}
    step = check_gradients([PRE2, conv], {"x": [2, 7, 6]})
    assert "DepthToSpace" in {n.op_type for n in step.model.graph.node}
