"""layernorm, groupnorm, instancenorm, mul, scale, split, chunk and channel_shuffle: each op
compiled alone and run in onnxruntime against a numpy reference written from PyTorch's
documented formula (float64), the parameter count, ONNX's full check, the backward rule
against finite differences, located errors, `--precision fp16` and `--dynamic H,W`."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import graphcnn
from conftest import onnx_weights, ort_run
from graphcnn.cli import main
from test_gradients import PRE1, PRE2, PREF, check_gradients

RNG = np.random.default_rng(0)


# --- numpy references, from PyTorch's documentation -------------------------------------------

def normalize(x, axes, eps):
    """(x - E[x]) / sqrt(Var[x] + eps), the biased variance, over `axes` (torch's norms)."""
    x = x.astype(np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)


def along(v, axis, ndim):
    """A vector shaped to broadcast along `axis` of an ndim array."""
    return v.reshape([-1 if a == axis else 1 for a in range(ndim)])


def layer_norm(x, axis, w, b, eps):
    """nn.LayerNorm(last size) on `last`; ConvNeXt's LayerNorm2d (over C) on `channels`."""
    a = x.ndim - 1 if axis == "last" or x.ndim == 2 else 1
    y = normalize(x, (a,), eps)
    return y if w is None else y * along(w, a, x.ndim) + along(b, a, x.ndim)


def group_norm(x, groups, w, b, eps):
    """nn.GroupNorm: statistics over each group of C/groups channels and all positions."""
    y = normalize(x.reshape(len(x), groups, -1), (2,), eps).reshape(x.shape)
    return y if w is None else y * along(w, 1, x.ndim) + along(b, 1, x.ndim)


def instance_norm(x, w, b, eps):
    """nn.InstanceNorm{1,2,3}d(track_running_stats=False): over all positions per channel."""
    y = normalize(x, tuple(range(2, x.ndim)), eps)
    return y if w is None else y * along(w, 1, x.ndim) + along(b, 1, x.ndim)


def gate_product(a, b):
    """torch's a * b after an [N, C] gate is viewed [N, C, 1, ...] (x * s.view(N, C, 1, 1))."""
    ndim = max(a.ndim, b.ndim)
    a, b = (v.reshape(*v.shape, *[1] * (ndim - v.ndim)) for v in (a, b))
    return a.astype(np.float64) * b


def torch_chunk(x, chunks):
    """torch.chunk(x, chunks, 1): pieces of ceil(C / chunks) channels, the last one smaller."""
    size = -(-x.shape[1] // chunks)
    return [x[:, i:i + size] for i in range(0, x.shape[1], size)]


def torch_split(x, sizes):
    """torch.split(x, sizes, 1)."""
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return [x[:, s:s + n] for s, n in zip(starts, sizes)]


def channel_shuffle(x, groups):
    """torchvision.models.shufflenetv2.channel_shuffle."""
    n, c, *spatial = x.shape
    v = x.reshape(n, groups, c // groups, *spatial)
    return np.swapaxes(v, 1, 2).reshape(x.shape)


# --- helpers ------------------------------------------------------------------------------------

def spec_of(inputs: dict, nodes: list, outputs=None) -> graphcnn.NetworkSpec:
    data = {"name": "t", "inputs": inputs, "nodes": nodes}
    if outputs:
        data["outputs"] = outputs
    return graphcnn.NetworkSpec.from_text(json.dumps(data))


def run(spec, weights=None, batch=3):
    """(onnxruntime outputs, the inputs fed, weights, checked graph); ONNX's full check and
    the checker's shapes against the outputs' shapes on the way."""
    model = graphcnn.compile_spec(spec, seed=1, weights=weights)
    onnx.checker.check_model(model, full_check=True)
    feeds = {k: RNG.standard_normal((batch, *s)).astype(np.float32) for k, s in spec.inputs.items()}
    ys = ort_run(model, feeds)
    checked = graphcnn.check(spec)
    assert [y.shape[1:] for y in ys] == [checked.shape_of(o) for o in checked.outputs]
    return ys, feeds, onnx_weights(model), checked


def affine_weights(node_id: str, size: int) -> dict:
    return {f"{node_id}.weight": RNG.standard_normal(size).astype(np.float32),
            f"{node_id}.bias": RNG.standard_normal(size).astype(np.float32)}


def close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --- normalisations ---------------------------------------------------------------------------

SHAPES = [[6], [4, 7], [5, 3, 4], [3, 2, 3, 2]]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("axis,affine,eps", [("channels", True, 1e-6), ("last", True, 1e-5),
                                             ("channels", False, 1e-5), ("last", False, 0.5)])
def test_layernorm(shape, axis, affine, eps):
    size = shape[-1] if axis == "last" else shape[0]
    weights = affine_weights("y", size) if affine else None
    node = {"id": "y", "op": "layernorm", "axis": axis, "eps": eps, "affine": affine}
    (y,), feeds, w, checked = run(spec_of({"x": shape}, [node]), weights)
    close(y, layer_norm(feeds["x"], axis, w.get("y.weight"), w.get("y.bias"), eps))
    assert checked.node("y").param_count == (2 * size if affine else 0)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("groups", [1, 2, "C"])
@pytest.mark.parametrize("affine", [True, False])
def test_groupnorm(shape, groups, affine):
    c = shape[0]
    groups = c if groups == "C" else (groups if c % groups == 0 else 1)
    weights = affine_weights("y", c) if affine else None
    node = {"id": "y", "op": "groupnorm", "groups": groups, "affine": affine}
    (y,), feeds, w, checked = run(spec_of({"x": shape}, [node]), weights)
    close(y, group_norm(feeds["x"], groups, w.get("y.weight"), w.get("y.bias"), 1e-5))
    assert checked.node("y").param_count == (2 * c if affine else 0)


@pytest.mark.parametrize("shape", SHAPES[1:], ids=str)
@pytest.mark.parametrize("affine,eps", [(False, 1e-5), (True, 1e-3)])
def test_instancenorm(shape, affine, eps):
    weights = affine_weights("y", shape[0]) if affine else None
    node = {"id": "y", "op": "instancenorm", "affine": affine, "eps": eps}
    (y,), feeds, w, checked = run(spec_of({"x": shape}, [node]), weights)
    close(y, instance_norm(feeds["x"], w.get("y.weight"), w.get("y.bias"), eps))
    assert checked.node("y").param_count == (2 * shape[0] if affine else 0)


def test_instancenorm_defaults_to_no_affine():
    checked = graphcnn.check(spec_of({"x": [4, 5]}, [{"id": "y", "op": "instancenorm"}]))
    assert checked.node("y").params == {}


# --- mul, scale -------------------------------------------------------------------------------

@pytest.mark.parametrize("a,b,out", [
    ([4, 5, 6], [4], [4, 5, 6]), ([4], [4, 5, 6], [4, 5, 6]), ([4, 5, 6], [4, 1, 1], [4, 5, 6]),
    ([4, 5, 6], [4, 5, 6], [4, 5, 6]), ([4, 1, 6], [4, 5, 1], [4, 5, 6]), ([7], [7], [7]),
    ([3, 5], [3], [3, 5]), ([2, 3, 4, 5], [2], [2, 3, 4, 5]), ([1, 3, 4], [5, 3, 1], [5, 3, 4]),
], ids=str)
def test_mul(a, b, out):
    (y,), feeds, _, checked = run(spec_of({"a": a, "b": b}, [{"id": "y", "op": "mul",
                                                              "inputs": ["a"], "skip": "b"}]))
    close(y, gate_product(feeds["a"], feeds["b"]))
    assert checked.shape_of("y") == tuple(out) and checked.node("y").param_count == 0


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_scale(shape):
    gamma = RNG.standard_normal(shape[0]).astype(np.float32)
    (y,), feeds, _, checked = run(spec_of({"x": shape}, [{"id": "y", "op": "scale"}]),
                                  {"y.weight": gamma})
    close(y, feeds["x"] * along(gamma, 1, len(shape) + 1))
    assert checked.node("y").param_count == shape[0]


@pytest.mark.parametrize("init", [1e-6, 1.0, -2.5])
def test_scale_init(init):
    model = graphcnn.compile_spec(spec_of({"x": [3, 4]}, [{"id": "y", "op": "scale", "init": init}]))
    np.testing.assert_array_equal(onnx_weights(model)["y.weight"], np.full(3, init, np.float32))


# --- split, chunk, channel_shuffle -------------------------------------------------------------

@pytest.mark.parametrize("shape,sizes", [([6], [2, 4]), ([5, 4], [1, 3, 1]), ([4, 3, 2], [4]),
                                         ([7, 2, 2, 3], [3, 1, 3])], ids=str)
def test_split(shape, sizes):
    outputs = [f"s.{k}" for k in range(len(sizes))]
    ys, feeds, _, checked = run(spec_of({"x": shape}, [{"id": "s", "op": "split", "sizes": sizes}],
                                        outputs))
    for y, want in zip(ys, torch_split(feeds["x"], sizes), strict=True):
        np.testing.assert_array_equal(y, want)
    assert sum(checked.node(o).param_count for o in outputs) == 0


@pytest.mark.parametrize("shape,chunks", [([6], 3), ([5, 4], 2), ([7, 3, 2], 3), ([5, 2, 1, 2], 1),
                                          ([3, 4], 3)], ids=str)
def test_chunk(shape, chunks):
    outputs = [f"c.{k}" for k in range(chunks)]
    ys, feeds, _, _ = run(spec_of({"x": shape}, [{"id": "c", "op": "chunk", "chunks": chunks}],
                                  outputs))
    for y, want in zip(ys, torch_chunk(feeds["x"], chunks), strict=True):
        np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("groups", [1, 2, 3])
def test_channel_shuffle(shape, groups):
    shape = [6, *shape[1:]]
    (y,), feeds, _, checked = run(spec_of({"x": shape}, [{"id": "y", "op": "channel_shuffle",
                                                          "groups": groups}]))
    np.testing.assert_array_equal(y, channel_shuffle(feeds["x"], groups))
    assert checked.node("y").param_count == 0


def test_split_parts_in_a_block_repeated():
    """A ShuffleNetV2-style unit: half the channels pass, half go through a conv; parts are
    named locally inside the block (`s.0`), and the blocks chain."""
    text = """
name: shuffle
inputs: {x: [8, 5, 5]}
blocks:
  unit:
    nodes:
      - {id: s, op: split, sizes: [4, 4]}
      - {id: conv, op: conv2d, channels: 4, kernel: 1, inputs: [s.1]}
      - {id: cat, op: concat, inputs: [s.0, conv]}
      - {id: shuffle, op: channel_shuffle, groups: 2}
nodes:
  - {id: stage, block: unit, repeat: 2}
"""
    spec = graphcnn.NetworkSpec.from_text(text)
    (y,), feeds, w, checked = run(spec)
    x = feeds["x"]
    for k in range(2):
        half = torch_split(x, [4, 4])
        conv = np.einsum("oc,nchw->nohw", w[f"stage.block{k}.conv.weight"][:, :, 0, 0], half[1])
        conv += along(w[f"stage.block{k}.conv.bias"], 1, 4)
        x = channel_shuffle(np.concatenate([half[0], conv], axis=1), 2)
    close(y, x)
    assert checked.node("stage.block1.s.1").inputs == ("stage.block0.shuffle",)


# --- backward rules ---------------------------------------------------------------------------

@pytest.mark.parametrize("node,shape", [
    ({"op": "layernorm"}, [2, 5]), ({"op": "layernorm", "affine": False}, [2, 4, 3]),
    ({"op": "layernorm", "axis": "last"}, [2, 4, 3]),
    ({"op": "layernorm", "axis": "last", "affine": False}, [2, 5]),
    ({"op": "layernorm"}, [5]), ({"op": "groupnorm", "groups": 2}, [2, 5]),
    ({"op": "groupnorm", "groups": 2, "affine": False}, [2, 4, 3]),
    ({"op": "groupnorm", "groups": 4}, [2, 3, 2]), ({"op": "instancenorm"}, [2, 5]),
    ({"op": "instancenorm", "affine": True}, [2, 4, 3]),
], ids=str)
def test_norm_gradients(node, shape):
    pre = {1: PREF, 2: PRE1, 3: PRE2}[len(shape)]
    check_gradients([pre, {"id": "n", **node}, {"op": "tanh"}], {"x": shape}, batch=3)


GATES = {  # the gate branch of a squeeze-excitation: [N, C], [N, C, 1, 1], or a full map
    "flat": [{"op": "global_avgpool"}, {"id": "g", "op": "linear", "features": 4}],
    "ones": [{"op": "global_avgpool", "keepdims": True},
             {"id": "g", "op": "conv2d", "channels": 4, "kernel": 1}],
    "full": [{"id": "g", "op": "conv2d", "channels": 4, "kernel": 3, "padding": 1}],
}


@pytest.mark.parametrize("gate", GATES)
def test_mul_gradients(gate):
    nodes = [PRE2, *GATES[gate], {"op": "sigmoid"}, {"id": "m", "op": "mul", "skip": "pre"}]
    check_gradients(nodes, {"x": [2, 4, 3]}, batch=3)


def test_mul_gradients_broadcast_both_ways():
    nodes = [PRE2, {"id": "h", "op": "avgpool2d", "kernel": [3, 1]},
             {"id": "w", "op": "avgpool2d", "kernel": [1, 4], "inputs": ["pre"]},
             {"id": "m", "op": "mul", "inputs": ["h"], "skip": "w"}]
    check_gradients(nodes, {"x": [2, 3, 4]}, batch=2)


def test_scale_and_shuffle_gradients():
    check_gradients([PRE2, {"id": "s", "op": "scale", "init": 0.5},
                     {"op": "channel_shuffle", "groups": 2},
                     {"id": "c", "op": "conv2d", "channels": 3, "kernel": 1}], {"x": [2, 3, 3]})
    check_gradients([PREF, {"id": "s", "op": "scale"}], {"x": [5]})


def test_split_and_chunk_gradients():
    """A part used twice, a part unused (its channels get no gradient), parts re-joined."""
    nodes = [PRE1, {"id": "s", "op": "split", "sizes": [1, 2, 1]},
             {"id": "a", "op": "conv1d", "channels": 3, "kernel": 2, "padding": "same",
              "inputs": ["s.1"]},
             {"id": "b", "op": "mul", "inputs": ["s.0"], "skip": "s.0"},
             {"id": "ch", "op": "chunk", "chunks": 2, "inputs": ["a"]},
             {"id": "out", "op": "concat", "inputs": ["ch.1", "b", "ch.0"]}]
    check_gradients(nodes, {"x": [2, 5]}, batch=2)


# --- errors -----------------------------------------------------------------------------------

HEAD = "name: t\ninputs: {x: [6, 8, 8], v: [6, 8]}\nnodes:\n"


def refused(tmp_path, capsys, nodes: str) -> str:
    """`graphcnn check` of HEAD + nodes: exit 1, and the error without the file name."""
    path = tmp_path / "t.yaml"
    path.write_text(HEAD + nodes)
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().removeprefix(f"error: {path}:")


@pytest.mark.parametrize("node,message", [
    ("{op: groupnorm, groups: 0}", "4:21: bad value for 'nodes.0.groups': Input should be "
                                   "greater than or equal to 1; received 0"),
    ("{op: layernorm, eps: 0}", "4:21: bad value for 'nodes.0.eps': Input should be greater "
                                "than 0; received 0"),
    ("{op: instancenorm, eps: .nan}", "4:24: bad value for 'nodes.0.eps': Input should be a "
                                      "finite number; received nan"),
    ("{op: layernorm, axis: first}", "4:21: bad value for 'nodes.0.axis': Input should be "
                                     "'channels' or 'last'; received 'first'"),
    ("{op: scale, init: .inf}", "4:17: bad value for 'nodes.0.init': Input should be a finite "
                                "number; received inf"),
    ("{op: split, sizes: [2, 0]}", "4:28: bad value for 'nodes.0.sizes.1': Input should be "
                                   "greater than or equal to 1; received 0"),
    ("{op: split, sizes: []}", "4:17: bad value for 'nodes.0.sizes': List should have at least "
                               "1 item after validation, not 0; received []"),
    ("{op: chunk, chunks: 0}", "4:17: bad value for 'nodes.0.chunks': Input should be greater "
                               "than or equal to 1; received 0"),
    ("{op: channel_shuffle, groups: -2}", "4:27: bad value for 'nodes.0.groups': Input should "
                                          "be greater than or equal to 1; received -2"),
], ids=lambda v: v if v.startswith("{") else "")
def test_bad_field_is_located(tmp_path, capsys, node, message):
    assert refused(tmp_path, capsys, f"  - {node}\n") == message


@pytest.mark.parametrize("nodes,message", [
    ("  - {id: n, op: groupnorm, groups: 4}\n",
     "4:5: n: groupnorm needs channels divisible by groups; expected C a multiple of groups = 4; "
     "received [N, 6, 8, 8]"),
    ("  - {id: n, op: channel_shuffle, groups: 4}\n",
     "4:5: n: channel_shuffle needs channels divisible by groups; expected C a multiple of 4; "
     "received [N, 6, 8, 8]"),
    ("  - {id: s, op: split, sizes: [2, 3]}\n",
     "4:5: s.0: split sizes must add up to the input's channels; expected sizes summing to 6; "
     "received [2, 3] (sum 5)"),
    ("  - {id: c, op: chunk, chunks: 4}\n",
     "4:5: c.3: chunk part 3 is empty: torch.chunk makes 3 parts of 2 channels from 6; "
     "expected at most 3 chunks; received 4"),
    ("  - {id: s, op: split, sizes: [3, 3]}\n  - {id: r, op: relu}\n",
     "5:5: r: input 's' has several outputs; name one of its parts; expected one of: s.0, s.1"),
    ("  - {id: s, op: chunk, chunks: 2}\noutputs: [s]\n",
     "5:11: output 's' has several outputs; name one of its parts; expected one of: s.0, s.1"),
    ("  - {op: flatten}\n  - {id: n, op: instancenorm}\n",
     "5:5: n: instancenorm needs spatial axes to take statistics over; expected [N, C, L] or "
     "[N, C, H, W] or [N, C, D, H, W]; received [N, 384]"),
    ("  - {id: f, op: conv2d, channels: 16, kernel: 1}\n  - {op: global_avgpool}\n"
     "  - {op: linear, features: 8}\n  - {id: m, op: mul, skip: f}\n",
     "7:5: m: mul inputs disagree on axis 1 (channels): 8 vs 16; expected on every axis equal "
     "sizes, or 1 on one side; received [N, 8] (as [N, 8, 1, 1]) and [N, 16, 8, 8]"),
    # a size that makes the pooled map 1 x 1 broadcasts: the error names the nearest one
    ("  - {id: p, op: maxpool2d, kernel: 2}\n  - {id: m, op: mul, skip: x}\n",
     "2:10: input 8 x 8 does not fit: m (t.yaml:5:5): mul inputs disagree on axis 2 (spatial): "
     "4 vs 8, axis 3 (spatial): 4 vs 8; expected on every axis equal sizes, or 1 on one side; "
     "received [N, 6, 4, 4] and [N, 6, 8, 8]; nearest admissible sizes: 3"),
    ("  - {id: p, op: maxpool1d, kernel: 2, inputs: [v]}\n  - {id: m, op: mul, skip: x}\n",
     "5:5: m: mul inputs differ in rank; expected equal ranks, or one input [N, C] (read as "
     "[N, C, 1, ...]); received [N, 6, 4] and [N, 6, 8, 8]"),
], ids=["groups", "shuffle", "split_sum", "chunk_empty", "whole_split", "whole_output",
        "instance_flat", "gate_channels", "spatial", "rank"])
def test_shape_errors(tmp_path, capsys, nodes, message):
    text = refused(tmp_path, capsys, nodes).replace(f"{tmp_path}/", "")
    assert text.startswith(message), text


# --- precision and dynamic sizes --------------------------------------------------------------

ZOO = """name: zoo
inputs: {x: [3, 8, 8]}
nodes:
  - {id: c, op: conv2d, channels: 8, kernel: 3, padding: same}
  - {id: ln, op: layernorm, eps: 1.0e-6}
  - {id: gn, op: groupnorm, groups: 2}
  - {id: inn, op: instancenorm, affine: true}
  - {id: s, op: split, sizes: [3, 5]}
  - {id: a, op: conv2d, channels: 4, kernel: 1, inputs: [s.1]}
  - {id: cat, op: concat, inputs: [s.0, a, s.0]}
  - {id: sh, op: channel_shuffle, groups: 5}
  - {id: ch, op: chunk, chunks: 2}
  - {id: p, op: global_avgpool, inputs: [ch.0]}
  - {id: m, op: mul, skip: ch.1}
  - {id: sc, op: scale, init: 0.5}
outputs: [sc]
"""


@pytest.fixture
def zoo(tmp_path):
    path = tmp_path / "zoo.yaml"
    path.write_text(ZOO)
    return path


def test_fp16_keeps_the_normalisations_fp32(zoo, tmp_path):
    plain, half = tmp_path / "plain.onnx", tmp_path / "half.onnx"
    assert main(["compile", str(zoo), "-o", str(plain)]) == 0
    assert main(["compile", str(zoo), "-o", str(half), "--precision", "fp16"]) == 0
    model = onnx.shape_inference.infer_shapes(onnx.load(str(half)))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    norms = [n for n in model.graph.node
             if n.op_type in ("LayerNormalization", "InstanceNormalization")]
    assert len(norms) == 3
    assert all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in norms)
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    (want,), (got,) = (ort_run(onnx.load(str(p)), {"x": x}) for p in (plain, half))
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)


def test_another_onnx_host_agrees(zoo):
    """onnx's reference evaluator (numpy, from the operator specs) runs the zoo's ONNX alike."""
    from onnx.reference import ReferenceEvaluator

    model = graphcnn.compile_spec(graphcnn.NetworkSpec.from_yaml(zoo))
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    close(ReferenceEvaluator(model).run(None, {"x": x})[0], ort_run(model, {"x": x})[0])


def test_dynamic_spatial_axes(zoo, tmp_path):
    """No op of the zoo writes a spatial size into the model (channel_shuffle is a Gather,
    groupnorm reshapes back by Shape): the model runs at sizes it was not compiled for."""
    out = tmp_path / "dyn.onnx"
    assert main(["compile", str(zoo), "-o", str(out), "--dynamic", "H,W"]) == 0
    model = onnx.load(str(out))
    for size in [(5, 7), (12, 9)]:
        (y,) = ort_run(model, {"x": RNG.standard_normal((2, 3, *size)).astype(np.float32)})
        assert y.shape == (2, 5, *size)
