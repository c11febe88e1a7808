"""The training-step model as a whole: optimizer updates against numpy written from their
definitions, padding rows, batchnorm running statistics, dropout masks, the state a run starts
from, errors, and a few steps lowering the loss on small versions of the chapter's networks."""
from __future__ import annotations

import numpy as np
import pytest
from test_gradients import compile_step, run

from graphcnn.api import check_spec, compile_spec
from graphcnn.errors import CompileError
from graphcnn.train.step import build_training_step, initial_state

from conftest import SPECS, onnx_weights

LINEAR = [{"id": "fc", "op": "linear", "features": 3}]


def linear_batch(rng, batch=4):
    return {"x": rng.standard_normal((batch, 5)).astype(np.float32),
            "labels": rng.standard_normal((batch, 3)).astype(np.float32),
            "mask": np.ones(batch, np.float32)}


def mse_grads(values, feeds):
    """d mean((x W^T + b - t)^2) / d(W, b), written out."""
    x, t = feeds["x"], feeds["labels"]
    err = 2 * (x @ values["fc.weight"].T + values["fc.bias"] - t) / t.size
    return {"fc.weight": err.T @ x, "fc.bias": err.sum(0)}


def numpy_adam(p, g, m, v, t, lr, b1, b2, eps, wd, decoupled):
    if decoupled:
        p = p * (1 - lr * wd)
    else:
        g = g + wd * p
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    return p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps), m, v


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizer_updates_match_numpy(optimizer):
    cfg = dict(momentum=0.9, weight_decay=0.05, betas=(0.8, 0.95), eps=1e-6)
    if optimizer != "sgd":
        cfg.pop("momentum")
    checked, step, sess = compile_step(LINEAR, {"x": [5]}, batch=4, optimizer=optimizer, **cfg)
    rng = np.random.default_rng(1)
    values, ref = initial_state(checked, step, 0), None
    ref = {k: v.astype(np.float64) for k, v in values.items()}
    for t in (1, 2, 3):
        feeds = linear_batch(rng)
        out = run(sess, step, values, feeds, lr=0.1, t=t)
        grads = mse_grads(ref, feeds)
        for name in step.params:
            if optimizer == "sgd":
                buf = 0.9 * ref[f"{name}.momentum"] + grads[name] + 0.05 * ref[name]
                ref[f"{name}.momentum"], ref[name] = buf, ref[name] - 0.1 * buf
            else:
                ref[name], ref[f"{name}.m"], ref[f"{name}.v"] = numpy_adam(
                    ref[name], grads[name], ref[f"{name}.m"], ref[f"{name}.v"], t, 0.1, 0.8,
                    0.95, 1e-6, 0.05, optimizer == "adamw")
        values = {n: out[f"{n}.new"] for n in step.carried}
        for name in step.carried:
            np.testing.assert_allclose(values[name], ref[name], rtol=1e-4, atol=1e-5)


def test_padding_rows_change_nothing():
    """A batch of 3 padded to 4 (garbage in the padding row) updates like the batch of 3."""
    nodes = [{"id": "c", "op": "conv1d", "channels": 3, "kernel": 3}, {"id": "bn", "op": "batchnorm1d"},
             {"op": "relu"}, {"op": "flatten"}, {"id": "logits", "op": "linear", "features": 4}]
    rng = np.random.default_rng(2)
    x, labels = rng.standard_normal((4, 2, 6)).astype(np.float32), rng.integers(0, 4, 4)
    outs = []
    for batch, mask in ((3, [1, 1, 1]), (4, [1, 1, 1, 0])):
        checked, step, sess = compile_step(nodes, {"x": [2, 6]}, batch=batch, loss="cross_entropy")
        feeds = {"x": x[:batch], "labels": labels[:batch], "mask": np.array(mask, np.float32)}
        outs.append(run(sess, step, initial_state(checked, step, 0), feeds, lr=0.1))
    for name in ["loss", "correct", *(f"{n}.new" for n in step.carried)]:
        np.testing.assert_allclose(outs[0][name], outs[1][name], rtol=1e-5, atol=1e-6)


def test_batchnorm_running_stats_like_pytorch():
    checked, step, sess = compile_step([{"id": "bn", "op": "batchnorm2d", "momentum": 0.2}],
                                       {"x": [3, 2, 2]}, batch=5)
    rng = np.random.default_rng(3)
    feeds = {"x": rng.standard_normal((5, 3, 2, 2)).astype(np.float32) * 2 + 1,
             "labels": np.zeros((5, 3, 2, 2), np.float32), "mask": np.ones(5, np.float32)}
    out = run(sess, step, initial_state(checked, step, 0), feeds)
    flat = feeds["x"].transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(out["bn.running_mean.new"], 0.2 * flat.mean(1), rtol=1e-5)
    np.testing.assert_allclose(out["bn.running_var.new"], 0.8 + 0.2 * flat.var(1, ddof=1), rtol=1e-5)


def test_dropout_masks_are_deterministic_per_step():
    nodes = [{"id": "d", "op": "dropout", "rate": 0.25}]
    _, step, sess = compile_step(nodes, {"x": [1000]}, batch=2)
    _, _, again = compile_step(nodes, {"x": [1000]}, batch=2)
    feeds = {"x": np.ones((2, 1000), np.float32), "labels": np.zeros((2, 1000), np.float32),
             "mask": np.ones(2, np.float32)}

    def kept(session, t):  # the loss is mean(y^2) with y in {0, 1/(1-rate)}
        return run(session, step, {}, feeds, t=t)["loss"] * 0.75 ** 2

    assert kept(sess, 1) == kept(again, 1)
    assert kept(sess, 1) != kept(sess, 2)
    assert abs(kept(sess, 1) - 0.75) < 0.03


