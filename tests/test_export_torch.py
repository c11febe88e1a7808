"""graphcnn export-torch: the generated PyTorch module is the compiled ONNX model.

For shipped specs (at small input sizes) and small specs that use every op and every block
feature: random weights go into the ONNX model through --weights, come out again through
model_weights (what export-weights writes), load into the generated module with
load_state_dict(strict=True) (its state_dict keys are exactly those names), and in eval mode
it gives onnxruntime's outputs (max |torch - ours| / max |ours| < 1e-4). PyTorch is the
oracle here, so these tests skip without torch; the generator itself never imports it.
"""
from __future__ import annotations

import subprocess
import sys
import types
from typing import Literal

import numpy as np
import pytest

import graphcnn
from conftest import SPECS, ort_run
from graphcnn.layers import REGISTRY, Layer
from graphcnn.layers.base import register, unregister
from graphcnn.spec import NetworkSpec

TOLERANCE = 1e-4

# (spec, input size): shipped specs at a size small enough to run in a second or two
SHIPPED = [("resnet18", 32), ("resnet50", 32), ("fcn_resnet50", 32), ("mobilenet_v2", 32),
           ("mobilenet_v3_small", 32),
           ("efficientnet_b0", 32), ("convnext_tiny", 32), ("shufflenet_v2_x1_0", 32),
           ("googlenet", 32), ("inception_v3", 75), ("squeezenet1_1", 40),
           ("regnet_y_400mf", 32), ("densenet121", 32), ("unet", 188), ("segnet_convt", 16),
           ("segnet_small", 16), ("segnet_linear", 16), ("highway_cnn", None),
           ("highway_mlp", None), ("alexnet_lrn", 67), ("c3d_small", None),
           ("ecg1d_resnet", None), ("mnist1d_cnn", None)]


def sized(name: str, size: int | None) -> NetworkSpec:
    spec = graphcnn.load_spec(SPECS / f"{name}.yaml")
    if size is None:
        return spec
    (input_name, shape), = spec.inputs.items()
    return spec.model_copy(update={"inputs": {input_name: [shape[0], size, size]}})


