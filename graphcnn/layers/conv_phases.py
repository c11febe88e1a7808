"""A strided 2-D conv's input gradient as one stride-1 Conv over its phases.

The input gradient of a conv with stride s is a transposed conv, which onnxruntime's CPU
provider runs on one thread (col2im): ResNet-18's stage-4 3x3/2 input gradient took 27 ms of a
690 ms step at 64x64, three times its forward conv. Split the input rows by phase a = u mod s:
row u = s*U + a receives W[kh] * dY[U + (a + p - kh) / s] from the taps kh with
kh = a + p (mod s), each phase a small stride-1 correlation of dY. All phases of both axes are
one Conv of dY with s*s*C_in output channels (a kernel of T <= ceil(k/s) + 1 taps per axis that
holds each phase's taps, zeros elsewhere; a 3x3/2 conv: 2x2, 16 taps for 9) and DepthToSpace
interleaves the phases back into rows and columns. The Conv runs in onnxruntime's blocked
NCHWc kernels on every thread.
"""
from __future__ import annotations

import numpy as np

from .base import Shape


def axis_taps(k: int, s: int, p: int) -> tuple[list[tuple[int, int, int]], int, int]:
    """([(tap, phase, position in the phase kernel)], kernel size T, leading pad P) of one
    axis: tap kh reaches input row s*U + a from dY row U + delta, delta = (a + p - kh) / s."""
    found = []
    for kh in range(k):
        a = (kh - p) % s
        found.append((kh, a, (a + p - kh) // s))
    low = min(delta for _, _, delta in found)
    high = max(delta for _, _, delta in found)
    return [(kh, a, delta - low) for kh, a, delta in found], high - low + 1, -low


# Channel products from which the phases win: their Conv computes 16 taps for a 3x3/2 conv's 9
# and DepthToSpace makes one more pass over dX, so they win where the transposed conv's GEMM
# on one thread dominates. Isolated, batch 64, 3x3/2, 2 threads (ms, transposed / phases):
# 256 -> 512 channels at 4x4 36.1 / 24.9 (41.9 / 27.4 in a second run), 128 -> 256 at 8x8
# 16.5 / 17.1, 64 -> 128 at 16x16 13.1 / 21.2, 16 -> 32 at 32x32 4.5 / 7.5.
WIDE = 256 * 256


def applies(k, s, d, pads, groups: int, channels: int) -> bool:
    """Whether the phase form is used: 2-D, one group, no dilation, the same stride > 1 on
    both axes (DepthToSpace has one block size), a kernel wider than the stride (else each
    phase has at most one tap and ConvTranspose's one GEMM does it), pads under the kernel,
    C_in * C_out (`channels`) at least WIDE."""
    return (len(k) == 2 and groups == 1 and max(d) == 1 and s[0] == s[1] > 1
            and min(k) > s[0] and all(0 <= b < kk for (b, _), kk in zip(pads, k))
            and channels >= WIDE)


def phase_selection(k, s, taps) -> np.ndarray:
    """[kh * kw, s * s * Th * Tw]: 1 where a weight tap lands in the phase kernel (one 1 per
    row, so the MatMul that applies it copies each weight exactly)."""
    (rows, th, _), (cols, tw, _) = taps
    select = np.zeros((k[0], k[1], s, s, th, tw), np.float32)
    for kh, ah, ph in rows:
        for kw, aw, pw in cols:
            select[kh, kw, ah, aw, ph, pw] = 1.0
    return select.reshape(k[0] * k[1], -1)


def input_grad_by_phases(g, dy: str, w: str, shape: Shape, out: Shape, k, s, pads) -> str:
    """dX [N, C_in, *shape[1:]] of a conv (weight [C_out, C_in, kh, kw]) from dY [N, C_out,
    *out[1:]], for a geometry that `applies`."""
    stride, c_in, c_out = s[0], shape[0], out[0]
    taps = [axis_taps(kk, stride, b) for kk, (b, _) in zip(k, pads)]
    sizes = [t for _, t, _ in taps]
    # [C_in, s*s*Th*Tw, C_out] by one batched MatMul of the selection with W moved to
    # [C_in, taps, C_out]; then phases next to C_in (DepthToSpace's CRD order) and the phase
    # taps innermost. Both moves are transposes of the last two axes (a 6-D Transpose that
    # moved the phases in front of [C_in, C_out] took 7.5 ms for 512x256 taps, the conv 7.6)
    select = phase_selection(k, stride, taps).T.copy()
    name = "phases" + "x".join(map(str, (*k, stride, *(b for b, _ in pads))))
    flat = g.op("Reshape", [w, g.ints([c_out, c_in * k[0] * k[1]])])
    moved = g.op("Reshape", [g.op("Transpose", [flat], perm=[1, 0]),
                             g.ints([c_in, k[0] * k[1], c_out])])
    spread = g.op("MatMul", [g.array(name, select), moved])
    by_phase = g.op("Reshape", [spread, g.ints([c_in * stride * stride, sizes[0] * sizes[1], c_out])])
    kernel = g.op("Reshape", [g.op("Transpose", [by_phase], perm=[0, 2, 1]),
                              g.ints([c_in * stride * stride, c_out, *sizes])])
    # phase rows U = 0 .. ceil(n / s) - 1 read dY rows U - P .. U - P + T - 1 (zeros outside)
    begins = [lead for _, _, lead in taps]
    rows = [-(-n // stride) for n in shape[1:]]
    ends = [max(0, r + t - 1 - b - m) for r, t, b, m in zip(rows, sizes, begins, out[1:])]
    phases = g.op("Conv", [dy, kernel], kernel_shape=sizes, pads=[*begins, *ends])
    dx = g.op("DepthToSpace", [phases], blocksize=stride, mode="CRD")
    found = [stride * (m + b + e - t + 1) for m, b, e, t in zip(out[1:], begins, ends, sizes)]
    if found != list(shape[1:]):
        dx = g.op("Slice", [dx, g.ints([0, 0]), g.ints(shape[1:]), g.ints([2, 3])])
    return dx
