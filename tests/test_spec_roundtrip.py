"""Specs survive YAML round trips; compiling is deterministic, initialises as documented, records
its provenance and shapes, and writes atomically; random chains check or compile consistently."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphcnn
from conftest import SPECS, onnx_weights, ort_run
from graphcnn.cli import main
from graphcnn.layers.activation import Gelu, Relu
from graphcnn.layers.conv import Conv1d, Conv2d
from graphcnn.layers.dense import Flatten, Linear
from graphcnn.layers.norm import BatchNorm2d
from graphcnn.layers.pool import GlobalAvgPool, MaxPool2d
from graphcnn.lower.opset import newest_runtime_opset

SHIPPED = sorted(SPECS.glob("*.yaml"))


def python_spec() -> graphcnn.NetworkSpec:
    """A spec built from layer classes, without YAML."""
    return graphcnn.NetworkSpec(name="py", inputs={"img": [3, 12, 12]}, nodes=[
        Conv2d(id="c1", channels=8, kernel=3, padding="circular", bias=False),
        BatchNorm2d(id="bn"), Gelu(id="act"),
        MaxPool2d(id="pool", kernel=2, ceil_mode=True),
        Conv2d(id="c2", channels=8, kernel=[3, 2], stride=2, groups=2, padding=[[1, 0], [0, 1]]),
        Relu(), GlobalAvgPool(id="gap"), Linear(id="fc", features=5)])


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_spec_yaml_round_trip(path):
    spec = graphcnn.load_spec(path)
    again = graphcnn.NetworkSpec.from_text(spec.to_yaml())
    assert again == spec
    assert again.to_yaml() == spec.to_yaml()


def test_python_spec_round_trip():
    spec = python_spec()
    again = graphcnn.NetworkSpec.from_text(spec.to_yaml())
    assert again == spec
    assert graphcnn.check(again).total_params == graphcnn.check(spec).total_params


def test_python_spec_conv1d_default_input():
    spec = graphcnn.NetworkSpec(name="one", inputs={"x": [1, 8]},
                                nodes=[Conv1d(channels=2, kernel=3), Flatten()])
    checked = graphcnn.check(spec)
    assert checked.nodes[-1].shape == (12,)
    assert graphcnn.NetworkSpec.from_text(spec.to_yaml()) == spec


def test_compile_is_deterministic_per_seed():
    spec = python_spec()
    a = graphcnn.compile_spec(spec, seed=3).SerializeToString()
    b = graphcnn.compile_spec(graphcnn.NetworkSpec.from_text(spec.to_yaml()), seed=3)
    assert a == b.SerializeToString()
    c = graphcnn.compile_spec(spec, seed=4)
    assert a != c.SerializeToString()
    wa, wc = onnx_weights(onnx.load_from_string(a)), onnx_weights(c)
    assert not np.array_equal(wa["c1.weight"], wc["c1.weight"])
    assert np.array_equal(wa["bn.running_var"], wc["bn.running_var"])


def test_he_initialisation_and_batchnorm_defaults():
    spec = graphcnn.NetworkSpec(name="init", inputs={"x": [32, 6, 6]}, nodes=[
        Conv2d(id="conv", channels=64, kernel=3), BatchNorm2d(id="bn"), Flatten(),
        Linear(id="fc", features=200)])
    w = onnx_weights(graphcnn.compile_spec(spec, seed=0))
    for name, fan_in in (("conv.weight", 32 * 9), ("fc.weight", 64 * 4 * 4)):
        std = np.sqrt(2.0 / fan_in)
        assert abs(w[name].std() / std - 1) < 0.03, name
        assert abs(w[name].mean()) < 0.05 * std, name
    assert np.all(w["conv.bias"] == 0) and np.all(w["fc.bias"] == 0)
    for name, value in (("weight", 1), ("bias", 0), ("running_mean", 0), ("running_var", 1)):
        assert w[f"bn.{name}"].shape == (64,) and np.all(w[f"bn.{name}"] == value)


def test_default_opset_and_metadata():
    spec = python_spec()
    model = graphcnn.compile_spec(spec)
    ops = tuple(sorted({n.op_type for n in model.graph.node}))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", newest_runtime_opset(ops))]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["graphcnn_version"] == graphcnn.__version__
    assert graphcnn.NetworkSpec.from_text(meta["graphcnn_spec"]) == spec


def test_every_intermediate_value_has_value_info():
    model = graphcnn.compile_spec(python_spec())
    known = {v.name for v in model.graph.value_info}
    outputs = {o.name for o in model.graph.output}
    produced = [v for node in model.graph.node for v in node.output]
    assert len(produced) > 8  # circular padding and gelu emit helper values
    missing = [v for v in produced if v not in known and v not in outputs]
    assert missing == []
    for vi in model.graph.value_info:
        assert vi.type.tensor_type.shape.dim, vi.name


def test_failed_compile_leaves_output_unchanged(tmp_path, capsys):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: b\ninputs: {x: [1, 4]}\nnodes:\n"
                      "  - {op: conv1d, channels: 2, kernel: 9}\n")
    assert main(["compile", str(broken), "-o", str(target)]) == 1
    good = SPECS / "mnist1d_cnn.yaml"
    assert main(["compile", str(good), "-o", str(target), "--opset", "5"]) == 1
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.yaml", "model.onnx"]
    assert main(["compile", str(good), "-o", str(target)]) == 0
    onnx.checker.check_model(onnx.load(str(target)), full_check=True)
    capsys.readouterr()


def test_interrupted_write_keeps_the_old_file(tmp_path):
    from graphcnn.fileio import write_atomic

    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def half_then_fail(path):
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


# --- random chains -----------------------------------------------------------------------

PADDINGS = st.one_of(st.sampled_from(["valid", "same", "full", "circular"]), st.integers(-1, 2))


@st.composite
def chains(draw):
    dims = draw(st.integers(1, 2))
    shape = [draw(st.integers(1, 4))] + [draw(st.integers(1, 12)) for _ in range(dims)]
    nodes = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "conv", "pool", "act"]))
        if kind == "conv":
            nodes.append({"op": f"conv{dims}d", "channels": draw(st.integers(1, 4)),
                          "kernel": draw(st.integers(1, 4)), "stride": draw(st.integers(1, 3)),
                          "dilation": draw(st.integers(1, 2)), "groups": draw(st.integers(1, 2)),
                          "padding": draw(PADDINGS)})
        elif kind == "pool":
            node = {"op": f"{draw(st.sampled_from(['max', 'avg']))}pool{dims}d",
                    "kernel": draw(st.integers(1, 3)), "ceil_mode": draw(st.booleans()),
                    "padding": draw(st.one_of(st.sampled_from(["valid", "same"]),
                                              st.integers(0, 1)))}
            if draw(st.booleans()):
                node["stride"] = draw(st.integers(1, 2))
            nodes.append(node)
        else:
            nodes.append({"op": draw(st.sampled_from(["relu", "tanh", "gelu", "silu"]))})
    return {"name": "random", "inputs": {"x": shape}, "nodes": nodes}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains())
def test_random_chains_check_or_run_consistently(data):
    text = json.dumps(data)
    try:
        spec = graphcnn.NetworkSpec.from_text(text, "random.yaml")
        checked = graphcnn.check(spec)
    except graphcnn.GraphCnnError as err:
        assert err.loc is not None and err.loc.file == "random.yaml", str(err)
        assert err.node is not None or err.loc.line >= 1
        return
    model = graphcnn.compile_spec(spec, seed=1)
    x = np.random.default_rng(0).standard_normal((2, *data["inputs"]["x"])).astype(np.float32)
    (y,) = ort_run(model, {"x": x})
    assert y.shape == (2, *checked.shape_of(checked.outputs[0]))
    assert np.isfinite(y).all()


def test_kernel_registry_read_in_a_child_matches_and_failure_falls_back(monkeypatch):
    """onnxruntime-gpu builds are read in a child process (reading the registry loads every
    provider library and crashes where TensorRT is missing); a failed read gives opset 21."""
    from graphcnn.lower import opset

    assert opset._read_in_child() == opset.read_cpu_registry()
    monkeypatch.setattr(opset, "_cpu_kernels", lambda: None)
    opset.newest_runtime_opset.cache_clear()
    try:
        assert opset.newest_runtime_opset(("Conv", "Relu")) == opset.FALLBACK_OPSET
    finally:
        opset.newest_runtime_opset.cache_clear()


def test_default_opset_is_one_onnxruntime_loads():
    """onnxruntime's kernel registry can reach past what its loader takes (1.31 registers opset
    27 kernels but loads models up to opset 26, IR version 13): the default stays within both."""
    from graphcnn.lower import opset

    newest = opset.runtime_loads_up_to()
    assert opset.MIN_OPSET <= opset.newest_runtime_opset(("Conv", "Relu")) <= newest
    model = graphcnn.compile_spec(python_spec())
    assert model.ir_version == onnx.helper.find_min_ir_version_for(list(model.opset_import))
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
