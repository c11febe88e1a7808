"""Each op compiled alone: onnxruntime's output equals the loop reference in reference.py, the
parameter count equals the formula, and the output shape equals the checker's shape."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

import graphcnn
import reference as ref
from conftest import onnx_weights, ort_run

INPUTS = {1: [4, 10], 2: [4, 7, 6], 3: [4, 5, 6, 5]}
CONV_KERNELS = {1: [3, 2], 2: [[3, 2], 3], 3: [[2, 3, 2]]}
PADDINGS = ["valid", "same", "full", "circular", 1, "pairs"]


def one_node(dims_shape, node: dict, name: str = "t") -> graphcnn.NetworkSpec:
    data = {"name": name, "inputs": {"x": list(dims_shape)}, "nodes": [{"id": "y", **node}]}
    return graphcnn.NetworkSpec.from_text(json.dumps(data))


def compile_and_run(spec, seed=0, weights=None, batch=2, x=None):
    """(model, inputs, onnxruntime output, checked graph)."""
    model = graphcnn.compile_spec(spec, seed=seed, weights=weights)
    shape = next(iter(spec.inputs.values()))
    if x is None:
        x = np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)
    (y,) = ort_run(model, {"x": x})
    return model, x, y, graphcnn.check(spec)


def explicit_pairs(dims):
    return [[0, 1], [1, 0], [2, 1]][:dims]


def conv_cases():
    for dims, kernels in CONV_KERNELS.items():
        for kernel, padding, stride, dilation, groups in itertools.product(
                kernels, PADDINGS, [1, 2], [1, 2], [1, 2]):
            yield pytest.param(dims, kernel, padding, stride, dilation, groups,
                               id=f"{dims}d-k{kernel}-{padding}-s{stride}-d{dilation}-g{groups}")


@pytest.mark.parametrize("dims,kernel,padding,stride,dilation,groups", list(conv_cases()))
def test_conv_matches_reference(dims, kernel, padding, stride, dilation, groups):
    padding = explicit_pairs(dims) if padding == "pairs" else padding
    c_out = 6
    node = {"op": f"conv{dims}d", "channels": c_out, "kernel": kernel, "stride": stride,
            "dilation": dilation, "groups": groups, "padding": padding}
    spec = one_node(INPUTS[dims], node)
    bias = np.random.default_rng(7).standard_normal(c_out).astype(np.float32)
    model, x, y, checked = compile_and_run(spec, seed=3, weights={"y.bias": bias})
    w = onnx_weights(model)
    k = [kernel] * dims if isinstance(kernel, int) else kernel
    pads = ref.pads_for(padding, INPUTS[dims][1:], k, [stride] * dims, [dilation] * dims)
    want = ref.conv(x, w["y.weight"], w["y.bias"], [stride] * dims, [dilation] * dims, pads,
                    groups, circular=padding == "circular")
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    assert np.array_equal(w["y.bias"], bias)
    c_in = INPUTS[dims][0]
    node_info = checked.node("y")
    assert node_info.param_count == c_in // groups * c_out * math.prod(k) + c_out
    assert y.shape == (2, *node_info.shape)


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_without_bias_and_depthwise(dims):
    node = {"op": f"conv{dims}d", "channels": 8, "kernel": 3, "groups": 4, "bias": False,
            "padding": "same"}
    spec = one_node(INPUTS[dims], node)
    model, x, y, checked = compile_and_run(spec, seed=5)
    w = onnx_weights(model)
    assert "y.bias" not in w
    pads = ref.pads_for("same", INPUTS[dims][1:], [3] * dims, [1] * dims, [1] * dims)
    want = ref.conv(x, w["y.weight"], None, [1] * dims, [1] * dims, pads, groups=4)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    assert checked.node("y").param_count == 4 // 4 * 8 * 3 ** dims


@pytest.mark.parametrize("length,kernel,stride,dilation", [
    (10, 2, 1, 1), (10, 4, 1, 1), (10, 3, 2, 1), (9, 2, 2, 1), (11, 4, 3, 1), (10, 2, 1, 3),
    (7, 5, 4, 1), (8, 1, 3, 1)])
def test_same_padding_extra_at_end(length, kernel, stride, dilation):
    """Output ceil(L / stride); when the total padding is odd the extra zero goes at the end."""
    spec = one_node([1, length], {"op": "conv1d", "channels": 1, "kernel": kernel,
                                  "stride": stride, "dilation": dilation, "padding": "same"})
    model, x, y, _ = compile_and_run(spec, seed=2)
    assert y.shape[-1] == math.ceil(length / stride)
    total = max((math.ceil(length / stride) - 1) * stride + dilation * (kernel - 1) + 1 - length, 0)
    begin, end = total // 2, total - total // 2
    w = onnx_weights(model)["y.weight"]
    want = ref.conv(x, w, None, [stride], [dilation], [(begin, end)])
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    if total % 2:
        wrong = ref.conv(x, w, None, [stride], [dilation], [(end, begin)])
        assert not np.allclose(y, wrong, atol=1e-3), "the odd padding element must be at the end"


def pool_cases():
    lengths = {1: [3], 2: [[3, 2]], 3: [2]}
    for dims, kind in itertools.product([1, 2, 3], ["max", "avg"]):
        includes = [False, True] if kind == "avg" else [False]
        for kernel, padding, stride, ceil, include in itertools.product(
                lengths[dims], ["valid", "same", 1, "pairs"], [None, 1, 2], [False, True],
                includes):
            yield pytest.param(dims, kind, kernel, padding, stride, ceil, include,
                               id=f"{kind}{dims}d-k{kernel}-{padding}-s{stride}-ceil{int(ceil)}"
                                  f"-inc{int(include)}")


@pytest.mark.parametrize("dims,kind,kernel,padding,stride,ceil_mode,include", list(pool_cases()))
def test_pool_matches_reference(dims, kind, kernel, padding, stride, ceil_mode, include):
    k = [kernel] * dims if isinstance(kernel, int) else kernel
    if padding == "pairs":
        padding = [[0, 1], [1, 0], [1, 1]][:dims]
    if padding == 1 and min(k) < 2:
        pytest.skip("padding must be smaller than the kernel")
    node = {"op": f"{kind}pool{dims}d", "kernel": kernel, "padding": padding,
            "ceil_mode": ceil_mode}
    if stride is not None:
        node["stride"] = stride
    if kind == "avg":
        node["count_include_pad"] = include
    spec = one_node(INPUTS[dims], node)
    s = k if stride is None else [stride] * dims
    pads = ref.pads_for(padding, INPUTS[dims][1:], k, s, [1] * dims)
    if any(max(p) >= kk for p, kk in zip(pads, k)):
        with pytest.raises(graphcnn.GraphCnnError, match="smaller than the kernel"):
            graphcnn.check(spec)
        return
    _, x, y, checked = compile_and_run(spec, seed=4)
    want = ref.pool(x, kind, k, s, pads, ceil_mode, include)
    assert y.shape == want.shape == (2, *checked.node("y").shape)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert checked.node("y").param_count == 0


@pytest.mark.parametrize("dims,kind,keepdims", list(itertools.product([1, 2, 3], ["max", "avg"],
                                                                        [False, True])))
def test_global_pool(dims, kind, keepdims):
    spec = one_node(INPUTS[dims], {"op": f"global_{kind}pool", "keepdims": keepdims})
    _, x, y, checked = compile_and_run(spec)
    want = ref.global_pool(x, kind)
    if keepdims:
        want = want.reshape(*want.shape, *[1] * dims)
    assert y.shape == (2, *checked.node("y").shape)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias):
    spec = one_node([12], {"op": "linear", "features": 5, "bias": bias})
    weights = {"y.bias": np.arange(5, dtype=np.float32)} if bias else None
    model, x, y, checked = compile_and_run(spec, seed=9, weights=weights)
    w = onnx_weights(model)
    np.testing.assert_allclose(y, ref.linear(x, w["y.weight"], w.get("y.bias")), rtol=1e-4,
                               atol=1e-5)
    assert checked.node("y").param_count == 12 * 5 + (5 if bias else 0)


@pytest.mark.parametrize("op,shape", [("batchnorm1d", [3]), ("batchnorm1d", [3, 8]),
                                      ("batchnorm2d", [3, 4, 5]), ("batchnorm3d", [3, 2, 3, 4])])
def test_batchnorm_inference(op, shape):
    rng = np.random.default_rng(1)
    weights = {"y.weight": rng.uniform(0.5, 2, 3), "y.bias": rng.standard_normal(3),
               "y.running_mean": rng.standard_normal(3), "y.running_var": rng.uniform(0.2, 3, 3)}
    spec = one_node(shape, {"op": op, "eps": 1e-3})
    model, x, y, checked = compile_and_run(spec, weights=weights)
    w = onnx_weights(model)
    want = ref.batchnorm(x, w["y.weight"], w["y.bias"], w["y.running_mean"], w["y.running_var"],
                         eps=1e-3)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    assert checked.node("y").param_count == 2 * 3


@pytest.mark.parametrize("op", sorted(ref.ACTIVATIONS))
@pytest.mark.parametrize("shape", [[6], [3, 5]])
def test_activation(op, shape):
    spec = one_node(shape, {"op": op})
    _, x, y, checked = compile_and_run(spec)
    np.testing.assert_allclose(y, ref.ACTIVATIONS[op](x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    assert y.shape == (2, *checked.node("y").shape)


def test_leaky_relu_alpha():
    spec = one_node([5], {"op": "leaky_relu", "alpha": 0.3})
    _, x, y, _ = compile_and_run(spec)
    np.testing.assert_allclose(y, np.where(x > 0, x, 0.3 * x), rtol=1e-6)


def test_flatten_then_linear_chain():
    """A few nodes: conv -> relu -> flatten -> linear, against the references composed."""
    data = {"name": "chain", "inputs": {"x": [2, 9]}, "nodes": [
        {"id": "c", "op": "conv1d", "channels": 3, "kernel": 3, "stride": 2},
        {"id": "r", "op": "relu"}, {"id": "f", "op": "flatten"},
        {"id": "fc", "op": "linear", "features": 4}]}
    spec = graphcnn.NetworkSpec.from_text(json.dumps(data))
    model, x, y, checked = compile_and_run(spec, seed=11)
    w = onnx_weights(model)
    h = ref.conv(x, w["c.weight"], w["c.bias"], [2], [1], [(0, 0)])
    h = ref.ACTIVATIONS["relu"](h).reshape(2, -1)
    np.testing.assert_allclose(y, ref.linear(h, w["fc.weight"], w["fc.bias"]), rtol=1e-4, atol=1e-5)
    assert checked.total_params == 2 * 3 * 3 + 3 + 12 * 4 + 4


@pytest.mark.parametrize("op,fields", [
    ("maxpool2d", {}), ("avgpool2d", {}), ("avgpool2d", {"count_include_pad": True})])
@pytest.mark.parametrize("opset", [21, None])
def test_ceil_window_starting_in_padding_means_the_same_at_every_opset(op, fields, opset):
    """ceil_mode whose last window would start in the end padding (lint GC101): graphcnn and
    PyTorch drop it, ONNX before opset 22 keeps it; the lowering must give the checked shape
    and the same values at opset 21 as at the newest."""
    import yaml

    from graphcnn.api import check_spec, compile_spec
    from graphcnn.spec import NetworkSpec

    text = yaml.safe_dump({"name": "p", "inputs": {"x": [2, 7, 6]}, "nodes": [
        {"id": "p", "op": op, "kernel": 2, "stride": 2, "padding": 1, "ceil_mode": True,
         **fields}]})
    spec = NetworkSpec.from_text(text)
    want = check_spec(spec).shape_of("p")
    x = np.random.default_rng(0).standard_normal((3, 2, 7, 6)).astype(np.float32)
    (got,) = ort_run(compile_spec(spec, opset=opset), {"x": x})
    (newest,) = ort_run(compile_spec(spec), {"x": x})
    assert got.shape[1:] == tuple(want)
    np.testing.assert_allclose(got, newest, rtol=1e-6, atol=1e-6)
