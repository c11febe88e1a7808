"""Issue 14's activations, stochastic depth and convolution padding modes, each against numpy
written from PyTorch's documented definitions (torch.nn.ReLU6, torch.clamp, Hardsigmoid,
Hardswish, Mish, ELU, SELU, Softplus, PReLU; torchvision.ops.StochasticDepth mode="row"; the
padding_mode of torch.nn.Conv*d), the backward rules against finite differences through the
compiled training step, refused fields located at file:line:col, and a --precision fp16 compile.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import zlib

import numpy as np
import onnx
import pytest
import yaml

import graphcnn
import reference as ref
from conftest import onnx_weights, ort_run
from test_gradients import PRE1, PRE2, PREF, check_gradients, compile_step, run

from graphcnn.cli import main
from graphcnn.errors import GraphCnnError, ShapeError

SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def softplus(v, beta=1.0, threshold=20.0):
    """torch.nn.functional.softplus: log1p(exp(beta x)) / beta, x where beta x > threshold."""
    bx = beta * v
    return np.where(bx > threshold, v, np.log1p(np.exp(np.minimum(bx, threshold))) / beta)


def relu6(v):
    return np.minimum(np.maximum(v, 0.0), 6.0)


def elu(v, alpha=1.0):
    return np.where(v > 0, v, alpha * np.expm1(np.minimum(v, 0.0)))


# op fields -> the function of x that PyTorch's definition gives
ACTIVATIONS = [
    ({"op": "relu6"}, relu6),
    ({"op": "clip", "min": -1.5, "max": 2.0}, lambda v: np.clip(v, -1.5, 2.0)),
    ({"op": "clip", "min": 0.25}, lambda v: np.maximum(v, 0.25)),
    ({"op": "clip", "max": -0.5}, lambda v: np.minimum(v, -0.5)),
    ({"op": "clip", "min": 1.0, "max": 1.0}, lambda v: np.full_like(v, 1.0)),
    ({"op": "hardsigmoid"}, lambda v: relu6(v + 3) / 6),
    ({"op": "hardswish"}, lambda v: v * relu6(v + 3) / 6),
    ({"op": "mish"}, lambda v: v * np.tanh(np.log1p(np.exp(v)))),
    ({"op": "elu"}, elu),
    ({"op": "elu", "alpha": 0.3}, lambda v: elu(v, 0.3)),
    ({"op": "selu"}, lambda v: SELU_SCALE * elu(v, SELU_ALPHA)),
    ({"op": "softplus"}, softplus),
    ({"op": "softplus", "beta": 2.0, "threshold": 1.0}, lambda v: softplus(v, 2.0, 1.0)),
    ({"op": "softplus", "beta": 0.5, "threshold": 3.0}, lambda v: softplus(v, 0.5, 3.0)),
]
SHAPES = [[7], [3, 6], [2, 3, 4]]  # [N, F], [N, C, L], [N, C, H, W]


def one_node(shape, node: dict, name: str = "t") -> graphcnn.NetworkSpec:
    data = {"name": name, "inputs": {"x": list(shape)}, "nodes": [{"id": "y", **node}]}
    return graphcnn.NetworkSpec.from_text(json.dumps(data))


def compile_run(spec, x, weights=None):
    """(onnxruntime's output, the model, the checked graph); the model passes the full check."""
    model = graphcnn.compile_spec(spec, seed=1, weights=weights)
    onnx.checker.check_model(model, full_check=True)
    return ort_run(model, {"x": x})[0], model, graphcnn.check(spec)


def sample(shape, seed=0, batch=2, scale=4.0):
    """Normal values spread over the ops' regions, and the kinks and thresholds themselves."""
    x = np.random.default_rng(seed).standard_normal((batch, *shape)) * scale
    flat = x.reshape(-1)
    special = [-30, -6, -3, -1.5, -0.5, 0, 0.25, 0.5, 1, 2, 3, 6, 10, 25, 100]
    flat[:len(special)] = special[:flat.size]
    return x.astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"rank{len(s) + 1}")
@pytest.mark.parametrize("node,function", ACTIVATIONS,
                         ids=[json.dumps(n)[1:-1].replace('"', "") for n, _ in ACTIVATIONS])
