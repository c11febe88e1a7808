"""The NCHWc rewrite of convs with non-constant weights (graphcnn/runtime/blocked.py): what it
rewrites, what it leaves alone, and that the rewritten model computes what the plain one does, for
single convs of every geometry and for whole training steps."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_gradients import compile_step, random_batch, run

from graphcnn.runtime import blocked
from graphcnn.train.step import initial_state


def conv_model(x_shape, w_shape, *, bias=False, dtype=TensorProto.FLOAT, constant=False, **attrs):
    names = ["x", "w"] + (["b"] if bias else [])
    shapes = {"x": x_shape, "w": w_shape, "b": [w_shape[0]]}
    inputs = [helper.make_tensor_value_info(n, dtype, shapes[n]) for n in names]
    constants = []
    if constant:
        inputs.pop(1)
        constants.append(numpy_helper.from_array(np.ones(w_shape, np.float32), "w"))
    graph = helper.make_graph([helper.make_node("Conv", names, ["y"], **attrs)], "g", inputs,
                              [helper.make_tensor_value_info("y", dtype, None)], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def outputs(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def blocked_count(model) -> int:
    return sum(n.domain == blocked.BLOCKED_DOMAIN and n.op_type == "Conv" for n in model.graph.node)


def needs_nchwc():
    probe = blocked.blocked_convs(conv_model([1, 16, 8, 8], [16, 16, 3, 3], pads=[1, 1, 1, 1]))
    if not blocked_count(probe):
        pytest.skip("this onnxruntime/CPU has no NCHWc convolutions")


GEOMETRIES = [
    dict(x=[4, 16, 12, 12], w=[16, 16, 3, 3], pads=[1, 1, 1, 1]),
    dict(x=[4, 16, 13, 13], w=[32, 16, 3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
    dict(x=[2, 3, 17, 15], w=[24, 3, 3, 3], pads=[1, 1, 1, 1], bias=True),       # RGB stem
    dict(x=[2, 24, 9, 9], w=[40, 24, 3, 3], pads=[0, 1, 2, 1], bias=True),       # odd sizes
    dict(x=[2, 32, 10, 10], w=[16, 32, 1, 1], strides=[2, 2]),                   # projection
    dict(x=[2, 16, 11, 11], w=[16, 16, 3, 3], pads=[2, 2, 2, 2], dilations=[2, 2]),
    dict(x=[2, 32, 8, 8], w=[32, 16, 3, 3], pads=[1, 1, 1, 1], group=2),
    dict(x=[2, 16, 8, 8], w=[16, 1, 3, 3], pads=[1, 1, 1, 1], group=16),         # depthwise
    dict(x=[2, 8, 20, 20], w=[16, 8, 5, 7], pads=[2, 3, 2, 3]),
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g["w"])))
def test_rewritten_conv_matches_plain(geometry):
    needs_nchwc()
    g = dict(geometry)
    x_shape, w_shape, bias = g.pop("x"), g.pop("w"), g.pop("bias", False)
    model = conv_model(x_shape, w_shape, bias=bias, kernel_shape=w_shape[2:], **g)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32),
             "w": rng.standard_normal(w_shape).astype(np.float32)}
    if bias:
        feeds["b"] = rng.standard_normal(w_shape[0]).astype(np.float32)
    fast = blocked.blocked_convs(model)
    want, got = outputs(model, feeds)[0], outputs(fast, feeds)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # the weight is reordered each run: new weights give new results through the same model
    feeds["w"] = -2 * feeds["w"]
    np.testing.assert_allclose(outputs(fast, feeds)[0], outputs(model, feeds)[0], rtol=1e-5,
                               atol=1e-5 * np.abs(want).max() * 2)


@pytest.mark.parametrize("model", [
    conv_model([2, 16, 8, 8], [16, 16, 3, 3], constant=True, kernel_shape=[3, 3]),  # optimizer's job
    conv_model([2, 16, 8], [16, 16, 3], kernel_shape=[3]),                           # 1-D
    conv_model([2, 16, 4, 4, 4], [16, 16, 3, 3, 3], kernel_shape=[3, 3, 3]),         # 3-D
    conv_model([2, 16, 8, 8], [16, 16, 3, 3], dtype=TensorProto.DOUBLE, kernel_shape=[3, 3]),
], ids=["constant-weight", "1d", "3d", "float64"])
def test_left_alone(model):
    assert blocked.blocked_convs(model) is model


def test_switch_and_provider(monkeypatch):
    model = conv_model([2, 16, 8, 8], [16, 16, 3, 3], kernel_shape=[3, 3])
    assert blocked.for_providers(model, ["CUDAExecutionProvider", "CPUExecutionProvider"]) is model
    monkeypatch.setenv(blocked.SWITCH, "0")
    assert blocked.for_providers(model, ["CPUExecutionProvider"]) is model


def test_placement_check():
    assert blocked.is_placement(np.array([[3, 1], [2, 0]], np.float32), 3)
    assert not blocked.is_placement(np.array([1, 1, 2], np.float32), 3)       # duplicate
    assert not blocked.is_placement(np.array([1, 2], np.float32), 3)          # one missing
    assert not blocked.is_placement(np.array([1, 2.5, 3], np.float32), 3)     # not an index


STEP_NETS = {
    "residual": [
        {"id": "stem", "op": "conv2d", "channels": 16, "kernel": 3, "padding": 1, "bias": False},
        {"id": "bn", "op": "batchnorm2d"}, {"id": "relu", "op": "relu"},
        {"id": "down", "op": "conv2d", "channels": 16, "kernel": 3, "stride": 2, "padding": 1},
        {"id": "c2", "op": "conv2d", "channels": 16, "kernel": 3, "padding": 1, "bias": False},
        {"id": "add", "op": "add", "inputs": ["down", "c2"]},
        {"op": "global_avgpool"}, {"id": "logits", "op": "linear", "features": 4}],
    "transposed": [
        {"id": "c1", "op": "conv2d", "channels": 8, "kernel": 3, "padding": 1},
        {"id": "up", "op": "conv_transpose2d", "channels": 8, "kernel": 2, "stride": 2},
        {"id": "c2", "op": "conv2d", "channels": 4, "kernel": 3, "padding": "same"},
        {"op": "global_avgpool"}, {"id": "logits", "op": "linear", "features": 4}],
}


@pytest.mark.parametrize("net", list(STEP_NETS))
def test_training_step_unchanged(net):
    """Loss, updated parameters and optimizer state of three SGD steps: the rewritten step
    against the plain one (itself checked against finite differences in test_gradients)."""
    needs_nchwc()
    checked, step, plain = compile_step(STEP_NETS[net], {"x": [3, 12, 12]}, batch=4,
                                        loss="cross_entropy", momentum=0.9)
    fast_model = blocked.blocked_convs(step.model)
    assert blocked_count(fast_model) >= 3  # forward convs and the input gradients
    fast = ort.InferenceSession(fast_model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    ours = theirs = initial_state(checked, step, 0)
    for t in (1, 2, 3):
        feeds = random_batch(checked, step, rng)
        a, b = run(plain, step, theirs, feeds, lr=0.1, t=t), run(fast, step, ours, feeds, lr=0.1, t=t)
        for name, want in a.items():
            np.testing.assert_allclose(b[name], want, rtol=1e-4, atol=1e-5 * (np.abs(want).max() + 1),
                                       err_msg=name)
        theirs = {n: a[f"{n}.new"] for n in step.carried}
        ours = {n: b[f"{n}.new"] for n in step.carried}


def test_reorder_as_transpose():
    """A blocked layout is recognised as a Reshape + Transpose; a padded one is not."""
    w_shape = (32, 16, 3, 3)
    blocked_index = (np.arange(1, 32 * 16 * 9 + 1).reshape(4, 8, 2, 8, 3, 3)
                     .transpose(0, 2, 4, 5, 3, 1).reshape(w_shape))
    view, perm = blocked.as_transpose(blocked_index, w_shape)
    moved = np.arange(1, blocked_index.size + 1).reshape(view).transpose(perm).reshape(w_shape)
    np.testing.assert_array_equal(moved, blocked_index)
    padded = np.zeros((48, 16, 3, 3), np.int64)
    padded[:40] = np.arange(1, 40 * 16 * 9 + 1).reshape(40, 16, 3, 3)
    assert blocked.as_transpose(padded, (40, 16, 3, 3)) is None
    scrambled = np.random.default_rng(0).permutation(np.arange(1, 32 * 16 * 9 + 1)).reshape(w_shape)
    assert blocked.as_transpose(scrambled, w_shape) is None
