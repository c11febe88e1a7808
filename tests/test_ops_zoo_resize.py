"""resize, adaptive_avgpool / adaptive_maxpool and linear on any rank (issue 14, the zoo)
against numpy references written from PyTorch's definitions (torch is not installed here):
F.interpolate's CPU kernels for resize (aten/src/ATen/native/UpSample.h: nearest_idx,
compute_scales_value, area_pixel_compute_source_index, compute_source_index_and_lambda),
AdaptiveAvgPool/AdaptiveMaxPool's bins (start_index, end_index) and nn.Linear on the last axis.
Each reference loops over output positions and computes in float32 where PyTorch does."""
from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import onnx
import pytest

import reference as ref
from conftest import onnx_weights, ort_run
from graphcnn.api import check_spec, compile_spec
from graphcnn.cli import main
from graphcnn.deploy.export import ExportOptions, export
from graphcnn.errors import ShapeError, SpecError
from graphcnn.spec import NetworkSpec
from test_gradients import PRE1, PRE2, PRE3, check_gradients

F32 = np.float32


def spec(inputs: dict, *nodes) -> NetworkSpec:
    return NetworkSpec.from_text(json.dumps({"name": "t", "inputs": inputs, "nodes": list(nodes)}))


def compiled(shape, *nodes, seed=0, batch=2):
    """(model, input, onnxruntime output, checked graph); our shape == onnxruntime's shape."""
    s = spec({"x": list(shape)}, *nodes)
    checked, model = check_spec(s), compile_spec(s, seed=seed)
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(seed).standard_normal((batch, *shape)).astype(F32)
    (y,) = ort_run(model, {"x": x})
    assert y.shape == (batch, *checked.shape_of(checked.outputs[0]))
    return model, x, y, checked


def grid(shape):
    return itertools.product(*map(range, shape))


# ---- resize: PyTorch's source positions ------------------------------------------------------

def torch_ratio(L, out, scale, align_corners):
    """area_pixel_compute_scale / compute_scales_value<float>."""
    if align_corners:
        return F32(L - 1) / F32(out - 1) if out > 1 else F32(0)
    return F32(1.0 / scale) if scale is not None else F32(L) / F32(out)


def torch_nearest(o, L, out, scale):
    """nearest_idx: copies for out == L, halves for out == 2L, else floor(o * ratio)."""
    if out == L:
        return o
    if out == 2 * L:
        return o >> 1
    return min(int(math.floor(F32(o) * torch_ratio(L, out, scale, False))), L - 1)


def torch_linear(o, L, out, scale, align_corners):
    """compute_source_index_and_lambda: (i0, i1, lambda0, lambda1)."""
    if out == L:
        return o, o, F32(1), F32(0)
    r = torch_ratio(L, out, scale, align_corners)
    x = r * F32(o) if align_corners else max(r * (F32(o) + F32(0.5)) - F32(0.5), F32(0))
    i0 = min(int(math.floor(x)), L - 1)
    lam = min(max(x - F32(i0), F32(0)), F32(1))
    return i0, i0 + (1 if i0 < L - 1 else 0), F32(1) - lam, lam


def resize_ref(x, out, scales, mode, align_corners=False):
    """y[..., o] = sum over the 2^d corners of prod of per-axis weights * x[..., corner]."""
    lengths = x.shape[2:]
    scales = scales or [None] * len(lengths)
    y = np.zeros((*x.shape[:2], *out))
    for o in grid(out):
        if mode == "nearest":
            y[(..., *o)] = x[(..., *(torch_nearest(oo, L, n, s)
                                     for oo, L, n, s in zip(o, lengths, out, scales)))]
            continue
        taps = [torch_linear(oo, L, n, s, align_corners)
                for oo, L, n, s in zip(o, lengths, out, scales)]
        for corner in grid([2] * len(out)):
            index = [t[c] for t, c in zip(taps, corner)]
            weight = np.prod([t[2 + c] for t, c in zip(taps, corner)])
            y[(..., *o)] += weight * x[(..., *index)]
    return y


def scaled_sizes(lengths, scale):
    per_axis = scale if isinstance(scale, list) else [scale] * len(lengths)
    return [math.floor(L * float(s)) for L, s in zip(lengths, per_axis)], per_axis


