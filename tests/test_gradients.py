"""Every backward rule (a layer's `vjp`) against central finite differences of the loss.

How: a tiny network is compiled into a training step with SGD, lr = 1 and no momentum, so
`p - p.new` is the analytic gradient of the loss for each parameter. The reference is the
directional derivative along a random direction v per parameter tensor,
(L(p + eps v) - L(p - eps v)) / (2 eps), with L read from the same step model run with lr = 0
(so batchnorm uses batch statistics, as the gradient does). Each tested op sits after a
parametrized 1x1 `pre` layer, so the `pre` gradients check the op's input gradient too.
Tolerance: onnxruntime computes in float32 (not every kernel has float64), so with eps = 3e-3
the reference carries O(1e-4) roundoff and O(eps^2) truncation; we accept 2% relative or
2e-3 absolute. Ops with kinks (relu, max pool) are tested on random inputs, where no kink lies
within eps of an input with overwhelming probability.
The conv and a small whole network are also checked against torch autograd when torch is
installed. `GRAPHCNN_TEST_PROVIDER=cuda` runs every check on onnxruntime's CUDA provider
(tools/check_cuda.py does, on a GPU machine); the default is the CPU.
"""
from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from graphcnn.api import check_spec
from graphcnn.runtime import resolve_provider
from graphcnn.spec import NetworkSpec
from graphcnn.train.step import build_training_step, initial_state

EPS = 3e-3
PROVIDER = os.environ.get("GRAPHCNN_TEST_PROVIDER", "cpu")


def providers_under_test() -> list:
    """The providers the checks run on. The CUDA provider's default TF32 products keep 10
    mantissa bits, far too coarse for finite differences, so the checks turn it off."""
    return [(p, {"use_tf32": "0"}) if p == "CUDAExecutionProvider" else p
            for p in resolve_provider(PROVIDER)]


def compile_step(nodes, inputs, *, batch=2, loss="mse", **optim):
    text = yaml.safe_dump({"name": "t", "inputs": inputs, "nodes": nodes}, sort_keys=False)
    checked = check_spec(NetworkSpec.from_text(text))
    step = build_training_step(checked, batch=batch, loss=loss, **optim)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(step.model.SerializeToString(), options,
                                providers=providers_under_test())
    return checked, step, sess


def run(sess, step, values, batch_feeds, lr=0.0, t=1):
    feeds = {**batch_feeds, "lr": np.array(lr, np.float32), "step": np.array(t, np.int64),
             **{n: values[n] for n in step.carried}}
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def random_batch(checked, step, rng, mask=None):
    shapes = step.shapes()
    if step.loss == "cross_entropy":
        labels = rng.integers(0, checked.shape_of(checked.outputs[0])[0], step.batch)
    else:
        labels = rng.standard_normal(shapes["labels"]).astype(np.float32)
    data = rng.standard_normal(shapes[step.data_input]).astype(np.float32)
    mask = np.ones(step.batch, np.float32) if mask is None else np.asarray(mask, np.float32)
    return {step.data_input: data, "labels": labels, "mask": mask}


def perturbed_state(checked, step, rng):
    """Initial values plus noise, so zero biases and unit scales do not hide mistakes."""
    values = initial_state(checked, step, seed=0)
    for name in step.params:
        values[name] = values[name] + 0.3 * rng.standard_normal(values[name].shape).astype(np.float32)
    return values


def check_gradients(nodes, inputs, *, batch=2, loss="mse", mask=None, seed=0):
    checked, step, sess = compile_step(nodes, inputs, batch=batch, loss=loss)
    rng = np.random.default_rng(seed)
    values, feeds = perturbed_state(checked, step, rng), random_batch(checked, step, rng, mask)
    out = run(sess, step, values, feeds, lr=1.0)
    for name in step.params:
        grad = values[name] - out[f"{name}.new"]
        v = rng.standard_normal(grad.shape).astype(np.float32)
        plus = run(sess, step, {**values, name: values[name] + EPS * v}, feeds)["loss"]
        minus = run(sess, step, {**values, name: values[name] - EPS * v}, feeds)["loss"]
        numeric, analytic = (plus - minus) / (2 * EPS), float(np.sum(grad * v))
        assert abs(numeric - analytic) <= 2e-2 * max(abs(numeric), abs(analytic)) + 2e-3, \
            f"{name}: finite difference {numeric} vs backward {analytic}"
    return step


