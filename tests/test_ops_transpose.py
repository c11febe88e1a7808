"""conv_transpose1d/2d/3d against a loop reference and as the adjoint of conv."""
from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

from graphcnn.api import check_spec, compile_spec
from graphcnn.errors import ShapeError
from graphcnn.spec import NetworkSpec


def spec(shape, *nodes) -> NetworkSpec:
    return NetworkSpec.from_text(json.dumps({"name": "t", "inputs": {"x": list(shape)},
                                             "nodes": list(nodes)}))


def run(model, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def onnx_output_shape(model) -> list:
    """The output shape ONNX shape inference derives when ours is erased."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output[0].type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    out = inferred.graph.output[0].type.tensor_type.shape.dim
    return [d.dim_value or d.dim_param for d in out]


def axes(value, dims):
    return [value] * dims if isinstance(value, int) else list(value)


def pad_pairs(padding, dims):
    return [(p, p) if isinstance(p, int) else tuple(p) for p in axes(padding, dims)]


def conv_transpose_ref(x, w, stride, pads, dilation, out_pad, groups):
    """y[o] += x[i] * w[t] wherever o = i*stride - pad_begin + t*dilation (per axis)."""
    n, c_in, *size = x.shape
    dims = len(size)
    s, d, op = axes(stride, dims), axes(dilation, dims), axes(out_pad, dims)
    k = w.shape[2:]
    per_in, per_out = c_in // groups, w.shape[1]
    out = [(L - 1) * s[a] - pads[a][0] - pads[a][1] + d[a] * (k[a] - 1) + op[a] + 1
           for a, L in enumerate(size)]
    y = np.zeros((n, per_out * groups, *out))
    for ci in range(c_in):
        g = ci // per_in
        for i in itertools.product(*map(range, size)):
            for t in itertools.product(*map(range, k)):
                o = [i[a] * s[a] - pads[a][0] + t[a] * d[a] for a in range(dims)]
                if all(0 <= o[a] < out[a] for a in range(dims)):
                    for co in range(per_out):
                        y[(slice(None), g * per_out + co, *o)] += x[:, ci][(slice(None), *i)] * w[(ci, co, *t)]
    return y


CASES = [  # dims, c_in, c_out, size, kernel, stride, padding, dilation, output_padding, groups
    (1, 2, 3, [5], 3, 2, 0, 1, 1, 1),
    (1, 4, 2, [6], 2, 3, [[1, 0]], 2, 2, 2),
    (2, 2, 4, [3, 4], [3, 2], [2, 1], [1, [0, 1]], 1, [1, 0], 2),
    (2, 3, 2, [4, 3], 3, 2, 1, [2, 1], 1, 1),
    (3, 2, 2, [2, 3, 2], 2, [1, 2, 2], 0, 1, [0, 1, 0], 1),
]


def layer_node(dims, c_out, kernel, stride, padding, dilation, out_pad, groups, bias=False):
    return {"id": "up", "op": f"conv_transpose{dims}d", "channels": c_out, "kernel": kernel,
            "stride": stride, "padding": padding, "dilation": dilation,
            "output_padding": out_pad, "groups": groups, "bias": bias}


@pytest.mark.parametrize("case", CASES)
def test_matches_loop_reference_and_onnx_shapes(case):
    dims, c_in, c_out, size, kernel, stride, padding, dilation, out_pad, groups = case
    rng = np.random.default_rng(0)
    node = layer_node(dims, c_out, kernel, stride, padding, dilation, out_pad, groups, bias=True)
    s = spec([c_in, *size], node)
    info = check_spec(s).node("up")
    w = rng.standard_normal(info.params["weight"].shape).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    model = compile_spec(s, weights={"up.weight": w, "up.bias": b})
    x = rng.standard_normal((2, c_in, *size)).astype(np.float32)
    want = conv_transpose_ref(x, w, stride, pad_pairs(padding, dims), dilation, out_pad, groups)
    want += b.reshape(1, -1, *[1] * dims)
    got = run(model, x)
    assert got.shape == (2, *info.shape) == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert onnx_output_shape(model) == ["N", *info.shape]
    if groups == 1:  # onnx.reference's ConvTranspose mishandles group > 1 (onnx 1.23)
        ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
        np.testing.assert_allclose(ref, got, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_is_the_adjoint_of_conv(case):
    """<conv(x), y> == <x, conv_transpose(y)> with the same weights and geometry."""
    dims, c_in, c_out, size, kernel, stride, padding, dilation, _, groups = case
    rng = np.random.default_rng(1)
    # conv maps c_out channels at `size` to c_in channels; the transpose maps them back
    k, s, d = axes(kernel, dims), axes(stride, dims), axes(dilation, dims)
    pads = pad_pairs(padding, dims)
    big = [L * st + d[a] * (k[a] - 1) for a, (L, st) in enumerate(zip(size, s))]
    conv = {"id": "c", "op": f"conv{dims}d", "channels": c_in, "kernel": kernel, "stride": stride,
            "padding": [list(p) for p in pads], "dilation": dilation, "groups": groups,
            "bias": False}
    fwd = spec([c_out, *big], conv)
    small = check_spec(fwd).node("c").shape
    extra = [(L + b + e - d[a] * (k[a] - 1) - 1) % s[a]
             for a, (L, (b, e)) in enumerate(zip(big, pads))]
    bwd = spec(list(small), layer_node(dims, c_out, kernel, stride, [list(p) for p in pads],
                                       dilation, extra, groups))
    assert check_spec(bwd).node("up").shape == (c_out, *big)
    w = rng.standard_normal(check_spec(fwd).node("c").params["weight"].shape).astype(np.float32)
    x = rng.standard_normal((1, c_out, *big)).astype(np.float32)
    y = rng.standard_normal((1, *small)).astype(np.float32)
    lhs = float(np.sum(run(compile_spec(fwd, weights={"c.weight": w}), x) * y))
    rhs = float(np.sum(x * run(compile_spec(bwd, weights={"up.weight": w}), y)))
    assert lhs == pytest.approx(rhs, rel=1e-4, abs=1e-4)


def test_parameter_count_macs_and_window():
    s = spec([6, 5, 5], {"id": "up", "op": "conv_transpose2d", "channels": 4, "kernel": 3,
                         "stride": 2, "padding": 1, "output_padding": 1, "groups": 2})
    checked = check_spec(s)
    info = checked.node("up")
    assert info.shape == (4, 10, 10)
    assert info.params["weight"].shape == (6, 2, 3, 3)
    assert info.param_count == 6 * 4 // 2 * 9 + 4 == checked.total_params
    assert info.macs == 6 * 5 * 5 * 2 * 9
    assert str(info.rf) == "2/1/2"  # ceil(3 / 2) inputs seen, positions step by half an input
    assert info.params["weight"].fan_in == 3 * 9 // 4


def test_output_padding_must_be_below_stride_or_dilation():
    s = spec([2, 5], {"id": "up", "op": "conv_transpose1d", "channels": 2, "kernel": 3,
                      "stride": 2, "output_padding": 2})
    with pytest.raises(ShapeError, match=r"output_padding 2 on spatial axis 0 is too large"):
        check_spec(s)


def test_too_much_padding_shows_the_rule():
    s = spec([2, 2], {"id": "up", "op": "conv_transpose1d", "channels": 2, "kernel": 1,
                      "padding": 1})
    with pytest.raises(ShapeError, match=r"output would have 0 positions") as err:
        check_spec(s)
    assert "(2-1)*1 - 1 - 1 + 1*(1-1) + 0 + 1 = 0" in str(err.value)