RESIZE_CASES = [  # input shape (no batch), fields
    ([2, 5], {"size": [9]}),
    ([2, 9], {"size": [4]}),
    ([2, 2], {"size": [82]}),                  # onnxruntime's Resize puts o = 41 on 1, not 0
    ([2, 4, 5], {"size": [7, 3]}),
    ([2, 4, 5], {"size": [4, 10]}),
    ([1, 3, 2, 4], {"size": [5, 3, 4]}),
    ([2, 10], {"scale": 0.7}),
    ([2, 10], {"scale": 2.05}),                 # out = 20 = 2L: nearest halves, linear 1/s
    ([2, 5, 6], {"scale": [1.1, 1.5]}),        # out == L on the first axis: a copy
    ([2, 6, 4], {"scale": [0.5, 2.6]}),
    ([2, 9, 7], {"scale": 0.3}),               # 9 * 0.3 = 2.7 -> 2; 7 * 0.3 -> 2
    ([1, 3, 4, 2], {"scale": [1.5, 0.75, 2]}),
]


@pytest.mark.parametrize("shape, fields", RESIZE_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("mode, align", [("nearest", False), ("linear", False),
                                         ("linear", True)])
def test_resize_matches_pytorch(shape, fields, mode, align):
    node = {"op": "resize", "mode": mode, **fields, **({"align_corners": True} if align else {})}
    _, x, y, checked = compiled(shape, node)
    if "size" in fields:
        out, scales = fields["size"], None
    else:
        out, scales = scaled_sizes(shape[1:], fields["scale"])
    assert checked.shape_of(checked.outputs[0]) == (shape[0], *out)
    np.testing.assert_allclose(y, resize_ref(x, out, scales, mode, align), rtol=1e-5, atol=1e-5)


def test_resize_like_a_node_reads_its_size():
    nodes = [{"id": "small", "op": "maxpool2d", "kernel": 2},
             {"id": "up", "op": "resize", "like": "x", "mode": "linear", "inputs": ["small"]}]
    _, x, y, checked = compiled([2, 7, 9], *nodes)
    assert checked.graph.edges["x", "up"]["kind"] == "crop"  # a size-only edge, as crop's
    pooled = ref.pool(x, "max", [2, 2], [2, 2], [(0, 0), (0, 0)])
    np.testing.assert_allclose(y, resize_ref(pooled, [7, 9], None, "linear"), rtol=1e-5,
                               atol=1e-5)


FCN = """
name: fcn_like
inputs: {x: [3, 23, 29]}
nodes:
  - {id: c1, op: conv2d, channels: 4, kernel: 3, stride: 2, padding: 1}
  - {id: r1, op: relu}
  - {id: c2, op: conv2d, channels: 3, kernel: 3, stride: 2, padding: 1}
  - {id: up, op: resize, like: x, mode: MODE}
"""


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_fcn_like_resize_to_the_input_is_dynamic(mode):
    """Strided convs, then logits resized `like: x`: `--dynamic H,W` finds nothing pinned,
    and the one model runs at two input sizes, giving outputs of those sizes that equal the
    numpy reference (convolution loops, then PyTorch's resize)."""
    s = NetworkSpec.from_text(FCN.replace("MODE", mode))
    model, _ = export(check_spec(s), s.to_yaml(), ExportOptions(dynamic=("H", "W")))
    onnx.checker.check_model(model, full_check=True)
    dims = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]
    w = onnx_weights(model)
    for h, wd in [(23, 29), (40, 33)]:
        x = np.random.default_rng(h).standard_normal((1, 3, h, wd)).astype(F32)
        (y,) = ort_run(model, {"x": x})
        assert y.shape == (1, 3, h, wd)
        a = np.maximum(ref.conv(x, w["c1.weight"], w["c1.bias"], [2, 2], [1, 1], [(1, 1)] * 2), 0)
        logits = ref.conv(a, w["c2.weight"], w["c2.bias"], [2, 2], [1, 1], [(1, 1)] * 2)
        np.testing.assert_allclose(y, resize_ref(logits, [h, wd], None, mode), rtol=1e-4,
                                   atol=1e-4)


# ---- adaptive pooling: PyTorch's bins --------------------------------------------------------