PRE1 = {"id": "pre", "op": "conv1d", "channels": 4, "kernel": 1}
PRE2 = {"id": "pre", "op": "conv2d", "channels": 4, "kernel": 1}
PRE3 = {"id": "pre", "op": "conv3d", "channels": 2, "kernel": 1}
PREF = {"id": "pre", "op": "linear", "features": 6}

CONV_CASES = [
    ("valid", 1, 1, 1), ("same", 1, 1, 1), ("full", 1, 1, 1), ("circular", 1, 1, 1),
    (2, 2, 1, 1), ([[1, 2]], 2, 1, 1), ("valid", 2, 1, 1), ("same", 2, 2, 1),
    ("valid", 1, 2, 2), ("circular", 1, 2, 2), ("same", 3, 1, 4), ("full", 2, 2, 2),
]


@pytest.mark.parametrize("padding,stride,dilation,groups", CONV_CASES)
def test_conv1d(padding, stride, dilation, groups):
    conv = {"id": "c", "op": "conv1d", "channels": 4, "kernel": 3, "padding": padding,
            "stride": stride, "dilation": dilation, "groups": groups}
    check_gradients([PRE1, conv], {"x": [2, 11]})


@pytest.mark.parametrize("padding,stride,dilation,groups", [
    ("valid", 1, 1, 1), ("same", 2, 1, 2), ("circular", 1, 2, 1), ([[1, 1], [0, 2]], [2, 1], [1, 2], 4),
    ("full", 1, 1, 1)])
def test_conv2d(padding, stride, dilation, groups):
    conv = {"id": "c", "op": "conv2d", "channels": 4, "kernel": [3, 2], "padding": padding,
            "stride": stride, "dilation": dilation, "groups": groups, "bias": groups != 2}
    check_gradients([PRE2, conv], {"x": [2, 7, 6]})


@pytest.mark.parametrize("padding,stride,groups", [("same", 1, 1), ("circular", 1, 2), (1, 2, 1)])
def test_conv3d(padding, stride, groups):
    conv = {"id": "c", "op": "conv3d", "channels": 2, "kernel": 2, "padding": padding,
            "stride": stride, "groups": groups}
    check_gradients([PRE3, conv], {"x": [2, 4, 5, 4]})


def test_linear_flatten():
    check_gradients([PRE2, {"op": "flatten"}, {"id": "fc", "op": "linear", "features": 3},
                     {"id": "fc2", "op": "linear", "features": 2, "bias": False}],
                    {"x": [2, 3, 2]}, batch=3)


@pytest.mark.parametrize("act", [{"op": "relu"}, {"op": "leaky_relu", "alpha": 0.1},
                                 {"op": "sigmoid"}, {"op": "tanh"}, {"op": "gelu"}, {"op": "silu"},
                                 {"op": "softmax"}, {"op": "identity"}])
def test_activation(act):
    check_gradients([PREF, act, {"id": "post", "op": "linear", "features": 3}], {"x": [5]}, batch=3)


@pytest.mark.parametrize("op,shape", [("batchnorm1d", [4]), ("batchnorm1d", [3, 5]),
                                      ("batchnorm2d", [3, 4, 3]), ("batchnorm3d", [2, 3, 2, 3])])
def test_batchnorm(op, shape):
    pre = {"id": "pre", "op": "linear", "features": 4} if len(shape) == 1 else \
        {"id": "pre", "op": f"conv{len(shape) - 1}d", "channels": 3, "kernel": 1}
    check_gradients([pre, {"id": "bn", "op": op}, {"op": "tanh"}], {"x": shape}, batch=4)


def test_batchnorm_ignores_padding_rows():
    """Masked rows neither change the statistics nor the gradient of the real rows."""
    nodes = [PRE1, {"id": "bn", "op": "batchnorm1d"}, {"op": "flatten"},
             {"id": "logits", "op": "linear", "features": 3}]
    step = check_gradients(nodes, {"x": [2, 5]}, batch=4, loss="cross_entropy", mask=[1, 1, 1, 0])
    assert "bn.running_var" in step.state


@pytest.mark.parametrize("kind,fields", [
    ("max", {"kernel": 2}), ("max", {"kernel": 3, "stride": 2, "padding": 1}),
    ("max", {"kernel": 3, "stride": 2, "ceil_mode": True}),
    ("avg", {"kernel": 2}), ("avg", {"kernel": 3, "stride": 2, "padding": 1}),
    ("avg", {"kernel": 3, "stride": 2, "padding": 1, "count_include_pad": True}),
    ("avg", {"kernel": 3, "stride": 2, "ceil_mode": True}),
    ("avg", {"kernel": 2, "stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": True}),
])
@pytest.mark.parametrize("dims", [1, 2])
def test_pool(kind, fields, dims):
    pre = [PRE1, PRE2][dims - 1]
    shape = [2, 8] if dims == 1 else [2, 7, 6]
    check_gradients([pre, {"op": f"{kind}pool{dims}d", **fields}], {"x": shape})


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool3d(kind):
    check_gradients([PRE3, {"op": f"{kind}pool3d", "kernel": 2, "padding": 1}], {"x": [2, 3, 4, 5]})


