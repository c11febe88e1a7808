"""`graphcnn compile --dynamic`: dim_params where every node lowers the same at every size, run
at two admissible sizes; the node that pins the size named otherwise."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from conftest import SPECS, ort_run
from graphcnn.api import load_spec
from graphcnn.cli import main
from graphcnn.errors import CompileError
from graphcnn.graph.sweep import Sweep
from graphcnn.shapes.sizes import admissible

# the U-Net of specs/unet.yaml with 1/16 of its widths: same sizes, quick to run
TINY_UNET = """
name: tiny_unet
imports: [blocks/unet.yaml]
inputs: {image: [1, H, W]}
nodes:
  - {id: enc1, block: double_conv, args: {width: 4}}
  - {id: enc2, block: down, args: {width: 8}}
  - {id: enc3, block: down, args: {width: 16}}
  - {id: enc4, block: down, args: {width: 32}}
  - {id: bottom, block: down, args: {width: 64}}
  - {id: dec4, block: up, inputs: [bottom, enc4], args: {width: 32}}
  - {id: dec3, block: up, inputs: [dec4, enc3], args: {width: 16}}
  - {id: dec2, block: up, inputs: [dec3, enc2], args: {width: 8}}
  - {id: dec1, block: up, inputs: [dec2, enc1], args: {width: 4}}
  - {id: classes, op: conv2d, channels: 2, kernel: 1}
"""


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def unet_dynamic(tmp_path_factory):
    path = tmp_path_factory.mktemp("dyn") / "unet.onnx"
    assert main(["compile", str(SPECS / "unet.yaml"), "--dynamic", "H,W", "-o", str(path)]) == 0
    return onnx.load(str(path), load_external_data=False)


def test_unet_exports_dim_params(unet_dynamic):
    graph = unet_dynamic.graph
    assert dims(graph.input[0]) == ["N", 1, "H", "W"]
    assert dims(graph.output[0]) == ["N", 2, "H-184", "W-184"]
    onnx.checker.check_model(unet_dynamic)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    shutil.copytree(SPECS / "blocks", folder / "blocks")
    (folder / "tiny_unet.yaml").write_text(TINY_UNET)
    return folder


def test_dynamic_model_runs_at_two_sizes_like_static_models(tiny):
    spec_path = tiny / "tiny_unet.yaml"
    assert main(["compile", str(spec_path), "--dynamic", "H,W", "-o", str(tiny / "d.onnx")]) == 0
    model = onnx.load(str(tiny / "d.onnx"))
    report = admissible(Sweep.of_spec(load_spec(spec_path)), 572, 636)
    rng = np.random.default_rng(0)
    for n in (572, 636):
        x = rng.standard_normal((1, 1, n, n)).astype(np.float32)
        (y,) = ort_run(model, {"image": x})
        assert list(y.shape[1:]) == list(report.shapes[n]["classes"])  # what `sizes` says
        static = tiny / f"s{n}.yaml"  # the same spec compiled at that size, same seed
        static.write_text(TINY_UNET.replace("[1, H, W]", f"[1, {n}, {n}]"))
        assert main(["compile", str(static), "-o", str(tiny / f"s{n}.onnx")]) == 0
        (want,) = ort_run(onnx.load(str(tiny / f"s{n}.onnx")), {"image": x})
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert report.shapes[572]["classes"] == (2, 388, 388)
    assert report.shapes[636]["classes"] == (2, 452, 452)


def compile_error(tmp_path, text: str, axes: str) -> CompileError:
    from graphcnn.deploy.export import ExportOptions, export
    from graphcnn.graph import check
    from graphcnn.spec import NetworkSpec

    spec = NetworkSpec.from_text(text)
    with pytest.raises(CompileError) as err:
        export(check(spec), spec.to_yaml(), ExportOptions(dynamic=tuple(axes.split(","))))
    return err.value


def test_flatten_then_linear_pins_the_size(tmp_path):
    err = compile_error(tmp_path, """
name: pin
inputs: {image: [3, 32, 32]}
nodes:
  - {id: conv, op: conv2d, channels: 4, kernel: 3, padding: 1}
  - {id: flat, op: flatten}
  - {id: fc, op: linear, features: 10}