def test_activation_matches_pytorch_definition(node, function, shape):
    x = sample(shape)
    y, model, checked = compile_run(one_node(shape, node), x)
    want = function(x.astype(np.float64))
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    info = checked.node("y")
    assert info.shape == tuple(shape) and info.param_count == 0 and y.shape == x.shape
    assert info.layer.window(list(info.in_shapes)).extent == (1,) * (len(shape) - 1)


def test_lowerings_run_at_the_newest_opset():
    """Mish and HardSwish are composed (onnxruntime's CPU provider has no kernel for them),
    so none of these ops lowers a model's opset."""
    nodes = [node for node, _ in ACTIVATIONS] + [{"op": "prelu", "channels": 3}]
    plain = graphcnn.compile_spec(one_node([3, 6], {"op": "relu"}))
    for node in nodes:
        model = graphcnn.compile_spec(one_node([3, 6], node))
        assert model.opset_import[0].version == plain.opset_import[0].version, node


@pytest.mark.parametrize("shape,channels", [([5], 1), ([5], 5), ([3, 6], 1), ([3, 6], 3),
                                            ([4, 3, 2], 4), ([2, 2, 3, 2], 2)])
def test_prelu(shape, channels):
    """Slope a per channel (axis 1) or shared; torch's init 0.25; count = channels."""
    spec = one_node(shape, {"op": "prelu", "channels": channels})
    assert onnx_weights(graphcnn.compile_spec(spec))["y.weight"].tolist() == [0.25] * channels
    slope = np.linspace(-0.5, 1.5, channels).astype(np.float32)
    x = sample(shape, seed=channels)
    y, _, checked = compile_run(spec, x, weights={"y.weight": slope})
    a = slope.reshape((1, channels) + (1,) * (len(shape) - 1)) if channels > 1 else slope
    np.testing.assert_allclose(y, np.where(x > 0, x, a * x), rtol=1e-6, atol=1e-6)
    assert checked.node("y").param_count == channels


def test_prelu_channels_must_match():
    with pytest.raises(ShapeError, match="one shared slope or one per channel") as info:
        graphcnn.check(one_node([3, 6], {"op": "prelu", "channels": 4}))
    assert "expected channels: 1 or 3; received channels: 4" in str(info.value)
    assert info.value.node == "y"


# --- gradients: each op after a 1x1 conv (or linear), so the pre layer checks dx too

GRADIENT_CASES = [
    ({"op": "relu6"}, PRE1, [2, 9]),
    ({"op": "clip", "min": -0.4, "max": 0.3}, PRE2, [2, 4, 3]),
    ({"op": "clip", "min": -0.25}, PRE1, [2, 9]),
    ({"op": "hardsigmoid"}, PRE1, [2, 9]),
    ({"op": "hardswish"}, PRE2, [2, 4, 3]),
    ({"op": "mish"}, PRE1, [2, 9]),
    ({"op": "elu", "alpha": 0.7}, PRE2, [2, 4, 3]),
    ({"op": "selu"}, PRE1, [2, 9]),
    ({"op": "softplus"}, PRE1, [2, 9]),
    ({"op": "softplus", "beta": 2.0, "threshold": 0.5}, PRE2, [2, 4, 3]),
    ({"op": "prelu"}, PRE1, [2, 9]),
    ({"op": "prelu", "channels": 4}, PRE2, [2, 4, 3]),
    ({"op": "prelu", "channels": 6}, PREF, [5]),
]


@pytest.mark.parametrize("node,pre,shape", GRADIENT_CASES,
                         ids=[json.dumps(n)[1:-1].replace('"', "") for n, _, _ in GRADIENT_CASES])
def test_activation_gradients(node, pre, shape):
    """Clip's and softplus's fields put values on both sides of their kinks (softplus's
    threshold is a jump); on these inputs (seed 0) no value lies within eps of one. Where one
    does, the check fails at eps = 3e-3 and passes at 1e-4 (seen on other seeds)."""
    check_gradients([pre, {"id": "a", **node}], {"x": shape})


# --- drop_path