@pytest.mark.parametrize("op", ["global_avgpool", "global_maxpool"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_pool(op, keepdims):
    check_gradients([PRE2, {"op": op, "keepdims": keepdims}], {"x": [2, 3, 4]})


@pytest.mark.parametrize("project", [False, "conv", "conv_bn"])
def test_add(project):
    stride = 1 if not project else 2
    nodes = [PRE2, {"id": "a", "op": "conv2d", "channels": 4 if not project else 5, "kernel": 3,
                    "stride": stride, "padding": 1},
             {"id": "add", "op": "add", "skip": "pre", "project": project}]
    check_gradients(nodes, {"x": [2, 6, 5]}, batch=3)


def test_add_three_inputs_and_concat():
    nodes = [PRE1, {"id": "a", "op": "conv1d", "channels": 4, "kernel": 3, "padding": "same"},
             {"id": "b", "op": "conv1d", "channels": 2, "kernel": 1},
             {"id": "cat", "op": "concat", "inputs": ["a", "b", "pre"]},
             {"id": "s", "op": "add", "inputs": ["a", "pre"], "skip": "a"},
             {"id": "out", "op": "concat", "inputs": ["cat", "s"]}]
    check_gradients(nodes, {"x": [3, 6]})


@pytest.mark.parametrize("carry", ["coupled", "learned"])
@pytest.mark.parametrize("flat", [True, False])
def test_highway(carry, flat):
    pre = PREF if flat else PRE2
    body = {"id": "h", "op": "linear", "features": 6} if flat else \
        {"id": "h", "op": "conv2d", "channels": 4, "kernel": 3, "padding": "same"}
    hw = {"id": "hw", "op": "highway", "skip": "pre", "carry": carry,
          **({} if flat else {"gate_kernel": 3})}
    check_gradients([pre, body, {"op": "tanh"}, hw], {"x": [4] if flat else [2, 5, 4]})


def test_cross_entropy_through_softmax():
    nodes = [PREF, {"op": "relu"}, {"id": "logits", "op": "linear", "features": 4},
             {"id": "probs", "op": "softmax"}]
    check_gradients(nodes, {"x": [5]}, batch=5, loss="cross_entropy", mask=[1, 0, 1, 1, 0])


@pytest.mark.parametrize("fields", [
    {"kernel": 3}, {"kernel": 3, "stride": 2, "padding": 1, "output_padding": 1},
    {"kernel": 2, "stride": 2, "groups": 2}, {"kernel": 3, "stride": 2, "dilation": 2},
    {"kernel": 2, "stride": 3, "dilation": 2, "output_padding": 2, "padding": [[0, 2]]},
])
def test_conv_transpose1d(fields):
    check_gradients([PRE1, {"id": "t", "op": "conv_transpose1d", "channels": 2, **fields}],
                    {"x": [2, 5]})


def test_conv_transpose2d_3d():
    check_gradients([PRE2, {"id": "t", "op": "conv_transpose2d", "channels": 2, "kernel": [3, 2],
                            "stride": [2, 1], "padding": [1, 0], "output_padding": [1, 0]}],
                    {"x": [2, 3, 4]})
    check_gradients([PRE3, {"id": "t", "op": "conv_transpose3d", "channels": 2, "kernel": 2,
                            "stride": 2}], {"x": [2, 2, 3, 2]})


@pytest.mark.parametrize("fields,shape", [
    ({"scale": 2}, [2, 5]), ({"scale": [2, 3]}, [2, 3, 2]),
    ({"scale": 3, "mode": "linear"}, [2, 4]), ({"scale": [2, 3], "mode": "linear"}, [2, 3, 4]),
    ({"scale": 2, "mode": "linear", "align_corners": True}, [2, 3, 3]),
    ({"scale": [1, 2, 2], "mode": "linear"}, [2, 2, 2, 3]),
])
def test_upsample(fields, shape):
    pre = [PRE1, PRE2, PRE3][len(shape) - 2]
    check_gradients([pre, {"op": "upsample", **fields}], {"x": shape})


def test_maxunpool_subsample_crop_pad():
    nodes = [PRE2, {"id": "p", "op": "maxpool2d", "kernel": 2},
             {"id": "c", "op": "conv2d", "channels": 4, "kernel": 1},
             {"id": "u", "op": "maxunpool", "pool": "p"},
             {"id": "s", "op": "subsample", "factor": [2, 3]},
             {"id": "pd", "op": "pad", "pads": [[1, 0], [2, 1]]},
             {"id": "cr", "op": "crop", "size": [3, 3]},
             {"id": "cl", "op": "crop", "like": "s"}]
    check_gradients(nodes, {"x": [2, 6, 7]})


def test_reshape_permute():
    nodes = [PRE2, {"op": "permute", "perm": [1, 2, 0]}, {"op": "reshape", "shape": [-1, 8]},
             {"id": "c", "op": "conv1d", "channels": 2, "kernel": 3}]
    check_gradients(nodes, {"x": [2, 3, 4]})


def test_reshape_with_copied_axes():
    """0 copies an axis, -1 takes the rest: [4, 3, 4] -> [2, 6, 4] -> [2, 24]."""
    nodes = [PRE2, {"op": "reshape", "shape": [2, -1, 0]},
             {"id": "c", "op": "conv2d", "channels": 2, "kernel": [1, 3]},
             {"op": "reshape", "shape": [0, -1]}]
    check_gradients(nodes, {"x": [2, 3, 4]})


def test_dropout():
    """The mask is fixed for a given step, so finite differences see the same function."""
    check_gradients([PREF, {"op": "dropout", "rate": 0.3}, {"id": "post", "op": "linear",
                                                             "features": 3}], {"x": [5]}, batch=4)


@pytest.mark.parametrize("size,shape", [(3, [5, 3]), (5, [6, 2, 3]), (1, [4, 2, 2, 2])])
def test_lrn(size, shape):
    pre = [PRE1, PRE2, PRE3][len(shape) - 2]
    pre = {**pre, "channels": shape[0]}
    check_gradients([pre, {"op": "lrn", "size": size, "alpha": 0.5, "beta": 0.75, "k": 1.5}],
                    {"x": shape})


@pytest.mark.parametrize("padding,stride,dilation,groups", [c for c in CONV_CASES if not isinstance(c[0], list)][:8] + [("same", 2, 2, 2)])
def test_conv2d_against_torch(padding, stride, dilation, groups):
    """Weight and bias gradients of an MSE loss against torch autograd (skipped without torch)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    nodes = [{"id": "c", "op": "conv2d", "channels": 4, "kernel": 3, "padding": padding,
              "stride": stride, "dilation": dilation, "groups": groups}]
    checked, step, sess = compile_step(nodes, {"x": [2, 7, 6]}, batch=2)
    rng = np.random.default_rng(7)
    values, feeds = perturbed_state(checked, step, rng), random_batch(checked, step, rng)
    out = run(sess, step, values, feeds, lr=1.0)
    w, b = (torch.tensor(values[n], requires_grad=True) for n in ("c.weight", "c.bias"))
    pads = checked.node("c").layer.pads(checked.inputs["x"])
    flat = [p for pair in reversed(pads) for p in pair]
    x = F.pad(torch.tensor(feeds["x"]), flat, mode="circular" if padding == "circular" else "constant")
    y = F.conv2d(x, w, b, stride=stride, dilation=dilation, groups=groups)
    torch.mean((y - torch.tensor(feeds["labels"])) ** 2).backward()
    for name, tensor in (("c.weight", w), ("c.bias", b)):
        grad = values[name] - out[f"{name}.new"]
        np.testing.assert_allclose(grad, tensor.grad.numpy(), rtol=1e-3, atol=1e-5)


def test_network_against_torch():
    """Batchnorm (training), overlapping max pool, ceil-mode avg pool, bilinear upsampling and
    a transposed conv: every parameter gradient and the running statistics against torch."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    nodes = [{"id": "c1", "op": "conv2d", "channels": 4, "kernel": 3, "padding": 1},
             {"id": "bn1", "op": "batchnorm2d"}, {"op": "relu"},
             {"op": "maxpool2d", "kernel": 3, "stride": 2, "padding": 1},
             {"op": "avgpool2d", "kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True},
             {"op": "upsample", "scale": 2, "mode": "linear"},
             {"id": "t", "op": "conv_transpose2d", "channels": 3, "kernel": 3, "stride": 2,
              "padding": 1, "output_padding": 1}]
    checked, step, sess = compile_step(nodes, {"x": [2, 7, 7]}, batch=3)
    rng = np.random.default_rng(8)
    values, feeds = perturbed_state(checked, step, rng), random_batch(checked, step, rng)
    out = run(sess, step, values, feeds, lr=1.0)
    p = {n: torch.tensor(values[n], requires_grad=n in step.params) for n in step.carried}
    h = F.conv2d(torch.tensor(feeds["x"]), p["c1.weight"], p["c1.bias"], padding=1)
    h = F.batch_norm(h, p["bn1.running_mean"], p["bn1.running_var"], p["bn1.weight"],
                     p["bn1.bias"], training=True, momentum=0.1, eps=1e-5)
    h = F.max_pool2d(torch.relu(h), 3, 2, 1)
    h = F.avg_pool2d(h, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
    y = F.conv_transpose2d(h, p["t.weight"], p["t.bias"], stride=2, padding=1, output_padding=1)
    torch.mean((y - torch.tensor(feeds["labels"])) ** 2).backward()
    for name in step.params:
        np.testing.assert_allclose(values[name] - out[f"{name}.new"], p[name].grad.numpy(),
                                   rtol=1e-3, atol=1e-5, err_msg=name)
    for name in ("bn1.running_mean", "bn1.running_var"):
        np.testing.assert_allclose(out[f"{name}.new"], p[name].numpy(), rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("shape,groups", [([4, 1, 2], 1), ([4, 1, 1], 2), ([2, 2, 1], 1)])
def test_conv2d_weight_gradient_over_few_positions(monkeypatch, shape, groups):
    """Few output positions and many channels: the unfold's weight gradient is one GEMM over
    batch and positions together (layers/conv.py FEW_POSITIONS), against torch autograd (the
    unfold forced: a 2-D conv this small otherwise takes the conv form)."""
    from graphcnn.layers.conv import FEW_POSITIONS

    monkeypatch.setenv("GRAPHCNN_WEIGHT_GRAD", "unfold")
    torch = pytest.importorskip("torch")
    assert shape[1] * shape[2] * FEW_POSITIONS <= 16 // groups  # the path under test
    nodes = [{"id": "c", "op": "conv2d", "channels": 16, "kernel": 3, "padding": 1,
              "groups": groups}]
    checked, step, sess = compile_step(nodes, {"x": shape}, batch=3)
    rng = np.random.default_rng(9)
    values, feeds = perturbed_state(checked, step, rng), random_batch(checked, step, rng)
    out = run(sess, step, values, feeds, lr=1.0)
    w, b = (torch.tensor(values[n], requires_grad=True) for n in ("c.weight", "c.bias"))
    y = torch.nn.functional.conv2d(torch.tensor(feeds["x"]), w, b, padding=1, groups=groups)
    torch.mean((y - torch.tensor(feeds["labels"])) ** 2).backward()
    np.testing.assert_allclose(values["c.weight"] - out["c.weight.new"], w.grad.numpy(),
                               rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("padding,stride,dilation", [(1, 1, 1), (0, 2, 1), (2, 1, 2), (1, 3, 1)])
def test_conv2d_weight_gradient_as_a_conv(monkeypatch, padding, stride, dilation):
    """The weight gradient as one Conv with the batch as its channels (the form the CUDA step
    uses, layers/conv.py weight_grad_by_conv), here on the CPU against torch autograd."""
    monkeypatch.setenv("GRAPHCNN_WEIGHT_GRAD", "conv")
    torch = pytest.importorskip("torch")
    nodes = [{"id": "c", "op": "conv2d", "channels": 4, "kernel": 3, "padding": padding,
              "stride": stride, "dilation": dilation}]
    checked, step, sess = compile_step(nodes, {"x": [3, 8, 7]}, batch=2)
    assert not any(n.op_type == "MatMul" for n in step.model.graph.node)  # no unfold GEMM
    rng = np.random.default_rng(10)
    values, feeds = perturbed_state(checked, step, rng), random_batch(checked, step, rng)
    out = run(sess, step, values, feeds, lr=1.0)
    w = torch.tensor(values["c.weight"], requires_grad=True)
    y = torch.nn.functional.conv2d(torch.tensor(feeds["x"]), w, torch.tensor(values["c.bias"]),
                                   stride=stride, padding=padding, dilation=dilation)
    torch.mean((y - torch.tensor(feeds["labels"])) ** 2).backward()
    np.testing.assert_allclose(values["c.weight"] - out["c.weight.new"], w.grad.numpy(),
                               rtol=1e-3, atol=1e-5)
