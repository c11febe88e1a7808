"""Numpy reference implementations written from the math, with explicit loops over output
positions and kernel taps (no library convolution), to check what graphcnn compiles.

Arrays are [N, C, *spatial]. Padding is given per axis as (begin, end); `pads_for` turns a
padding mode into those numbers from the definitions in the chapter and the issue, written here
independently of graphcnn.layers.spatial.
"""
from __future__ import annotations

import itertools
import math

import numpy as np


def pads_for(mode, lengths, kernel, stride, dilation):
    """(begin, end) per axis for valid / same / full / circular / int / list / [[b, e], ..]."""
    dims = len(lengths)
    if mode == "valid":
        return [(0, 0)] * dims
    if mode == "full":
        return [(d * (k - 1), d * (k - 1)) for k, d in zip(kernel, dilation)]
    if mode in ("same", "circular"):
        out = []
        for L, k, s, d in zip(lengths, kernel, stride, dilation):
            s = 1 if mode == "circular" else s
            n_out = math.ceil(L / s)  # same: ceil(L / stride) outputs, any odd pad at the end
            total = max((n_out - 1) * s + d * (k - 1) + 1 - L, 0)
            out.append((total // 2, total - total // 2))
        return out
    if isinstance(mode, int):
        return [(mode, mode)] * dims
    return [(p, p) if isinstance(p, int) else (p[0], p[1]) for p in mode]


def pad(x, pads, circular=False, value=0.0):
    """Pad the spatial axes; circular copies the other end of the input (wraps around)."""
    for axis, (b, e) in enumerate(pads, start=2):
        L = x.shape[axis]
        if circular:
            idx = [(i - b) % L for i in range(L + b + e)]
            x = np.take(x, idx, axis=axis)
        else:
            widths = [(0, 0)] * x.ndim
            widths[axis] = (b, e)
            x = np.pad(x, widths, constant_values=value)
    return x


def conv(x, w, b, stride, dilation, pads, groups=1, circular=False):
    """Cross-correlation with groups:
    y[n, o, p] = b[o] + sum_{c in group(o), t} w[o, c, t] x[n, c, p*s + t*d]."""
    x = pad(x.astype(np.float64), pads, circular)
    n, c_in = x.shape[:2]
    c_out, c_per, *kernel = w.shape
    out_sizes = [(L - d * (k - 1) - 1) // s + 1
                 for L, k, s, d in zip(x.shape[2:], kernel, stride, dilation)]
    y = np.zeros((n, c_out, *out_sizes))
    o_per = c_out // groups
    for o in range(c_out):
        g = o // o_per
        for pos in itertools.product(*map(range, out_sizes)):
            total = np.zeros(n) + (b[o] if b is not None else 0.0)
            for tap in itertools.product(*map(range, kernel)):
                at = tuple(p * s + t * d for p, t, s, d in zip(pos, tap, stride, dilation))
                for c in range(c_per):
                    total += w[(o, c, *tap)] * x[(slice(None), g * c_per + c, *at)]
            y[(slice(None), o, *pos)] = total
    return y


def pool_length(L, k, s, pads, ceil_mode):
    """Window count; with ceil_mode a last window must start inside the input or begin pad."""
    span = L + pads[0] + pads[1] - k
    n = (math.ceil(span / s) if ceil_mode else span // s) + 1
    if ceil_mode and (n - 1) * s >= L + pads[0]:
        n -= 1
    return n


def pool(x, kind, kernel, stride, pads, ceil_mode=False, count_include_pad=False):
    """Max or average over each window. Positions past the padded input (ceil_mode) never
    count; padding counts in the average only with count_include_pad."""
    n, c, *lengths = x.shape
    outs = [pool_length(L, k, s, p, ceil_mode) for L, k, s, p in zip(lengths, kernel, stride, pads)]
    y = np.zeros((n, c, *outs))
    for pos in itertools.product(*map(range, outs)):
        values, padded = [], 0
        for tap in itertools.product(*map(range, kernel)):
            at = [p * s + t - pb for p, t, s, (pb, _) in zip(pos, tap, stride, pads)]
            inside = all(0 <= a < L for a, L in zip(at, lengths))
            in_pad = all(-pb <= a < L + pe for a, L, (pb, pe) in zip(at, lengths, pads))
            if inside:
                values.append(x[(slice(None), slice(None), *at)])
            elif in_pad:
                padded += 1
        stack = np.stack(values)
        if kind == "max":
            y[(slice(None), slice(None), *pos)] = stack.max(axis=0)
        else:
            count = len(values) + (padded if count_include_pad else 0)
            y[(slice(None), slice(None), *pos)] = stack.sum(axis=0) / count
    return y


def global_pool(x, kind):
    """[N, C, ...] -> [N, C]: loop over the positions."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    out = flat[:, :, 0].astype(np.float64).copy()
    for i in range(1, flat.shape[2]):
        out = np.maximum(out, flat[:, :, i]) if kind == "max" else out + flat[:, :, i]
    return out if kind == "max" else out / flat.shape[2]


def linear(x, w, b):
    """y[n, j] = b[j] + sum_i w[j, i] x[n, i]."""
    y = np.zeros((x.shape[0], w.shape[0]))
    for j in range(w.shape[0]):
        total = sum(w[j, i] * x[:, i] for i in range(w.shape[1]))
        y[:, j] = total + (b[j] if b is not None else 0.0)
    return y


def batchnorm(x, weight, bias, mean, var, eps=1e-5):
    """Inference form, per channel (axis 1)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = weight.reshape(shape) / np.sqrt(var.reshape(shape) + eps)
    return (x - mean.reshape(shape)) * scale + bias.reshape(shape)


def _erf(v):
    return np.vectorize(math.erf)(v)


ACTIVATIONS = {
    "relu": lambda v: np.where(v > 0, v, 0.0),
    "leaky_relu": lambda v: np.where(v > 0, v, 0.01 * v),
    "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)),
    "tanh": np.tanh,
    "gelu": lambda v: v * 0.5 * (1.0 + _erf(v / math.sqrt(2.0))),
    "silu": lambda v: v / (1.0 + np.exp(-v)),
    "identity": lambda v: v,
    "dropout": lambda v: v,
    "softmax": lambda v: np.exp(v - v.max(axis=1, keepdims=True))
    / np.exp(v - v.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True),
}


def circulant(w, n, begin, dilation=1):
    """C(w) for a kernel read as cross-correlation with `begin` positions before the centre:
    row i is the vector c (c[(j*dilation - begin) mod n] = w[j]) shifted right by i (mod n)."""
    c = np.zeros(n)
    for j, wj in enumerate(w):
        c[(j * dilation - begin) % n] += wj
    return np.stack([np.roll(c, i) for i in range(n)])
