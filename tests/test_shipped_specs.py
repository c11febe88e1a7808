"""Every shipped spec: our shapes == ONNX shape inference == onnxruntime's real shapes, our
parameter count == the trainable initializers, and the model passes the full ONNX checker.
Specs above MAX_PARAMS are covered by the slow model tests elsewhere."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphcnn
from conftest import SPECS, onnx_weights, ort_run
from graphcnn.layers import fmt_shape

MAX_PARAMS = 20_000_000
SHIPPED = sorted(SPECS.glob("*.yaml"))  # specs/blocks/ holds block libraries, not networks
STATE = ("running_mean", "running_var")


def dims_of(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_spec_shapes_params_and_checker(path):
    checked = graphcnn.check_spec(path)
    if checked.total_params > MAX_PARAMS:
        pytest.skip(f"{checked.total_params:,} parameters: covered by the slow model tests")
    model = graphcnn.compile_spec(path, seed=0)
    onnx.checker.check_model(model, full_check=True)

    inferred = onnx.shape_inference.infer_shapes(without_shapes(model), strict_mode=True,
                                                 data_prop=True)
    theirs = {v.name: dims_of(v) for v in
              list(inferred.graph.value_info) + list(inferred.graph.output)}
    for node in checked.nodes:
        batch, *rest = theirs[node.id]
        assert rest == list(node.shape), node.id
        # ONNX's Resize (and a Reshape to -1) inference cannot carry the symbolic batch through:
        # it names a fresh unknown ('unk__k'); onnxruntime's batch-2 run below checks the batch.
        assert batch == "N" or batch.startswith("unk__"), (node.id, batch)

    # Our parameter count: every trainable '<node>.<param>' initializer, nothing else.
    weights = onnx_weights(model)
    ids = {n.id for n in checked.nodes}
    trainable = sum(v.size for name, v in weights.items() if _is_trainable(name, checked))
    assert trainable == checked.total_params

    # onnxruntime's real shapes for every node, at batch 2: expose each node value as an output.
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for vi in model.graph.value_info:
        if vi.name in ids and vi.name not in outputs:
            probe.graph.output.append(vi)
    feeds = {name: np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
             for name, shape in checked.inputs.items()}
    values = ort_run(probe, feeds)
    for out, value in zip(probe.graph.output, values):
        assert value.shape == (2, *checked.shape_of(out.name)), out.name
        assert np.isfinite(value).all(), out.name


def without_shapes(model) -> onnx.ModelProto:
    """A copy with our value_info and output shapes removed, so ONNX infers them alone."""
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]
    for out in bare.graph.output:
        out.type.tensor_type.ClearField("shape")
    return bare


def _is_trainable(name: str, checked) -> bool:
    """'<node>.<param>' with a trainable Param of that node (node ids may contain dots)."""
    for node in checked.nodes:
        if name.startswith(node.id + "."):
            param = node.params.get(name[len(node.id) + 1:])
            if param is not None:
                return param.trainable
    return False


def test_parameter_initializers_are_exactly_the_params():
    checked = graphcnn.check_spec(SPECS / "mnist1d_cnn.yaml")
    weights = onnx_weights(graphcnn.compile_spec(SPECS / "mnist1d_cnn.yaml"))
    names = {n for n in weights if not n.startswith("const.")}
    assert names == {f"{n.id}.{p}" for n in checked.nodes for p in n.params}


def test_mnist1d_cnn_summary():
    checked = graphcnn.check_spec(SPECS / "mnist1d_cnn.yaml")
    convs = [n for n in checked.nodes if n.op == "conv1d"]
    assert [n.shape for n in convs] == [(15, 19), (15, 9), (15, 4)]
    assert checked.total_params == 2050
    assert [n.param_count for n in convs] == [1 * 3 * 15 + 15, 15 * 3 * 15 + 15, 15 * 3 * 15 + 15]
    assert [fmt_shape(checked.shape_of(o)) for o in checked.outputs] == ["[N, 10]"]
    from graphcnn.summary import render

    text = render(checked)
    for shape in ("[N, 15, 19]", "[N, 15, 9]", "[N, 15, 4]", "[N, 10]"):
        assert shape in text
    assert "Total params: 2,050" in text


def test_mnist1d_mlp_summary():
    checked = graphcnn.check_spec(SPECS / "mnist1d_mlp.yaml")
    widths = [40, 285, 135, 60, 10]
    assert checked.total_params == sum(a * b + b for a, b in zip(widths, widths[1:])) == 59065
    assert [fmt_shape(checked.shape_of(o)) for o in checked.outputs] == ["[N, 10]"]


@pytest.mark.parametrize("name", ["mnist1d_cnn", "mnist1d_mlp"])
def test_mnist1d_output_is_a_distribution(name):
    model = graphcnn.compile_spec(SPECS / f"{name}.yaml", seed=1)
    shape = graphcnn.check_spec(SPECS / f"{name}.yaml").inputs["x"]
    (y,) = ort_run(model, {"x": np.random.default_rng(0).standard_normal((5, *shape))
                           .astype(np.float32)})
    assert y.shape == (5, 10)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