def hashed_uniform(step: int, node: str, count: int) -> np.ndarray:
    """The documented mask hash: index + step * 2^20 + crc32(node) mod 2^20, twice through
    h -> (1103515245 h + 12345) mod 2^31, then h / 2^31."""
    h = np.arange(count, dtype=np.int64) + step * (1 << 20) + zlib.crc32(node.encode()) % (1 << 20)
    for _ in range(2):
        h = (h % (1 << 31)) * 1103515245 + 12345
    return (h % (1 << 31)).astype(np.float64) / (1 << 31)


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.6, 1.0])
@pytest.mark.parametrize("shape", [[6], [2, 3, 4]])
def test_drop_path_training_forward(rate, shape):
    """torchvision's StochasticDepth(mode="row"): sample n kept (scaled by 1/(1 - rate)) or
    zeroed whole. With x[n] = n + 1 and zero labels the mse loss is mean(y^2), a sum over the
    samples weighted by (n + 1)^2, so a wrong sample's mask shows."""
    batch = 16
    nodes = [{"id": "dp", "op": "drop_path", "rate": rate}]
    _, step, sess = compile_step(nodes, {"x": shape}, batch=batch)
    rows = np.arange(1, batch + 1, dtype=np.float32).reshape(-1, *[1] * len(shape))
    x = np.ones((batch, *shape), np.float32) * rows
    feeds = {"x": x, "labels": np.zeros_like(x), "mask": np.ones(batch, np.float32)}
    for t in (1, 2):
        keep = hashed_uniform(t, "dp", batch) >= rate
        scale = 1 / (1 - rate) if rate < 1 else 1.0
        y = x * (keep * scale).reshape(-1, *[1] * len(shape))
        loss = run(sess, step, {}, feeds, t=t)["loss"]
        np.testing.assert_allclose(loss, np.mean(y.astype(np.float64) ** 2), rtol=1e-6)
        if 0 < rate < 1:
            assert 0 < keep.sum() < batch  # the case tests both kept and dropped samples


def test_drop_path_is_the_identity_at_inference():
    x = sample([3, 4, 5])
    y, _, checked = compile_run(one_node([3, 4, 5], {"op": "drop_path", "rate": 0.5}), x)
    np.testing.assert_array_equal(y, x)
    assert checked.node("y").param_count == 0


@pytest.mark.parametrize("pre,shape", [(PREF, [5]), (PRE2, [2, 3, 3])])
def test_drop_path_gradient(pre, shape):
    """The mask is fixed within a step, so finite differences see one function; at step 1
    the node 'dp' keeps some of the 8 samples and drops others."""
    keep = hashed_uniform(1, "dp", 8) >= 0.5
    assert 0 < keep.sum() < 8
    post = {"id": "post", "op": "linear", "features": 3}
    nodes = [pre, {"id": "dp", "op": "drop_path", "rate": 0.5}]
    check_gradients(nodes + ([post] if pre is PREF else []), {"x": shape}, batch=8)


# --- padding modes

NP_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}
INPUTS = {1: [3, 9], 2: [2, 6, 7], 3: [2, 4, 5, 4]}
PAD_CASES = [  # dims, kernel, padding, stride, dilation
    (1, 3, 1, 1, 1), (1, 3, 2, 2, 1), (1, 4, "same", 1, 1), (1, 3, [[0, 3]], 1, 2),
    (1, 5, "full", 2, 1),
    (2, 3, 1, 1, 1), (2, [3, 2], [[2, 0], [1, 1]], 2, 1), (2, 3, "same", 2, 1),
    (2, 2, [1, 2], 1, 2),
    (3, 3, 1, 1, 1), (3, 2, [[1, 0], [0, 1], [1, 1]], 2, 1),
]


def pad_cases():
    for mode in NP_MODES:
        for dims, kernel, padding, stride, dilation in PAD_CASES:
            yield pytest.param(mode, dims, kernel, padding, stride, dilation,
                               id=f"{mode}-{dims}d-k{kernel}-p{padding}-s{stride}-d{dilation}")


@pytest.mark.parametrize("mode,dims,kernel,padding,stride,dilation", list(pad_cases()))
def test_conv_padding_mode_matches_numpy(mode, dims, kernel, padding, stride, dilation):
    """np.pad in torch's mode (reflect, edge, wrap), then the loop conv without padding."""
    node = {"op": f"conv{dims}d", "channels": 2, "kernel": kernel, "padding": padding,
            "padding_mode": mode, "stride": stride, "dilation": dilation}
    x = sample(INPUTS[dims], seed=dims, scale=1.0)
    y, model, checked = compile_run(one_node(INPUTS[dims], node), x)
    k = [kernel] * dims if isinstance(kernel, int) else kernel
    pads = ref.pads_for(padding, INPUTS[dims][1:], k, [stride] * dims, [dilation] * dims)
    padded = np.pad(x.astype(np.float64), [(0, 0), (0, 0), *pads], mode=NP_MODES[mode])
    w = onnx_weights(model)
    want = ref.conv(padded, w["y.weight"], w["y.bias"], [stride] * dims, [dilation] * dims,
                    [(0, 0)] * dims)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    info = checked.node("y")
    assert y.shape == (2, *info.shape)
    assert info.param_count == INPUTS[dims][0] * 2 * math.prod(k) + 2