def random_weights(checked, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights of a useful scale: fan-in scaled kernels, positive variances, scales near 1."""
    from graphcnn.deploy.weights import expected_weights

    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_weights(checked).items():
        leaf = name.rsplit(".", 1)[1]
        if leaf == "running_var" or (leaf == "weight" and len(shape) == 1):
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) >= 2:
            value = rng.normal(0, 1 / np.sqrt(np.prod(shape[1:])), shape)
        else:
            value = rng.normal(0, 0.1, shape)
        out[name] = value.astype(np.float32)
    return out


def generated(checked):
    """The generated file, executed as a module; and its network class."""
    import torch

    from graphcnn.deploy.torchcode import torch_code

    code = torch_code(checked, "test")
    module = types.ModuleType("generated")
    exec(compile(code, "generated.py", "exec"), module.__dict__)
    classes = [v for v in module.__dict__.values()
               if isinstance(v, type) and issubclass(v, torch.nn.Module) and v.__module__ == "generated"]
    return code, classes[-1]


def compare(spec: NetworkSpec, tmp_path, batch: int = 2, scale: float = 1.0) -> float:
    """The largest relative difference of the outputs, torch against onnxruntime."""
    torch = pytest.importorskip("torch")
    from graphcnn.deploy.export import ExportOptions, export
    from graphcnn.deploy.weights import model_weights

    checked = graphcnn.check_spec(spec).reaching_outputs()
    path, drawn = tmp_path / "w.npz", random_weights(checked)
    np.savez(path, **drawn)
    model, _ = export(checked, spec.to_yaml(), ExportOptions(weights=str(path) if drawn else None))
    weights = model_weights(model)  # what `graphcnn export-weights` writes
    _, network = generated(checked)
    net = network()
    assert set(net.state_dict()) == set(weights)
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()},
                        strict=True)
    net.eval()
    rng = np.random.default_rng(1)
    feeds = {k: (scale * rng.normal(size=(batch, *s))).astype(np.float32)
             for k, s in checked.inputs.items()}
    ours = ort_run(model, feeds)
    with torch.no_grad():
        theirs = net(*map(torch.from_numpy, feeds.values()))
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    assert len(theirs) == len(ours)
    return max(float(np.abs(a - b.numpy()).max() / max(np.abs(a).max(), 1e-6))
               for a, b in zip(ours, theirs))


@pytest.mark.parametrize("name,size", SHIPPED)
def test_shipped_specs(name, size, tmp_path):
    assert compare(sized(name, size), tmp_path, batch=1) < TOLERANCE


ACTIVATIONS = """
name: activations
inputs: {x: [6, 5, 5]}
nodes:
  - {id: leaky, op: leaky_relu, alpha: 0.2, inputs: [x]}
  - {id: tanh, op: tanh, inputs: [x]}
  - {id: gelu, op: gelu, inputs: [x]}
  - {id: silu, op: silu, inputs: [x]}
  - {id: relu6, op: relu6, inputs: [x]}
  - {id: clip, op: clip, min: -0.5, max: 0.7, inputs: [x]}
  - {id: clip_low, op: clip, min: 0.1, inputs: [x]}
  - {id: hsig, op: hardsigmoid, inputs: [x]}
  - {id: hswish, op: hardswish, inputs: [x]}
  - {id: mish, op: mish, inputs: [x]}
  - {id: elu, op: elu, alpha: 0.5, inputs: [x]}
  - {id: selu, op: selu, inputs: [x]}
  - {id: softplus, op: softplus, beta: 2.0, threshold: 3.0, inputs: [x]}
  - {id: prelu, op: prelu, channels: 6, inputs: [x]}
  - {id: prelu_one, op: prelu, inputs: [x]}
  - {id: sigmoid, op: sigmoid, inputs: [x]}
  - {id: softmax, op: softmax, inputs: [x]}
  - {id: identity, op: identity, inputs: [x]}
  - {id: dropout, op: dropout, rate: 0.3, inputs: [x]}
  - {id: drop_path, op: drop_path, rate: 0.3, inputs: [x]}
  - {id: relu, op: relu, inputs: [x]}
  - {id: maps, op: dropout2d, rate: 0.3, inputs: [x]}
outputs: [leaky, tanh, gelu, silu, relu6, clip, clip_low, hsig, hswish, mish, elu, selu, softplus,
          prelu, prelu_one, sigmoid, softmax, identity, dropout, drop_path, relu, maps]
"""

CONVS_POOLS = """
name: convs and pools
inputs: {x: [4, 11, 13]}
nodes:
  - {id: reflect, op: conv2d, channels: 6, kernel: 3, padding: 1, padding_mode: reflect, inputs: [x]}
  - {id: replicate, op: conv2d, channels: 6, kernel: 3, padding: [[1, 2], [0, 1]], padding_mode: replicate, inputs: [x]}
  - {id: circular, op: conv2d, channels: 6, kernel: 3, padding: circular, inputs: [x]}
  - {id: same_s2, op: conv2d, channels: 6, kernel: 4, stride: 2, padding: same, bias: false, inputs: [x]}
  - {id: same_s1, op: conv2d, channels: 6, kernel: 4, padding: same, inputs: [x]}
  - {id: dilated, op: conv2d, channels: 6, kernel: 3, dilation: 2, groups: 2, padding: full, inputs: [x]}
  - {id: up_uneven, op: conv_transpose2d, channels: 3, kernel: 3, stride: 2, padding: [[1, 0], [0, 1]], output_padding: 1, inputs: [x]}
  - {id: up, op: conv_transpose2d, channels: 4, kernel: 4, stride: 2, padding: 1, groups: 2, bias: false, inputs: [x]}
  - {id: max_ceil, op: maxpool2d, kernel: 3, stride: 2, padding: 1, ceil_mode: true, inputs: [x]}
  - {id: max_same, op: maxpool2d, kernel: 2, padding: same, inputs: [x]}
  - {id: max_wide, op: maxpool2d, kernel: 3, stride: 1, padding: 2, inputs: [x]}
  - {id: avg_in, op: avgpool2d, kernel: 3, stride: 2, padding: 1, count_include_pad: true, ceil_mode: true, inputs: [x]}
  - {id: avg_uneven, op: avgpool2d, kernel: 2, padding: [[0, 1], [1, 0]], inputs: [x]}
  - {id: avg_uneven_in, op: avgpool2d, kernel: 3, stride: 2, padding: [[0, 2], [1, 0]], count_include_pad: true, ceil_mode: true, inputs: [x]}
  - {id: gap, op: global_avgpool, keepdims: true, inputs: [x]}
  - {id: gmp, op: global_maxpool, inputs: [x]}
  - {id: adaptive_avg, op: adaptive_avgpool, size: [3, null], inputs: [x]}
  - {id: adaptive_max, op: adaptive_maxpool, size: 4, inputs: [x]}
  - {id: pool, op: maxpool2d, kernel: 2, inputs: [x]}
  - {id: unpool, op: maxunpool, pool: pool, inputs: [pool]}
outputs: [reflect, replicate, circular, same_s2, same_s1, dilated, up_uneven, up, max_ceil,
          max_same, max_wide, avg_in, avg_uneven, avg_uneven_in, gap, gmp, adaptive_avg,
          adaptive_max, unpool]
"""

RESAMPLE_SHAPE = """
name: resample and shape
inputs: {x: [4, 7, 9]}
nodes:
  - {id: nearest, op: upsample, scale: 2, inputs: [x]}
  - {id: bilinear, op: upsample, scale: [2, 3], mode: linear, align_corners: true, inputs: [x]}
  - {id: sized, op: resize, size: [5, 12], mode: linear, inputs: [x]}
  - {id: scaled, op: resize, scale: 1.5, inputs: [x]}
  - {id: like, op: resize, like: nearest, mode: linear, inputs: [x]}
  - {id: subsample, op: subsample, factor: [2, 3], inputs: [x]}
  - {id: crop, op: crop, size: [5, 6], inputs: [x]}
  - {id: pad, op: pad, pads: [[2, 2], [1, 3]], value: 0.5, inputs: [x]}
  - {id: rows, op: reshape, shape: [0, -1], inputs: [x]}
  - {id: last, op: permute, perm: [1, 2, 0], inputs: [x]}
  - {id: linear, op: linear, features: 5, inputs: [last]}
  - {id: flat, op: flatten, inputs: [x]}
  - {id: s, op: split, sizes: [1, 3], inputs: [x]}
  - {id: c, op: chunk, chunks: 2, inputs: [x]}
  - {id: shuffle, op: channel_shuffle, groups: 2, inputs: [x]}
  - {id: cropped, op: crop, like: x, inputs: [pad]}
outputs: [nearest, bilinear, sized, scaled, like, subsample, crop, pad, rows, linear, flat, s.0,
          s.1, c.1, shuffle, cropped]
"""

NORMS_MERGES = """
name: norms and merges
inputs: {x: [4, 6, 6]}
nodes:
  - {id: ln_channels, op: layernorm, inputs: [x]}
  - {id: ln_last, op: layernorm, axis: last, eps: 1.0e-6, affine: false, inputs: [x]}
  - {id: gn, op: groupnorm, groups: 2, inputs: [x]}
  - {id: inorm, op: instancenorm, affine: true, inputs: [x]}
  - {id: bn, op: batchnorm2d, eps: 0.001, momentum: 0.01, inputs: [x]}
  - {id: lrn, op: lrn, size: 3, inputs: [x]}
  - {id: scale, op: scale, init: 0.5, inputs: [x]}
  - {id: conv, op: conv2d, channels: 8, kernel: 3, stride: 2, padding: 1, inputs: [x]}
  - {id: projected, op: add, skip: x, project: conv_bn}
  - {id: projected_conv, op: add, inputs: [conv, x], project: true}
  - {id: three, op: add, inputs: [x, gn, bn]}
  - {id: concat, op: concat, inputs: [x, gn, conv_up]}
  - {id: conv_up, op: conv_transpose2d, channels: 2, kernel: 2, stride: 2, inputs: [conv]}
  - {id: pooled, op: global_avgpool, inputs: [x]}
  - {id: gate, op: sigmoid, inputs: [pooled]}
  - {id: gated, op: mul, inputs: [x, gate]}
  - {id: h, op: conv2d, channels: 4, kernel: 3, padding: 1, inputs: [x]}
  - {id: highway, op: highway, skip: x, carry: learned, gate_kernel: 2}
outputs: [ln_channels, ln_last, gn, inorm, bn, lrn, scale, projected, projected_conv, three, concat,
          gated, highway]
"""

FLAT_1D_3D = """
name: flat, 1d and 3d
inputs: {v: [12], s: [3, 20], clip: [2, 4, 6, 6]}
nodes:
  - {id: fc, op: linear, features: 8, bias: false, inputs: [v]}
  - {id: bn_flat, op: batchnorm1d}
  - {id: prelu, op: prelu, channels: 8}
  - {id: ln, op: layernorm}
  - {id: gate, op: mul, inputs: [ln, prelu]}
  - {id: probs, op: softmax}
  - {id: conv1, op: conv1d, channels: 4, kernel: 5, padding: same, padding_mode: circular, inputs: [s]}
  - {id: bn1, op: batchnorm1d}
  - {id: in1, op: instancenorm}
  - {id: drop1, op: dropout1d, rate: 0.1}
  - {id: max1, op: maxpool1d, kernel: 3, stride: 2, ceil_mode: true}
  - {id: avg1, op: avgpool1d, kernel: 2}
  - {id: up1, op: conv_transpose1d, channels: 3, kernel: 3, stride: 2}
  - {id: lin1, op: upsample, scale: 3, mode: linear}
  - {id: conv3, op: conv3d, channels: 4, kernel: [1, 3, 3], padding: [0, 1, 1], inputs: [clip]}
  - {id: bn3, op: batchnorm3d}
  - {id: drop3, op: dropout3d}
  - {id: max3, op: maxpool3d, kernel: [1, 2, 2]}
  - {id: up3, op: conv_transpose3d, channels: 2, kernel: 2, stride: 2}
  - {id: tri, op: upsample, scale: [1, 2, 2], mode: linear}
  - {id: gap3, op: global_maxpool, inputs: [tri]}
outputs: [probs, lin1, gap3]
"""

BLOCKS = """
name: block features
inputs: {image: [3, 16, 16]}
blocks:
  unit:  # a param as op, a `when:` condition and a projected skip
    params: {width: 8, act: relu, stride: 1, residual: false}
    nodes:
      - {id: conv, op: conv2d, channels: width, kernel: 3, stride: stride, padding: 1}
      - {id: act, op: act}
      - {id: add, op: add, skip: x, project: conv, when: residual}
  stage:  # a nested call under repeat
    params: {width: 8, convs: 2, act: relu}
    nodes:
      - {id: layer, block: unit, repeat: convs, args: {width: width, act: act}, first: {residual: true}}
      - {id: pool, op: maxpool2d, kernel: 2}
  fuse:  # reads a node outside it, and another block reads one of its inner nodes
    params: {}
    inputs: [x, y]
    nodes:
      - {id: near, op: upsample, scale: 8, inputs: [y]}
      - {id: cat, op: concat, inputs: [x, near, type]}
      - {id: inner, op: conv2d, channels: 4, kernel: 1}
      - {id: out, op: relu}
nodes:
  - {id: type, op: conv2d, channels: 4, kernel: 3, padding: 1}
  - {id: conv-1, op: conv2d, channels: 4, kernel: 1}
  - {id: s1, block: stage, args: {width: 6, convs: 3}}
  - {id: s2, block: stage, args: {width: 8, convs: 2, act: tanh}}
  - {id: stages.a, block: unit, args: {width: 8}}
  - {id: stages.b, block: unit, repeat: 3, args: {width: 8, act: silu}, first: {stride: 2, residual: true}}
  - {id: fused, block: fuse, inputs: [conv-1, stages.b]}
  - {id: reuse, op: conv2d, channels: 4, kernel: 1, inputs: [fused.inner]}
  - {id: total, op: add, inputs: [fused, reuse]}
outputs: [total, s2]
"""

DETECTIONS = """
name: detections
inputs: {raw: [7, 7, 30]}
nodes:
  - {id: detections, op: yolo_decode, score_threshold: 0.05, iou_threshold: 0.3, max_detections: 5, max_total: 40}
"""

SMALL = {"detections": (DETECTIONS, 1.0), "activations": (ACTIVATIONS, 3.0),
         "convs_pools": (CONVS_POOLS, 1.0),
         "resample_shape": (RESAMPLE_SHAPE, 1.0), "norms_merges": (NORMS_MERGES, 1.0),
         "flat_1d_3d": (FLAT_1D_3D, 1.0), "blocks": (BLOCKS, 1.0)}


@pytest.mark.parametrize("name", list(SMALL))
def test_small_specs(name, tmp_path):
    text, scale = SMALL[name]
    assert compare(NetworkSpec.from_text(text, name), tmp_path, scale=scale) < TOLERANCE


def test_every_op_has_a_pytorch_form():
    """Each of graphcnn's ops says how PyTorch writes it (Layer.torch, next to its lowering)."""
    assert not [op for op, cls in REGISTRY.items()
                if cls.__module__.startswith("graphcnn.layers.") and cls.torch is Layer.torch]


def test_block_classes_read_like_the_spec():
    """One class per block for all its instances; values given by block params are written
    as the params' expressions; attribute names are the ids."""
    pytest.importorskip("torch")
    code, _ = generated(graphcnn.check_spec(SPECS / "resnet50.yaml"))
    assert "class Bottleneck(nn.Module):" in code
    assert "def __init__(self, in_channels, width=64, stride=1):" in code
    assert "self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)" in code
    assert "add = bn3 + self.add.project(x)" in code
    assert "def forward(self, image):" in code and "class Resnet50(nn.Module):" in code


class NoTorch(Layer):
    """An op of a plugin that wrote no PyTorch form."""
    op: Literal["no_torch_x"] = "no_torch_x"


def test_refuses_an_op_without_a_form():
    from graphcnn.deploy.torchcode import torch_code
    from graphcnn.errors import CompileError

    register(NoTorch, late=True)
    try:
        spec = NetworkSpec.from_text("name: n\ninputs: {x: [3]}\nnodes:\n"
                                     "  - {id: odd, op: no_torch_x}\n", "n.yaml")
        with pytest.raises(CompileError, match="n.yaml:4:5: odd: op 'no_torch_x' has no "
                                               "PyTorch form"):
            torch_code(graphcnn.check_spec(spec))
    finally:
        unregister("no_torch_x")


def run_cli(*args, capsys) -> tuple[int, str, str]:
    """The command line in-process: exit code, stdout, stderr."""
    from graphcnn.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_a_module(tmp_path, capsys):
    import py_compile

    out = tmp_path / "r18.py"
    code, stdout, stderr = run_cli("export-torch", SPECS / "resnet18.yaml", "-o", out, capsys=capsys)
    assert code == 0, stderr
    assert "class Resnet18" in stdout
    py_compile.compile(str(out), doraise=True)


def test_cli_refuses_a_missing_spec_and_the_spec_as_output(tmp_path, capsys):
    res = subprocess.run([sys.executable, "-m", "graphcnn.cli", "export-torch",
                          str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "x.py")],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    spec = tmp_path / "s.yaml"
    spec.write_text((SPECS / "mnist1d_mlp.yaml").read_text())
    code, _, stderr = run_cli("export-torch", spec, "-o", spec, capsys=capsys)
    assert code == 1 and "is one of the command's own inputs" in stderr
    assert spec.read_text() == (SPECS / "mnist1d_mlp.yaml").read_text()


def test_cli_module_loads_export_weights(tmp_path, capsys):
    """The issue's acceptance, on resnet18: compile, export-weights, load, same outputs."""
    torch = pytest.importorskip("torch")
    import importlib.util

    from graphcnn.runtime import load_model

    model, weights, code = tmp_path / "m.onnx", tmp_path / "w.npz", tmp_path / "r18.py"
    spec = SPECS / "resnet18.yaml"
    for args in (["compile", spec, "-o", model], ["export-weights", model, "-o", weights],
                 ["export-torch", spec, "-o", code]):
        assert run_cli(*args, capsys=capsys)[0] == 0
    loaded = importlib.util.spec_from_file_location("r18", code)
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    net = module.Resnet18()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(weights).items()})
    x = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    ours = ort_run(load_model(model), {"image": x})[0]
    with torch.no_grad():
        theirs = net.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(ours - theirs).max() / np.abs(ours).max() < TOLERANCE