def test_mnist1d_cnn_step_and_initial_state():
    checked = check_spec(SPECS / "mnist1d_cnn.yaml")
    step = build_training_step(checked, batch=8, optimizer="adam")
    values = initial_state(checked, step, seed=5)
    inference = onnx_weights(compile_spec(SPECS / "mnist1d_cnn.yaml", seed=5))
    for name in step.params:
        np.testing.assert_array_equal(values[name], inference[name])
    assert step.data_input == "x" and step.outputs[:2] == ["loss", "correct"]
    assert set(step.outputs[2:]) == {f"{n}.new" for n in step.carried}
    assert "conv1.weight.m" in step.state and "conv1.weight.v" in step.state


def test_op_without_vjp_is_a_compile_error():
    nodes = [{"id": "c", "op": "conv2d", "channels": 30, "kernel": 1},
             {"op": "reshape", "shape": [7, 7, 30]},
             {"id": "det", "op": "yolo_decode", "grid": 7, "boxes": 2, "classes": 20}]
    with pytest.raises(CompileError, match="det: op 'yolo_decode' has no backward rule"):
        compile_step(nodes, {"x": [3, 7, 7]})


def test_bad_settings_are_compile_errors():
    checked = check_spec(SPECS / "mnist1d_cnn.yaml")
    with pytest.raises(CompileError, match="unknown optimizer"):
        build_training_step(checked, batch=4, optimizer="lion")
    with pytest.raises(CompileError, match="unknown loss"):
        build_training_step(checked, batch=4, loss="hinge")


BN_RELU = [{"op": "batchnorm2d"}, {"op": "relu"}]
HEAD = [{"op": "global_avgpool"}, {"id": "logits", "op": "linear", "features": 3}]


def conv(id_, channels, **fields):
    return {"id": id_, "op": "conv2d", "channels": channels, "kernel": fields.pop("kernel", 3),
            "padding": fields.pop("padding", "same"), **fields}


NETWORKS = {
    "residual": [conv("stem", 8), *BN_RELU, conv("c1", 8), *BN_RELU, conv("c2", 8),
                 {"id": "add", "op": "add", "skip": "stem"},
                 conv("c3", 12, stride=2), {"id": "add2", "op": "add", "skip": "add",
                                             "project": "conv_bn"}, *HEAD],
    "bottleneck": [conv("stem", 8), conv("a", 4, kernel=1), *BN_RELU, conv("b", 4), *BN_RELU,
                   conv("c", 8, kernel=1), {"op": "add", "skip": "stem"}, {"op": "relu"}, *HEAD],
    "densenet": [conv("stem", 6), conv("l1", 4), {"id": "cat1", "op": "concat", "skip": "stem"},
                 conv("l2", 4), {"id": "cat2", "op": "concat", "skip": "cat1"},
                 {"op": "avgpool2d", "kernel": 2}, *HEAD],
    "unet": [conv("d1", 6, padding="valid"), {"op": "relu"},
             {"id": "pool", "op": "maxpool2d", "kernel": 2}, conv("mid", 8, padding="valid"),
             {"id": "up", "op": "conv_transpose2d", "channels": 6, "kernel": 2, "stride": 2},
             {"id": "skipcrop", "op": "crop", "inputs": ["d1"], "like": "up"},
             {"id": "cat", "op": "concat", "inputs": ["up", "skipcrop"]}, conv("out", 6), *HEAD],
    "highway": [conv("stem", 6), conv("h", 6), {"op": "relu"},
                {"id": "hw", "op": "highway", "skip": "stem", "carry": "learned"}, *HEAD],
    "pools": [conv("c1", 6), {"op": "maxpool2d", "kernel": 3, "stride": 2, "padding": 1},
              conv("c2", 6), {"op": "avgpool2d", "kernel": 2, "ceil_mode": True},
              {"op": "upsample", "scale": 2, "mode": "linear"}, conv("c3", 6),
              {"op": "upsample", "scale": 2}, *HEAD],
}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_training_lowers_the_loss(name):
    checked, step, sess = compile_step(NETWORKS[name], {"x": [2, 10, 10]}, batch=8,
                                       loss="cross_entropy", optimizer="adam")
    rng = np.random.default_rng(4)
    feeds = {"x": rng.standard_normal((8, 2, 10, 10)).astype(np.float32),
             "labels": rng.integers(0, 3, 8), "mask": np.ones(8, np.float32)}
    values, losses = initial_state(checked, step, 0), []
    for t in range(1, 26):  # 25 Adam steps on one batch: every family must halve its loss
        out = run(sess, step, values, feeds, lr=0.01, t=t)
        values = {n: out[f"{n}.new"] for n in step.carried}
        losses.append(float(out["loss"]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses


def test_transposed_convs_have_equal_pads_at_both_ends():
    """onnxruntime's CUDA provider runs a ConvTranspose on the CPU when its pads differ at the
    two ends of an axis, so the backward of a 'same' stride-2 conv (pads 0, 1) and of a padded
    average pool must not emit one."""
    nodes = [conv("a", 4), conv("c", 4, stride=2),
             {"op": "avgpool2d", "kernel": 3, "stride": 2, "padding": 1},
             *HEAD]
    _, step, _ = compile_step(nodes, {"x": [2, 10, 10]}, batch=2, loss="cross_entropy")
    transposes = [n for n in step.model.graph.node if n.op_type == "ConvTranspose"]
    assert len(transposes) == 2  # the first conv needs no input gradient
    for node in transposes:
        pads = next(list(a.ints) for a in node.attribute if a.name == "pads")
        assert pads[:2] == pads[2:], (node.name, pads)