def test_padding_circular_shorthand_is_padding_mode_circular():
    """`padding: circular` keeps its ONNX; padding_mode circular with the same amounts
    computes the same values."""
    short = one_node([2, 8], {"op": "conv1d", "channels": 2, "kernel": 3, "padding": "circular"})
    both = one_node([2, 8], {"op": "conv1d", "channels": 2, "kernel": 3, "padding": "circular",
                             "padding_mode": "circular"})
    spelled = one_node([2, 8], {"op": "conv1d", "channels": 2, "kernel": 3, "padding": 1,
                                "padding_mode": "circular"})
    models = [graphcnn.compile_spec(s, seed=2) for s in (short, both, spelled)]
    assert models[0].graph.SerializeToString() == models[1].graph.SerializeToString()
    x = sample([2, 8], scale=1.0)
    np.testing.assert_allclose(ort_run(models[2], {"x": x})[0], ort_run(models[0], {"x": x})[0],
                               rtol=1e-6, atol=1e-6)


def test_zero_padding_makes_no_pad_node():
    spec = one_node([2, 8], {"op": "conv1d", "channels": 2, "kernel": 3, "padding": 1,
                             "padding_mode": "zeros"})
    (conv,) = graphcnn.compile_spec(spec).graph.node
    assert conv.op_type == "Conv"
    assert next(a.ints for a in conv.attribute if a.name == "pads") == [1, 1]


PAD_GRADIENTS = [  # padding, stride on a [2, 7] (1D) or [2, 5, 6] (2D) input
    (2, 1), (2, 2), ([[1, 3]], 2), ("same", 1),
]


@pytest.mark.parametrize("mode", list(NP_MODES))
@pytest.mark.parametrize("padding,stride", PAD_GRADIENTS)
def test_conv1d_padding_mode_gradient(mode, padding, stride):
    conv = {"id": "c", "op": "conv1d", "channels": 3, "kernel": 3, "padding": padding,
            "padding_mode": mode, "stride": stride}
    check_gradients([PRE1, conv], {"x": [2, 7]})


@pytest.mark.parametrize("mode", list(NP_MODES))
@pytest.mark.parametrize("padding,stride,dilation", [
    ([[2, 1], [1, 2]], 2, 1), (1, 1, 1), ("same", [2, 1], [1, 2])])
def test_conv2d_padding_mode_gradient(mode, padding, stride, dilation):
    conv = {"id": "c", "op": "conv2d", "channels": 3, "kernel": [3, 2], "padding": padding,
            "padding_mode": mode, "stride": stride, "dilation": dilation, "groups": 1}
    check_gradients([PRE2, conv], {"x": [2, 5, 6]})


@pytest.mark.parametrize("padding,length,fine", [(3, 4, True), (4, 4, False), ([[0, 5]], 5, False)])
def test_reflect_padding_must_stay_inside_the_input(padding, length, fine):
    """torch's rule: reflect padding < input size on every axis."""
    spec = one_node([1, length], {"op": "conv1d", "channels": 1, "kernel": 3,
                                  "padding": padding, "padding_mode": "reflect"})
    if fine:
        graphcnn.check(spec)
        return
    with pytest.raises(ShapeError, match="reflect padding mirrors the input") as info:
        graphcnn.check(spec)
    assert "expected padding less than the input length per axis" in str(info.value)
    assert info.value.node == "y"


def test_explicit_circular_padding_wraps_at_most_once():
    spec = one_node([1, 3], {"op": "conv1d", "channels": 1, "kernel": 3, "padding": 4,
                             "padding_mode": "circular"})
    with pytest.raises(ShapeError, match="wraps at most once"):
        graphcnn.check(spec)


# --- refused fields, located at their key