def start_index(a, b, c):
    """aten/src/ATen/native/AdaptivePooling.h: floor(a * c / b) for output a of b, input c."""
    return (a // b) * c + ((a % b) * c) // b


def end_index(a, b, c):
    """ceil((a + 1) * c / b)."""
    return 1 + ((a + 1) * c - 1) // b


def adaptive_ref(x, out, kind):
    lengths = x.shape[2:]
    y = np.zeros((*x.shape[:2], *out))
    for o in grid(out):
        box = tuple(slice(start_index(i, n, L), end_index(i, n, L))
                    for i, n, L in zip(o, out, lengths))
        values = x[(slice(None), slice(None), *box)].reshape(*x.shape[:2], -1)
        y[(..., *o)] = values.max(axis=-1) if kind == "max" else values.mean(axis=-1)
    return y


ADAPTIVE_CASES = [  # input shape (no batch), size, ONNX op that does the pooling
    ([3, 10], 4, "Gather/MatMul"),
    ([3, 12], 4, "Pool"),
    ([3, 3], 5, "Gather/MatMul"),              # out > L: bins repeat positions
    ([2, 7, 9], [3, 4], "Gather/MatMul"),
    ([2, 8, 6], [4, 3], "Pool"),
    ([2, 14, 15], [7, 7], "Gather/MatMul"),    # one axis divides, the other not
    ([2, 5, 6], 1, "Global"),
    ([2, 6, 7], [None, 3], "Gather/MatMul"),   # None keeps the axis (PyTorch's None)
    ([1, 4, 5, 6], [2, 3, 4], "Gather/MatMul"),
    ([1, 4, 6, 2], [2, 3, 1], "Pool"),
]


@pytest.mark.parametrize("shape, size, lowered", ADAPTIVE_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_adaptive_pool_matches_pytorch(shape, size, lowered, kind):
    model, x, y, checked = compiled(shape, {"op": f"adaptive_{kind}pool", "size": size})
    dims = len(shape) - 1
    out = [size] * dims if isinstance(size, int) else \
        [L if n is None else n for L, n in zip(shape[1:], size)]
    assert checked.shape_of(checked.outputs[0]) == (shape[0], *out)
    assert checked.total_params == 0
    np.testing.assert_allclose(y, adaptive_ref(x, out, kind), rtol=1e-5, atol=1e-6)
    ops = {n.op_type for n in model.graph.node}
    want = {"Pool": {"AveragePool" if kind == "avg" else "MaxPool"},
            "Global": {"GlobalAveragePool" if kind == "avg" else "GlobalMaxPool"},
            "Gather/MatMul": {"MatMul" if kind == "avg" else "Gather"}}[lowered]
    assert want <= ops


# ---- linear on any rank ------------------------------------------------------------------------

CONVNEXT_MLP = [  # ConvNeXt's block MLP: channels last, linear 4C, gelu, linear C, back
    {"id": "last", "op": "permute", "perm": [1, 2, 0]},
    {"id": "fc1", "op": "linear", "features": 16},
    {"id": "act", "op": "gelu"},
    {"id": "fc2", "op": "linear", "features": 4},
    {"id": "first", "op": "permute", "perm": [2, 0, 1]},
]


def last_axis_linear(x, w, b):
    """nn.Linear: reference.linear on every row of the last axis."""
    rows = ref.linear(x.reshape(-1, x.shape[-1]), w, b)
    return rows.reshape(*x.shape[:-1], w.shape[0])


def test_convnext_channels_last_mlp():
    model, x, y, checked = compiled([4, 3, 5], *CONVNEXT_MLP)
    w = onnx_weights(model)
    h = ref.ACTIVATIONS["gelu"](last_axis_linear(x.transpose(0, 2, 3, 1), w["fc1.weight"],
                                                 w["fc1.bias"]))
    want = last_axis_linear(h, w["fc2.weight"], w["fc2.bias"]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    fc1 = checked.node("fc1")
    assert fc1.shape == (3, 5, 16)
    assert fc1.param_count == 4 * 16 + 16 == w["fc1.weight"].size + w["fc1.bias"].size
    assert fc1.macs == 3 * 5 * 4 * 16
    assert [n.op_type for n in model.graph.node if n.name.startswith("fc1")] == \
        ["Transpose", "MatMul", "Add"]


def test_linear_on_flat_inputs_is_still_one_gemm():
    model, x, y, checked = compiled([6], {"id": "fc", "op": "linear", "features": 3})
    assert [n.op_type for n in model.graph.node] == ["Gemm"]
    w = onnx_weights(model)
    np.testing.assert_allclose(y, ref.linear(x, w["fc.weight"], w["fc.bias"]), rtol=1e-5,
                               atol=1e-6)
    assert str(checked.node("fc").rf) == "all"  # GLOBAL: every output reads every input


def test_linear_window_reads_the_last_axis_whole():
    """[N, C, L] -> [N, C, 7]: each output reads one position of C and all L = 5."""
    checked = check_spec(spec({"x": [3, 5]}, {"id": "fc", "op": "linear", "features": 7}))
    fc = checked.node("fc")
    assert fc.shape == (3, 7) and fc.macs == 3 * 5 * 7 and str(fc.rf) == "5/1"


# ---- backward rules against finite differences (tests/test_gradients.py) ----------------------

@pytest.mark.parametrize("fields, shape", [
    ({"size": [7, 3]}, [2, 5, 4]),
    ({"scale": 2.05}, [2, 10]),
    ({"scale": [1.1, 0.6], "mode": "linear"}, [2, 5, 6]),
    ({"size": [5, 3, 4], "mode": "linear", "align_corners": True}, [2, 3, 2, 4]),
    ({"like": "x", "mode": "linear"}, [2, 4, 5]),
], ids=str)
def test_resize_gradients(fields, shape):
    pre = [PRE1, PRE2, PRE3][len(shape) - 2]
    nodes = [pre, {"id": "small", "op": "subsample", "factor": 2}] if "like" in fields else [pre]
    check_gradients([*nodes, {"id": "r", "op": "resize", **fields}], {"x": shape})


@pytest.mark.parametrize("size, shape", [
    (3, [2, 8]), (4, [2, 10]), (5, [2, 3]), ([3, 2], [2, 7, 5]), (1, [2, 4, 5]),
    ([2, None, 3], [2, 3, 2, 5]),
], ids=str)
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_adaptive_pool_gradients(size, shape, kind):
    pre = [PRE1, PRE2, PRE3][len(shape) - 2]
    check_gradients([pre, {"id": "p", "op": f"adaptive_{kind}pool", "size": size}], {"x": shape})


def test_linear_gradients_on_more_axes():
    check_gradients([PRE2, *CONVNEXT_MLP], {"x": [2, 3, 4]})
    check_gradients([PRE1, {"id": "fc", "op": "linear", "features": 3, "bias": False}],
                    {"x": [2, 5]})


# ---- refused values: located at the field, or named at the node -------------------------------

@pytest.mark.parametrize("fields, at, message", [
    ("op: resize, scale: 0", "scale", "'scale': Input should be greater than 0; received 0"),
    ("op: resize, scale: .inf", "scale", "'scale': Input should be a finite number"),
    ("op: resize, scale: [1.5, .nan]", ".nan",
     "'nodes.1.scale.1': Input should be a finite number; received nan"),
    ("op: resize, size: [4, 0]", "0]", "'nodes.1.size.1': Input should be greater than or equal "
                                       "to 1; received 0"),
    ("op: adaptive_avgpool, size: 0", "size",
     "'size': Input should be greater than or equal to 1; received 0"),
    ("op: adaptive_maxpool, size: [2, -1]", "-1",
     "'nodes.1.size.1': Input should be greater than or equal to 1; received -1"),
], ids=lambda v: v if v.startswith("op") else "")
def test_bad_field_values_are_refused_at_their_place(tmp_path, capsys, fields, at, message):
    line = f"  - {{id: n, {fields}, inputs: [x]}}\n"
    path = tmp_path / "t.yaml"
    path.write_text(f"name: t\ninputs: {{x: [3, 8, 8]}}\nnodes:\n  - {{id: a, op: relu}}\n{line}")
    assert main(["check", str(path)]) == 1
    col = line.index(f" {at}") + 2 if at.isalpha() else line.index(at) + 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}:5:{col}: n: bad value for {message}"), err


@pytest.mark.parametrize("node, error, message", [
    ({"op": "resize", "size": [4, 4], "scale": 2}, SpecError, "exactly one of `like`"),
    ({"op": "resize"}, SpecError, "exactly one of `like`"),
    ({"op": "resize", "size": [4, 4], "align_corners": True}, SpecError,
     "align_corners applies to mode: linear only"),
    ({"op": "resize", "size": [4]}, ShapeError, r"resize size needs one length per spatial axis"),
    ({"op": "resize", "scale": [2, 2, 2]}, ShapeError, "scale needs one value per spatial axis"),
    ({"op": "resize", "scale": 0.1}, ShapeError, r"resize scale leaves an axis empty"),
    ({"op": "resize", "like": "v"}, ShapeError, "resize node 'v' needs one length per spatial"),
    ({"op": "adaptive_avgpool", "size": [2, 2, 2]}, ShapeError,
     "adaptive_avgpool size needs one value per spatial axis"),
    ({"op": "adaptive_maxpool", "size": 2, "inputs": ["v"]}, ShapeError,
     r"adaptive_maxpool needs a 1D, 2D or 3D input"),
], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_shape_and_field_errors(node, error, message):
    with pytest.raises(error, match=message) as err:
        check_spec(spec({"x": [3, 8, 8], "v": [12]}, {"id": "n", "inputs": ["x"], **node}))
    assert error is SpecError or err.value.node == "n"


# ---- counts and windows --------------------------------------------------------------------------

def test_resize_and_adaptive_counts_and_windows():
    checked = check_spec(spec({"x": [3, 4, 5]},
                              {"id": "r", "op": "resize", "size": [8, 3], "mode": "linear"},
                              {"id": "a", "op": "adaptive_avgpool", "size": [3, 2]},
                              {"id": "g", "op": "adaptive_maxpool", "size": 1}))
    r, a, g = checked.node("r"), checked.node("a"), checked.node("g")
    assert (r.shape, r.param_count, r.macs) == ((3, 8, 3), 0, 3 * 8 * 3 * 4)
    assert r.layer.window([(3, 4, 5)]).stride == (Fraction(1, 2), Fraction(5, 3))
    assert r.layer.window([(3, 4, 5)]).extent == (2, 2)
    window = a.layer.window([(3, 8, 3)])  # bins of 8 over 3: [0,3) [2,6) [5,8); 3 over 2: 2
    assert window.extent == (4, 2) and window.stride == (Fraction(8, 3), Fraction(3, 2))
    assert (a.shape, a.param_count, a.macs) == ((3, 3, 2), 0, 0)
    assert g.shape == (3, 1, 1) and str(g.rf) == "all"


def test_scale_and_size_resize_are_dynamic_too():
    """Output lengths floor(L * s) computed at run time (in double, as PyTorch)."""
    s = spec({"x": [2, 10, 9]}, {"id": "r", "op": "resize", "scale": [0.7, 1.3]},
             {"id": "z", "op": "resize", "size": [4, 5], "mode": "linear"})
    model, _ = export(check_spec(s), s.to_yaml(), ExportOptions(dynamic=("H", "W")))
    for h, w in [(10, 9), (90, 17)]:
        x = np.random.default_rng(h).standard_normal((2, 2, h, w)).astype(F32)
        (y,) = ort_run(model, {"x": x})
        out = [math.floor(h * 0.7), math.floor(w * 1.3)]
        want = resize_ref(resize_ref(x, out, [0.7, 1.3], "nearest"), [4, 5], None, "linear")
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_fp16_export_keeps_the_float32_source_positions():
    """--precision fp16: every ONNX node of the resize stays float32 (fp32_ops: in fp16 the
    source positions would move), its double constant 1/s stays double, and the result is
    the float32 model's."""
    s = spec({"x": [2, 5, 4]}, {"id": "c", "op": "conv2d", "channels": 2, "kernel": 1},
             {"id": "r", "op": "resize", "scale": [2.05, 0.7]})
    model, _ = export(check_spec(s), s.to_yaml(), ExportOptions(precision="fp16"))
    inside = [n for n in model.graph.node if n.name == "r" or n.name.startswith("r/")]
    assert inside and not any(i.endswith("/to_low") for n in inside for i in n.input)
    doubles = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.DOUBLE}
    assert {"r/scale2", "r/inverse_scale2"} <= doubles
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 4)).astype(F32)
    (y,) = ort_run(model, {"x": x})
    (want,) = ort_run(compile_spec(s), {"x": x})
    np.testing.assert_allclose(y, want, rtol=2e-3, atol=2e-3)  # fp16 conv weights


def test_onnx_reference_evaluator_agrees_with_onnxruntime():
    """A second ONNX host computes the same values (resize has no coordinate mode to read)."""
    from onnx.reference import ReferenceEvaluator

    nodes = [{"id": "p", "op": "adaptive_maxpool", "size": [3, 4]},
             {"id": "r", "op": "resize", "like": "x", "mode": "linear"},
             {"id": "s", "op": "resize", "scale": [1.1, 0.7]},
             {"id": "a", "op": "adaptive_avgpool", "size": [2, 3]}]
    model, x, y, _ = compiled([2, 7, 9], *nodes)
    np.testing.assert_allclose(ReferenceEvaluator(model).run(None, {"x": x})[0], y, rtol=1e-6,
                               atol=1e-6)