""", "H,W")
    assert err.node == "fc"
    assert "this linear pins the input size: parameter 'weight' has shape [10, 4096]" in str(err)


def test_same_padding_with_stride_pins_the_size(tmp_path):
    err = compile_error(tmp_path, """
name: strided
inputs: {signal: [2, L]}
nodes:
  - {id: c1, op: conv1d, channels: 4, kernel: 5, stride: 2}
  - {id: c2, op: conv1d, channels: 8, kernel: 3, stride: 3, padding: same}
""", "L")
    assert err.node == "c2" and "attribute pads" in str(err)


def test_unknown_axis(tmp_path):
    err = compile_error(tmp_path, """
name: plain
inputs: {image: [3, 16, 16]}
nodes:
  - {id: c, op: conv2d, channels: 2, kernel: 1}
""", "X")
    assert "unknown spatial axis 'X'" in str(err) and "expected H, W" in str(err)


def test_a_size_pinned_by_a_fixed_upsampling_is_refused_naming_the_node(tmp_path):
    """DeepLab-like: a pooled branch upsampled by a fixed factor meets a branch that follows
    the input; no other size fits, and the error is located at the node that refuses one."""
    spec = tmp_path / "pin.yaml"
    spec.write_text("name: pin\ninputs: {x: [4, 16, 16]}\nnodes:\n"
                    "  - {id: c, op: conv2d, channels: 4, kernel: 3, padding: same}\n"
                    "  - {id: g, op: global_avgpool, keepdims: true}\n"
                    "  - {id: u, op: upsample, scale: 16}\n"
                    "  - {id: cat, op: concat, inputs: [c, u]}\n")
    out = tmp_path / "pin.onnx"
    with pytest.raises(CompileError) as info:
        export_to_file_for(spec, out)
    text = str(info.value)
    assert text.startswith(f"{spec}:7:5: cat: --dynamic H: the input size is pinned at 16")
    assert main(["compile", str(spec), "--dynamic", "H,W", "-o", str(out)]) == 1
    assert not out.exists()


def export_to_file_for(spec, out):
    from graphcnn.api import check_spec, load_spec
    from graphcnn.deploy.export import ExportOptions, export_to_file

    loaded = load_spec(spec)
    return export_to_file(check_spec(loaded), loaded.to_yaml(), ExportOptions(dynamic=("H", "W")), out)


SHUFFLE = """
name: view
inputs: {image: [4, H, W]}
nodes:
  - {id: c1, op: conv2d, channels: 4, kernel: 3, padding: 1}
  - {id: halves, op: reshape, shape: [2, -1, 0]}
  - {id: c2, op: conv2d, channels: 3, kernel: 1}
  - {id: flat, op: reshape, shape: [0, -1]}
  - {id: c3, op: conv1d, channels: 2, kernel: 1}
"""


def test_reshape_with_zero_and_minus_one_stays_dynamic(tmp_path):
    """A reshape written with 0 (copy the axis) and -1 (the rest) lowers to the same ONNX at
    every size, so it does not pin H, W: one model runs at two sizes like the static ones."""
    (tmp_path / "view.yaml").write_text(SHUFFLE)
    assert main(["compile", str(tmp_path / "view.yaml"), "--dynamic", "H,W",
                 "-o", str(tmp_path / "d.onnx")]) == 0
    model = onnx.load(str(tmp_path / "d.onnx"))
    assert dims(model.graph.input[0]) == ["N", 4, "H", "W"]
    rng = np.random.default_rng(0)
    for h, w in ((6, 5), (9, 12)):
        x = rng.standard_normal((2, 4, h, w)).astype(np.float32)
        (y,) = ort_run(model, {"image": x})
        static = tmp_path / f"s{h}.yaml"
        static.write_text(SHUFFLE.replace("[4, H, W]", f"[4, {h}, {w}]"))
        assert main(["compile", str(static), "-o", str(tmp_path / f"s{h}.onnx")]) == 0
        (want,) = ort_run(onnx.load(str(tmp_path / f"s{h}.onnx")), {"image": x})
        assert y.shape == want.shape == (2, 2, 2 * h * w)
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
