"""upsample, maxunpool, subsample, crop and pad against numpy references written from the math."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

from graphcnn.api import check_spec, compile_spec
from graphcnn.errors import GraphCnnError, ShapeError, SpecError
from graphcnn.spec import NetworkSpec


def spec(shape, *nodes, outputs=None) -> NetworkSpec:
    data = {"name": "t", "inputs": {"x": list(shape)}, "nodes": list(nodes)}
    if outputs:
        data["outputs"] = outputs
    return NetworkSpec.from_text(json.dumps(data))


def run(model, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def compiled(shape, *nodes, seed=0):
    """Our shape, the ORT output on random input, and the input."""
    s = spec(shape, *nodes)
    checked = check_spec(s)
    model = compile_spec(s)
    x = np.random.default_rng(seed).standard_normal((2, *shape)).astype(np.float32)
    y = run(model, x)
    assert y.shape == (2, *checked.shape_of(checked.outputs[0]))
    assert onnx_output_shape(model)[1:] == list(y.shape[1:])  # Resize leaves N unnamed
    return model, x, y


def onnx_output_shape(model) -> list:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output[0].type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True, data_prop=True)
    return [d.dim_value or d.dim_param for d in inferred.graph.output[0].type.tensor_type.shape.dim]


def grid(shape):
    return itertools.product(*map(range, shape))


# ---- upsample -------------------------------------------------------------------------------

def source_coordinate(o: int, L: int, s: int, align_corners: bool) -> float:
    if align_corners:
        return o * (L - 1) / (L * s - 1) if L * s > 1 else 0.0
    return min(max((o + 0.5) / s - 0.5, 0.0), L - 1)


def upsample_ref(x, scale, mode, align_corners):
    size = x.shape[2:]
    out = np.zeros((*x.shape[:2], *(L * s for L, s in zip(size, scale))))
    for o in grid(out.shape[2:]):
        if mode == "nearest":
            out[(..., *o)] = x[(..., *(oo // s for oo, s in zip(o, scale)))]
            continue
        coords = [source_coordinate(oo, L, s, align_corners) for oo, L, s in zip(o, size, scale)]
        for corner in grid([2] * len(size)):  # the product of 1D linear weights per corner
            idx, weight = [], 1.0
            for c, xc, L in zip(corner, coords, size):
                i0 = math.floor(xc)
                idx.append(min(i0 + c, L - 1))
                weight *= (xc - i0) if c else (1 - (xc - i0))
            out[(..., *o)] += weight * x[(..., *idx)]
    return out


@pytest.mark.parametrize("shape, scale, mode, align", [
    ([2, 5], 3, "nearest", False),
    ([2, 3, 4], [2, 3], "nearest", False),
    ([1, 2, 3, 2], 2, "nearest", False),
    ([2, 4], 2, "linear", False),
    ([2, 4], 3, "linear", True),
    ([2, 3, 4], [2, 3], "linear", False),
    ([2, 3, 4], 2, "linear", True),
    ([1, 2, 3, 2], [2, 1, 2], "linear", False),
    ([1, 2, 3, 2], 2, "linear", True),
])
def test_upsample(shape, scale, mode, align):
    node = {"op": "upsample", "scale": scale, "mode": mode, "align_corners": align}
    _, x, y = compiled(shape, node)
    factors = [scale] * (len(shape) - 1) if isinstance(scale, int) else scale
    np.testing.assert_allclose(y, upsample_ref(x, factors, mode, align), rtol=1e-5, atol=1e-5)


def test_upsample_counts_and_window():
    checked = check_spec(spec([3, 4, 5], {"id": "u", "op": "upsample", "scale": 2,
                                          "mode": "linear"}))
    info = checked.node("u")
    assert info.shape == (3, 8, 10) and info.param_count == 0
    assert info.macs == 3 * 8 * 10 * 4
    assert str(info.rf) == "2/1/2"


# ---- maxunpool ------------------------------------------------------------------------------

def maxpool_argmax(x, kernel, stride, pad):
    """Per output window: the position of the (first) maximum, in unpadded coordinates."""
    size = x.shape[2:]
    out = [(L + 2 * pad - k) // s + 1 for L, k, s in zip(size, kernel, stride)]
    places = np.zeros((*x.shape[:2], *out, len(size)), dtype=int)
    for n, c in grid(x.shape[:2]):
        for o in grid(out):
            best, where = -np.inf, None
            for t in grid(kernel):
                i = [oo * s - pad + tt for oo, s, tt in zip(o, stride, t)]
                if all(0 <= ii < L for ii, L in zip(i, size)) and x[(n, c, *i)] > best:
                    best, where = x[(n, c, *i)], i
            places[(n, c, *o)] = where
    return places


def maxunpool_ref(x, kernel, stride, pad):
    places = maxpool_argmax(x, kernel, stride, pad)
    out = np.zeros_like(x)
    for idx in grid(places.shape[:-1]):
        where = (idx[0], idx[1], *places[idx])
        out[where] = x[where]  # the pooled value is the input value at its argmax
    return out


@pytest.mark.parametrize("shape, kernel, stride, pad", [
    ([2, 7], [2], [2], 0),
    ([2, 8], [3], [2], 1),
    ([2, 5, 6], [2, 3], [2, 3], 0),
    ([1, 6, 5], [3, 3], [2, 2], 1),
    ([1, 4, 4, 5], [2, 2, 2], [2, 2, 2], 0),
])
def test_maxunpool_puts_values_at_the_argmax(shape, kernel, stride, pad):
    dims = len(shape) - 1
    nodes = [{"id": "p", "op": f"maxpool{dims}d", "kernel": kernel, "stride": stride,
              "padding": pad},
             {"op": "relu"},
             {"id": "u", "op": "maxunpool", "pool": "p"}]
    _, x, y = compiled(shape, *nodes)
    want = np.maximum(maxunpool_ref(x, kernel, stride, pad), 0)
    np.testing.assert_allclose(y, want, rtol=0, atol=0)


def test_maxunpool_graph_edge_and_errors():
    s = spec([2, 8], {"id": "p", "op": "maxpool1d", "kernel": 2}, {"op": "maxunpool", "pool": "p"})
    checked = check_spec(s)
    assert checked.graph.edges["p", "maxunpool_1"]["kind"] == "unpool"
    assert checked.node("maxunpool_1").shape == (2, 8)
    bad = spec([2, 8], {"id": "r", "op": "relu"}, {"op": "maxunpool", "pool": "r"})
    with pytest.raises(ShapeError, match=r"maxunpool pool 'r' names a relu node"):
        check_spec(bad)
    wrong = spec([2, 8], {"id": "p", "op": "maxpool1d", "kernel": 2},
                 {"op": "maxunpool", "pool": "p", "inputs": ["x"]})
    with pytest.raises(ShapeError, match=r"shaped like its pool's output"):
        check_spec(wrong)


# ---- subsample, crop, pad -------------------------------------------------------------------

@pytest.mark.parametrize("shape, factor", [([2, 7], 3), ([2, 5, 6], [2, 4]), ([1, 3, 4, 5], 2)])
def test_subsample_keeps_every_kth(shape, factor):
    _, x, y = compiled(shape, {"op": "subsample", "factor": factor})
    k = [factor] * (len(shape) - 1) if isinstance(factor, int) else factor
    want = np.zeros((*x.shape[:2], *(-(-L // kk) for L, kk in zip(shape[1:], k))))
    for o in grid(want.shape[2:]):
        want[(..., *o)] = x[(..., *(oo * kk for oo, kk in zip(o, k)))]
    np.testing.assert_array_equal(y, want)


def crop_ref(x, target):
    starts = [(L - t) // 2 for L, t in zip(x.shape[2:], target)]
    out = np.zeros((*x.shape[:2], *target))
    for o in grid(target):
        out[(..., *o)] = x[(..., *(oo + b for oo, b in zip(o, starts)))]
    return out


@pytest.mark.parametrize("shape, size", [([2, 9], [4]), ([2, 7, 6], [4, 6]), ([1, 5, 4, 3], [2, 3, 1])])
def test_crop_to_size_is_centered(shape, size):
    _, x, y = compiled(shape, {"op": "crop", "size": size})
    np.testing.assert_array_equal(y, crop_ref(x, size))


def test_crop_like_another_node_and_offsets():
    nodes = [{"id": "small", "op": "maxpool2d", "kernel": 2},
             {"id": "c", "op": "crop", "like": "small", "inputs": ["x"]}]
    _, x, y = compiled([2, 11, 8], *nodes)  # a `like` crop needs even margins (issue 8)
    np.testing.assert_array_equal(y, crop_ref(x, [5, 4]))
    checked = check_spec(spec([2, 11, 8], *nodes))
    layer = checked.node("c").layer
    assert layer.offsets([(2, 11, 8), (2, 5, 4)]) == [3, 2]  # (11-5)/2, (8-4)/2
    assert checked.graph.edges["small", "c"]["kind"] == "crop"


def test_crop_errors():
    with pytest.raises(ShapeError, match=r"crop target is larger than the input") as err:
        check_spec(spec([2, 5, 5], {"op": "crop", "size": [6, 5]}))
    assert "op: pad" in str(err.value)
    with pytest.raises(SpecError, match=r"exactly one of `like`"):
        spec([2, 5], {"op": "crop"})


@pytest.mark.parametrize("shape, pads, value", [
    ([2, 4], 2, 0.0), ([2, 3, 4], [[1, 0], 2], -1.5), ([1, 2, 3, 2], [0, [2, 1], 1], 3.0)])
def test_pad_constant(shape, pads, value):
    _, x, y = compiled(shape, {"op": "pad", "pads": pads, "value": value})
    dims = len(shape) - 1
    pairs = [(pads, pads)] * dims if isinstance(pads, int) else \
        [(p, p) if isinstance(p, int) else tuple(p) for p in pads]
    want = np.full((*x.shape[:2], *(L + b + e for L, (b, e) in zip(shape[1:], pairs))), value)
    for i in grid(shape[1:]):
        want[(..., *(ii + b for ii, (b, _) in zip(i, pairs)))] = x[(..., *i)]
    np.testing.assert_array_equal(y, want)


def test_shape_errors_are_clear():
    with pytest.raises(ShapeError, match=r"upsample scale must be at least 1"):
        check_spec(spec([2, 4], {"op": "upsample", "scale": 0}))
    with pytest.raises(ShapeError, match=r"scale needs one value per spatial axis"):
        check_spec(spec([2, 4, 4], {"op": "upsample", "scale": [2, 2, 2]}))
    with pytest.raises(ShapeError, match=r"subsample factor must be at least 1"):
        check_spec(spec([2, 4], {"op": "subsample", "factor": 0}))
    with pytest.raises(ShapeError, match=r"pads must be at least 0"):
        check_spec(spec([2, 4], {"op": "pad", "pads": [[-1, 0]]}))
    with pytest.raises(ShapeError, match=r"pad needs spatial axes"):
        check_spec(spec([4], {"op": "pad", "pads": 1}))


def test_reference_evaluator_agrees_with_onnxruntime():
    nodes = [{"id": "p", "op": "maxpool2d", "kernel": 2},
             {"op": "upsample", "scale": 2, "mode": "linear", "align_corners": True},
             {"op": "subsample", "factor": 2},
             {"id": "u", "op": "maxunpool", "pool": "p"},
             {"op": "upsample", "scale": [1, 2], "mode": "nearest"},
             {"op": "pad", "pads": [1, [0, 2]], "value": 0.5},
             {"op": "crop", "size": [7, 9]}]
    model, x, y = compiled([2, 6, 5], *nodes)
    assert y.shape == (2, 2, 7, 9)
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(ref, y, rtol=1e-4, atol=1e-6)


def test_errors_carry_the_node():
    with pytest.raises(GraphCnnError) as err:
        check_spec(spec([2, 5], {"id": "big", "op": "crop", "size": [9]}))
    assert err.value.node == "big"
