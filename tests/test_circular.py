"""Circular convolution is the chapter's circulant-matrix product C(w)x, equals the product of
Fourier transforms, and (stride 1) commutes with cyclic shifts."""
from __future__ import annotations

import json

import numpy as np
import pytest

import graphcnn
import reference as ref
from conftest import onnx_weights, ort_run


def circular_model(length, kernel, dilation=1, stride=1, channels=1, seed=0):
    data = {"name": "circ", "inputs": {"x": [channels, length]}, "nodes": [
        {"id": "y", "op": "conv1d", "channels": channels, "kernel": kernel, "stride": stride,
         "dilation": dilation, "padding": "circular", "bias": False}]}
    model = graphcnn.compile_spec(graphcnn.NetworkSpec.from_text(json.dumps(data)), seed=seed)
    return model, onnx_weights(model)["y.weight"]


def begin_pad(kernel, dilation=1):
    """Circular padding is `same` at stride 1: total d*(k-1), the odd element at the end."""
    return dilation * (kernel - 1) // 2


@pytest.mark.parametrize("length,kernel,dilation", [(8, 3, 1), (8, 4, 1), (7, 5, 1), (9, 3, 2),
                                                    (6, 6, 1), (5, 3, 2)])
def test_circulant_matrix_and_fft(length, kernel, dilation):
    model, w = circular_model(length, kernel, dilation, seed=length + kernel)
    x = np.random.default_rng(0).standard_normal((3, 1, length)).astype(np.float32)
    (y,) = ort_run(model, {"x": x})
    C = ref.circulant(w[0, 0], length, begin_pad(kernel, dilation), dilation)
    matrix = np.einsum("ij,bj->bi", C, x[:, 0].astype(np.float64))
    np.testing.assert_allclose(y[:, 0], matrix, rtol=1e-4, atol=1e-5)
    # Spectral domain: cross-correlation with c is a product with the conjugate spectrum of c.
    c = C[0]
    spectral = np.fft.ifft(np.conj(np.fft.fft(c)) * np.fft.fft(x[:, 0], axis=-1), axis=-1).real
    np.testing.assert_allclose(y[:, 0], spectral, rtol=1e-4, atol=1e-5)


def test_circulant_of_shift_kernel_shifts_right():
    """w = [0, 1, 0, ..., 0] gives the circulant that shifts a vector right by one (chapter)."""
    n = 6
    shift = ref.circulant(np.eye(n)[1], n, begin=0)
    x = np.arange(n, dtype=float)
    # Row i of C is c shifted right by i, so C x reads x one position to the right of i;
    # the transpose (the convolution rather than the correlation) moves x to the right.
    np.testing.assert_array_equal(shift @ x, np.roll(x, -1))
    np.testing.assert_array_equal(shift.T @ x, np.roll(x, 1))
    u = np.random.default_rng(1).standard_normal(n)
    v = np.random.default_rng(2).standard_normal(n)
    Cu, Cv = ref.circulant(u, n, 0), ref.circulant(v, n, 0)
    np.testing.assert_allclose(Cu @ Cv, Cv @ Cu, atol=1e-12)  # circulants commute


@pytest.mark.parametrize("kernel,channels", [(3, 1), (4, 2), (5, 3)])
def test_shift_equivariance(kernel, channels):
    model, _ = circular_model(10, kernel, channels=channels, seed=kernel)
    x = np.random.default_rng(3).standard_normal((2, channels, 10)).astype(np.float32)
    (y,) = ort_run(model, {"x": x})
    for shift in (1, 3, 7):
        (ys,) = ort_run(model, {"x": np.roll(x, shift, axis=-1)})
        np.testing.assert_allclose(ys, np.roll(y, shift, axis=-1), rtol=1e-4, atol=1e-5)


def test_zero_padding_is_not_shift_equivariant():
    """The contrast: `same` zero padding breaks equivariance at the borders."""
    data = {"name": "same", "inputs": {"x": [1, 10]}, "nodes": [
        {"id": "y", "op": "conv1d", "channels": 1, "kernel": 3, "padding": "same", "bias": False}]}
    model = graphcnn.compile_spec(graphcnn.NetworkSpec.from_text(json.dumps(data)), seed=1)
    x = np.random.default_rng(4).standard_normal((1, 1, 10)).astype(np.float32)
    (y,) = ort_run(model, {"x": x})
    (ys,) = ort_run(model, {"x": np.roll(x, 2, axis=-1)})
    assert not np.allclose(ys, np.roll(y, 2, axis=-1), atol=1e-4)


def test_circular_2d_wraps_both_axes():
    data = {"name": "c2", "inputs": {"x": [2, 5, 6]}, "nodes": [
        {"id": "y", "op": "conv2d", "channels": 3, "kernel": 3, "padding": "circular"}]}
    model = graphcnn.compile_spec(graphcnn.NetworkSpec.from_text(json.dumps(data)), seed=2)
    x = np.random.default_rng(5).standard_normal((1, 2, 5, 6)).astype(np.float32)
    (y,) = ort_run(model, {"x": x})
    (ys,) = ort_run(model, {"x": np.roll(x, (2, -1), axis=(2, 3))})
    np.testing.assert_allclose(ys, np.roll(y, (2, -1), axis=(2, 3)), rtol=1e-4, atol=1e-5)


def test_circular_padding_wraps_at_most_once():
    data = {"name": "big", "inputs": {"x": [1, 3]}, "nodes": [
        {"id": "y", "op": "conv1d", "channels": 1, "kernel": 9, "padding": "circular"}]}
    with pytest.raises(graphcnn.GraphCnnError, match="wraps at most once") as info:
        graphcnn.check(graphcnn.NetworkSpec.from_text(json.dumps(data)))
    assert info.value.node == "y" and info.value.loc is not None
