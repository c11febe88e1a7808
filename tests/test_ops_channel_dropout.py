"""Channel dropout (dropout1d/2d/3d, torch.nn.Dropout1d/2d/3d): in training one keep draw per
(sample, channel), the whole map zeroed or scaled by 1/(1 - rate); the identity at inference.
The masks against the documented hash written in numpy, their statistics, the backward rule
against finite differences, and determinism per step."""
from __future__ import annotations

import numpy as np
import pytest
from test_gradients import PRE1, PRE2, PRE3, check_gradients, compile_step, run
from test_ops_zoo_activations import compile_run, hashed_uniform, one_node

from graphcnn.errors import ShapeError

SHAPES = {"dropout1d": [6, 5], "dropout2d": [6, 3, 4], "dropout3d": [6, 2, 3, 2]}


def training_output(op, rate, shape, batch, t):
    """The training step's loss at step t for x = 1 and zero labels (mse): mean(y^2), which is
    the fraction of kept maps times the scale squared."""
    _, step, sess = compile_step([{"id": "d", "op": op, "rate": rate}], {"x": shape},
                                 batch=batch)
    x = np.ones((batch, *shape), np.float32)
    feeds = {"x": x, "labels": np.zeros_like(x), "mask": np.ones(batch, np.float32)}
    return run(sess, step, {}, feeds, t=t)["loss"]


@pytest.mark.parametrize("op", sorted(SHAPES))
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.75])
def test_training_mask_is_one_draw_per_map(op, rate):
    """Map (n, c) is kept where hashed_uniform(step, node, n * C + c) >= rate: the loss
    mean(y^2) = kept maps / maps * scale^2 equals the reference's, at two steps."""
    shape, batch = SHAPES[op], 8
    for t in (1, 2):
        keep = hashed_uniform(t, "d", batch * shape[0]) >= rate
        want = keep.mean() / (1 - rate) ** 2
        assert training_output(op, rate, shape, batch, t) == pytest.approx(want, rel=1e-6)


def test_mask_values_are_per_map_zero_or_scaled():
    """The mask itself, read through a training step's y: x holds a distinct positive value
    per element, so every element of a kept map is x / (1 - rate) and of a dropped one 0."""
    rate, batch, shape = 0.4, 50, [20, 3, 3]
    nodes = [{"id": "d", "op": "dropout2d", "rate": rate}]
    _, step, sess = compile_step(nodes, {"x": shape}, batch=batch)
    x = np.random.default_rng(0).uniform(1, 2, (batch, *shape)).astype(np.float32)
    feeds = {"x": x, "labels": x, "mask": np.ones(batch, np.float32)}
    loss = run(sess, step, {}, feeds, t=3)["loss"]  # mean((y - x)^2)
    keep = (hashed_uniform(3, "d", batch * 20) >= rate).reshape(batch, 20, 1, 1)
    y = np.where(keep, x / (1 - rate), 0.0)
    assert loss == pytest.approx(np.mean((y - x.astype(np.float64)) ** 2), rel=1e-5)
    assert abs(1 - keep.mean() - rate) < 0.04  # 1000 draws: about rate of the maps drop


@pytest.mark.parametrize("op", sorted(SHAPES))
def test_identity_at_inference(op):
    x = np.random.default_rng(1).standard_normal((2, *SHAPES[op])).astype(np.float32)
    y, model, checked = compile_run(one_node(SHAPES[op], {"op": op, "rate": 0.5}), x)
    np.testing.assert_array_equal(y, x)
    assert checked.node("y").param_count == 0 and checked.node("y").shape == tuple(SHAPES[op])
    assert [n.op_type for n in model.graph.node] == ["Identity"]


@pytest.mark.parametrize("op, pre", [("dropout1d", PRE1), ("dropout2d", PRE2),
                                     ("dropout3d", PRE3)])
def test_gradient(op, pre):
    """The mask is fixed within a step, so finite differences see one function; at step 1
    node 'd' keeps some of the 8 x C maps and drops others."""
    channels = pre["channels"]
    keep = hashed_uniform(1, "d", 8 * channels) >= 0.5
    assert 0 < keep.sum() < 8 * channels
    shape = [2, *SHAPES[op][1:]]
    check_gradients([pre, {"id": "d", "op": op, "rate": 0.5}], {"x": shape}, batch=8)


def test_masks_are_deterministic_per_step():
    """Two compiles draw the same masks at a step; the next step draws others."""
    first = [training_output("dropout2d", 0.5, [16, 2, 2], 4, t) for t in (1, 2)]
    again = [training_output("dropout2d", 0.5, [16, 2, 2], 4, t) for t in (1, 2)]
    assert first == again and first[0] != first[1]


@pytest.mark.parametrize("op, shape, expected", [
    ("dropout2d", [6, 5], r"expected \[N, C, H, W\]; received \[N, 6, 5\]"),
    ("dropout1d", [6], r"expected \[N, C, L\]; received \[N, 6\]"),
    ("dropout3d", [2, 3, 4], r"expected \[N, C, D, H, W\]"),
])
def test_rank_is_checked(op, shape, expected):
    with pytest.raises(ShapeError, match=rf"{op} needs an input with channels and spatial "
                                         rf"axes; {expected}"):
        compile_run(one_node(shape, {"op": op}), np.zeros((1, *shape), np.float32))
