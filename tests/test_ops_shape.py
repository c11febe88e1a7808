"""reshape, permute and lrn against numpy references written from the math."""
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
from graphcnn.errors import ShapeError
from graphcnn.spec import NetworkSpec


def spec(shape, *nodes) -> NetworkSpec:
    return NetworkSpec.from_text(json.dumps({"name": "t", "inputs": {"x": list(shape)},
                                             "nodes": list(nodes)}))


def compiled(shape, *nodes, batch=3):
    """The ORT output on random input (our shape checked, ONNX's inferred shape too)."""
    s = spec(shape, *nodes)
    checked = check_spec(s)
    model = compile_spec(s)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    y = sess.run(None, {"x": x})[0]
    assert y.shape == (batch, *checked.shape_of(checked.outputs[0]))
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output[0].type.tensor_type.ClearField("shape")
    dims = onnx.shape_inference.infer_shapes(m, strict_mode=True).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1:] == list(y.shape[1:])
    return model, x, y


@pytest.mark.parametrize("shape, target", [
    ([2, 6], [12]), ([2, 6], [3, -1]), ([3, 4, 5], [-1, 10]), ([2, 2, 3, 4], [4, 3, 2, 2])])
def test_reshape_keeps_element_order(shape, target):
    _, x, y = compiled(shape, {"op": "reshape", "shape": target})
    flat = x.reshape(x.shape[0], -1)
    known = math.prod(d for d in target if d != -1)
    full = [d if d != -1 else flat.shape[1] // known for d in target]
    assert list(y.shape[1:]) == full
    for n in range(x.shape[0]):  # row-major order of the non-batch elements is kept
        for i, j in enumerate(itertools.product(*map(range, full))):
            assert y[(n, *j)] == flat[n, i]


def test_reshape_errors():
    with pytest.raises(ShapeError, match=r"reshape cannot make \[5, -1\] from 12 elements"):
        check_spec(spec([3, 4], {"op": "reshape", "shape": [5, -1]}))
    with pytest.raises(ShapeError, match=r"reshape cannot make \[5, 2\] from 12 elements"):
        check_spec(spec([3, 4], {"op": "reshape", "shape": [5, 2]}))
    with pytest.raises(ShapeError, match=r"at most one -1"):
        check_spec(spec([3, 4], {"op": "reshape", "shape": [-1, -1]}))


@pytest.mark.parametrize("shape, perm", [
    ([2, 5], [1, 0]), ([2, 3, 4], [0, 2, 1]), ([2, 3, 4], [2, 0, 1]), ([2, 3, 4, 5], [3, 1, 0, 2])])
def test_permute_moves_axes(shape, perm):
    _, x, y = compiled(shape, {"op": "permute", "perm": perm})
    assert list(y.shape[1:]) == [shape[p] for p in perm]
    for n in range(x.shape[0]):
        for i in itertools.product(*map(range, shape)):  # out[..., i[perm]] = in[..., i]
            assert y[(n, *(i[p] for p in perm))] == x[(n, *i)]


def test_permute_error():
    with pytest.raises(ShapeError, match=r"permute needs a permutation of the non-batch axes"):
        check_spec(spec([2, 3, 4], {"op": "permute", "perm": [1, 2, 3]}))


def test_reshape_and_permute_counts():
    checked = check_spec(spec([3, 4, 5], {"id": "p", "op": "permute", "perm": [0, 2, 1]},
                              {"id": "r", "op": "reshape", "shape": [-1]}))
    assert checked.node("r").shape == (60,) and checked.total_params == 0
    assert checked.total_macs == 0 and str(checked.node("r").rf) == "all"


def lrn_ref(x, size, alpha, beta, k):
    """y_c = x_c / (k + alpha/size * sum over j in [c - floor((size-1)/2), c + ceil((size-1)/2)]
    of x_j^2)^beta."""
    y = np.zeros_like(x, dtype=np.float64)
    channels = x.shape[1]
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    for c in range(channels):
        window = range(max(0, c - lo), min(channels, c + hi + 1))
        total = sum(x[:, j].astype(np.float64) ** 2 for j in window)
        y[:, c] = x[:, c] / (k + alpha / size * total) ** beta
    return y


@pytest.mark.parametrize("shape, size, alpha, beta, k", [
    ([5, 7], 3, 1e-4, 0.75, 1.0), ([6, 3, 4], 5, 0.5, 0.6, 2.0), ([4, 3, 2, 3], 1, 0.3, 1.0, 1.5)])
def test_lrn(shape, size, alpha, beta, k):
    node = {"id": "n", "op": "lrn", "size": size, "alpha": alpha, "beta": beta, "k": k}
    model, x, y = compiled(shape, node)
    # (not onnx.reference: its LRN loops over the batch instead of the channels, onnx 1.23)
    np.testing.assert_allclose(y, lrn_ref(x, size, alpha, beta, k), rtol=1e-4, atol=1e-6)
    info = check_spec(spec(shape, node)).node("n")
    assert info.param_count == 0 and info.macs == math.prod(shape) * size


def test_lrn_error():
    with pytest.raises(ShapeError, match=r"lrn needs an input with channels and spatial axes"):
        check_spec(spec([8], {"op": "lrn", "size": 3}))
    with pytest.raises(ShapeError, match=r"lrn size must be odd and positive"):
        check_spec(spec([4, 5], {"op": "lrn", "size": 2}))


def test_reference_evaluator_agrees_with_onnxruntime():
    model, x, y = compiled([3, 4, 5], {"op": "permute", "perm": [2, 0, 1]},
                           {"op": "reshape", "shape": [10, -1]})
    assert y.shape == (3, 10, 6)
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(ref, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape, target, want", [
    ([4, 3, 5], [2, -1, 0], [2, 6, 5]), ([4, 3, 5], [0, -1], [4, 15]),
    ([2, 2, 3, 4], [0, 2, -1, 0], [2, 2, 3, 4]), ([6, 2], [0, 0], [6, 2])])
def test_reshape_zero_copies_the_axis(shape, target, want):
    """0 = the input's size on that axis, -1 = the rest (ONNX Reshape with allowzero 0): the
    same row-major view as numpy's reshape to the resolved sizes; onnx's reference
    evaluator (written from the operator spec) agrees."""
    model, x, y = compiled(shape, {"op": "reshape", "shape": target})
    np.testing.assert_array_equal(y, x.reshape(len(x), *want))
    np.testing.assert_array_equal(ReferenceEvaluator(model).run(None, {"x": x})[0], y)


def test_reshape_zero_needs_an_input_axis():
    with pytest.raises(ShapeError, match=r"reshape's 0 copies the input's size on the same "
                                         r"axis.*expected 0 only in the first 2 places"):
        check_spec(spec([3, 4], {"op": "reshape", "shape": [2, -1, 0]}))
    with pytest.raises(ShapeError, match=r"reshape cannot make \[0, 5\] from 12 elements"):
        check_spec(spec([3, 4], {"op": "reshape", "shape": [0, 5]}))
    with pytest.raises(ShapeError, match=r"sizes of at least 1, 0 \(copy\) and at most one -1"):
        check_spec(spec([3, 4], {"op": "reshape", "shape": [-2, 6]}))