HEAD = "name: t\ninputs: {x: [3, 8, 8]}\nnodes:\n"
REFUSED = [
    ("op: clip, min: 2, max: 1", "max", "Value error, max must be at least min (2.0)"),
    ("op: clip, min: .nan", "min", "Input should be a finite number"),
    ("op: softplus, beta: 0", "beta", "Input should be greater than 0"),
    ("op: softplus, threshold: .inf", "threshold", "Input should be a finite number"),
    ("op: elu, alpha: .inf", "alpha", "Input should be a finite number"),
    ("op: prelu, channels: 0", "channels", "Input should be greater than or equal to 1"),
    ("op: drop_path, rate: 1.5", "rate", "Input should be less than or equal to 1"),
    ("op: drop_path, rate: -0.1", "rate", "Input should be greater than or equal to 0"),
    ("op: conv2d, channels: 2, kernel: 3, padding_mode: mirror", "padding_mode",
     "Input should be 'zeros', 'reflect', 'replicate' or 'circular'"),
    ("op: conv2d, channels: 2, kernel: 3, padding: circular, padding_mode: reflect",
     "padding_mode", "Value error, `padding: circular` wraps around the input"),
]


@pytest.mark.parametrize("fields,field,message", REFUSED, ids=[f"{c[1]}-{i}" for i, c in
                                                                enumerate(REFUSED)])
def test_bad_field_is_refused_at_its_key(tmp_path, fields, field, message):
    """`graphcnn check` exits 1 with the error at the field's file:line:col."""
    line = f"  - {{id: n, {fields}}}\n"
    path = tmp_path / "bad.yaml"
    path.write_text(HEAD + line)
    code, text = cli("check", path)
    col = line.index(f" {field}:") + 2
    assert code == 1 and "Traceback" not in text
    assert text.startswith(f"error: {path}:4:{col}: n: bad value for '{field}': {message}")


def test_clip_needs_a_bound():
    with pytest.raises(GraphCnnError, match="clip needs `min`, `max` or both") as info:
        one_node([3], {"op": "clip"})
    assert info.value.loc is not None


def test_drop_path_needs_its_rate():
    with pytest.raises(GraphCnnError, match="rate"):
        one_node([3], {"op": "drop_path"})


# --- --precision fp16 of a spec using every op

SPEC = {"name": "zoo_acts", "inputs": {"x": [3, 12, 12]}, "nodes": [
    {"id": "c1", "op": "conv2d", "channels": 8, "kernel": 3, "padding": 1,
     "padding_mode": "reflect"},
    {"id": "a1", "op": "hardswish"}, {"id": "a2", "op": "prelu", "channels": 8},
    {"id": "c2", "op": "conv2d", "channels": 8, "kernel": 3, "padding": 2, "stride": 2,
     "padding_mode": "replicate"},
    {"id": "a3", "op": "mish"}, {"id": "a4", "op": "softplus", "beta": 2.0},
    {"id": "a5", "op": "selu"}, {"id": "a6", "op": "elu"}, {"id": "a7", "op": "relu6"},
    {"id": "a8", "op": "hardsigmoid"}, {"id": "a9", "op": "clip", "min": 0.1, "max": 0.9},
    {"id": "c3", "op": "conv2d", "channels": 4, "kernel": 3, "padding": 1,
     "padding_mode": "circular"},
    {"id": "dp", "op": "drop_path", "rate": 0.2}, {"id": "a10", "op": "prelu"},
    {"op": "global_avgpool"}, {"id": "fc", "op": "linear", "features": 3}]}


def cli(*args) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = main([str(a) for a in args])
    return code, buffer.getvalue()


def test_fp16_compile_runs_and_keeps_softplus_fp32(tmp_path):
    path = tmp_path / "zoo.yaml"
    path.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    plain, half = tmp_path / "plain.onnx", tmp_path / "half.onnx"
    assert cli("compile", path, "-o", plain)[0] == 0
    code, text = cli("compile", path, "-o", half, "--precision", "fp16")
    assert code == 0, text
    x = sample([3, 12, 12], seed=4, batch=3, scale=1.0)
    want = ort_run(onnx.load(str(plain)), {"x": x})[0]
    got = ort_run(onnx.load(str(half)), {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(half)))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    softplus_inputs = [n.input[0] for n in model.graph.node if n.op_type == "Softplus"]
    assert len(softplus_inputs) == 2
    assert all(types[name] == onnx.TensorProto.FLOAT for name in softplus_inputs)
