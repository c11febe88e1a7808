"""Deployment exports: weights by spec id, batchnorm folding, fp16/bf16, int8, bench, other hosts."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphcnn import NetworkSpec, check
from graphcnn.deploy.export import ExportOptions, export
from graphcnn.deploy.weights import expected_weights, model_weights
from graphcnn.errors import DataError
from graphcnn.runtime import half_kernels, session

SPEC = """
name: small_resnet
inputs: {x: [3, 16, 16]}
nodes:
  - {id: stem, op: conv2d, channels: 8, kernel: 3, padding: same}
  - {id: bn0, op: batchnorm2d}
  - {op: relu}
  - {id: c1, op: conv2d, channels: 16, kernel: 3, stride: 2, padding: 1, bias: false}
  - {id: bn1, op: batchnorm2d}
  - {op: relu}
  - {id: add, op: add, skip: relu_1, project: conv_bn}
  - {op: global_avgpool}
  - {id: fc, op: linear, features: 5}
  - {id: fcbn, op: batchnorm1d}
"""


@pytest.fixture(scope="module")
def checked():
    return check(NetworkSpec.from_text(SPEC, "small.yaml"))


@pytest.fixture(scope="module")
def trained_weights(checked, tmp_path_factory):
    """Weights with non-trivial batchnorm statistics, as after training."""
    rng = np.random.default_rng(1)
    arrays = {}
    for name, shape in expected_weights(checked).items():
        values = rng.standard_normal(shape).astype(np.float32)
        arrays[name] = np.abs(values) + 0.5 if name.endswith("running_var") else values
    path = tmp_path_factory.mktemp("w") / "weights.npz"
    np.savez(path, **arrays)
    return path, arrays


def outputs(model, x):
    return session(model).run(None, {model.graph.input[0].name: x})[0]


def sample(n=4):
    return np.random.default_rng(0).standard_normal((n, 3, 16, 16)).astype(np.float32)


def test_weights_load_by_spec_id(checked, trained_weights):
    path, arrays = trained_weights
    model, _ = export(checked, SPEC, ExportOptions(weights=str(path)))
    got = model_weights(model)
    assert set(got) == set(arrays)
    for name, value in arrays.items():
        np.testing.assert_array_equal(got[name], value)


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("c1.weight"), r"spec parameters no key fills \(1\): c1.weight"),
    (lambda a: a.update({"nope.weight": np.zeros(3)}), r"keys that name no spec parameter \(1\): nope.weight$"),
    (lambda a: a.update({"fc.bias": np.zeros(6, np.float32)}),
     r"shapes that differ \(1\): fc.bias \[6\] -> fc.bias \[5\]"),
])
def test_weights_file_must_match(checked, trained_weights, tmp_path, change, message):
    arrays = dict(trained_weights[1])
    change(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        export(checked, SPEC, ExportOptions(weights=str(tmp_path / "bad.npz")))


def test_fold_bn_is_numerically_equal(checked, trained_weights):
    path, _ = trained_weights
    plain, _ = export(checked, SPEC, ExportOptions(weights=str(path)))
    folded, notes = export(checked, SPEC, ExportOptions(weights=str(path), fold_bn=True))
    ops = [n.op_type for n in folded.graph.node]
    # stem+bn0, c1+bn1, the projection conv+bn and fc+fcbn all fold
    assert ops.count("BatchNormalization") == 0, ops
    assert "folded 4 batchnorm(s)" in notes[-1]
    onnx.checker.check_model(folded, full_check=True)
    a, b = outputs(plain, sample()), outputs(folded, sample())
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())


@pytest.mark.parametrize("precision, rtol", [("fp16", 1e-2), ("bf16", 5e-2)])
def test_reduced_precision_runs_on_cpu(checked, trained_weights, precision, rtol):
    path, _ = trained_weights
    ref, _ = export(checked, SPEC, ExportOptions(weights=str(path)))
    low, _ = export(checked, SPEC, ExportOptions(weights=str(path), precision=precision))
    kinds = {t.data_type for t in low.graph.initializer if t.name.endswith(".weight")}
    assert kinds == {onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.BFLOAT16}
    assert low.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    a, b = outputs(ref, sample()), outputs(low, sample())
    np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * np.abs(a).max())


# --- --precision: what runs in half is what the provider computes in half --------------------

HALF_SPEC = """
name: half
inputs: {x: [3, 8, 8]}
nodes:
  - {id: c1, op: conv2d, channels: 4, kernel: 3, padding: same}
  - {op: relu}
  - {op: maxpool2d, kernel: 2}
  - {id: c2, op: conv2d, channels: 4, kernel: 3, padding: same}
  - {op: global_avgpool}
  - {id: fc, op: linear, features: 3}
  - {id: probs, op: softmax}
"""
FP16, BF16, FP32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT


@pytest.fixture()
def emulated(monkeypatch):
    """Half ops wherever onnxruntime runs them at all, its own fp32 emulation included."""
    monkeypatch.setattr(half_kernels, "has_kernel",
                        lambda *probe: half_kernels.kernel_kind(*probe) != "none")


def half_export(precision):
    checked = check(NetworkSpec.from_text(HALF_SPEC, "half.yaml"))
    model, notes = export(checked, HALF_SPEC, ExportOptions(precision=precision))
    typed = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*typed.input, *typed.value_info, *typed.output]}
    reads = {n.op_type: types[n.input[0]] for n in model.graph.node if n.op_type != "Cast"}
    return model, notes[-1], reads


def test_fp16_runs_in_half_every_op_the_provider_computes_in_half(emulated):
    """With emulated kernels counted (a stand-in for a provider with real ones), the convs and
    the linear layer run in fp16 and the ops between them follow; softmax stays fp32."""
    model, note, reads = half_export("fp16")
    assert reads == {"Conv": FP16, "Relu": FP16, "MaxPool": FP16, "GlobalAveragePool": FP16,
                     "Flatten": FP16, "Gemm": FP16, "Softmax": FP32}, reads
    assert note.startswith("precision fp16 on the cpu provider: 100% of the model's "
                           "conv/matmul multiply-adds and 7 of 8 float ops run in fp16")
    assert model.graph.output[0].type.tensor_type.elem_type == FP32
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    fp32, _ = export(check(NetworkSpec.from_text(HALF_SPEC, "half.yaml")), HALF_SPEC,
                     ExportOptions())
    np.testing.assert_allclose(outputs(model, x), outputs(fp32, x), rtol=1e-2, atol=1e-3)


def test_fp16_on_the_cpu_provider_says_what_it_computes_in_half():
    """Only real kernels count: on an x86 CPU the fp16 convs are onnxruntime's emulation, so the
    model computes in fp32 with no cast but the weights' (no op gets casts on both sides just
    to move values in half), and the report says so."""
    model, note, reads = half_export("fp16")
    fp32, _ = export(check(NetworkSpec.from_text(HALF_SPEC, "half.yaml")), HALF_SPEC,
                     ExportOptions())
    conv = next(n for n in fp32.graph.node if n.op_type == "Conv")
    sig = half_kernels.signature(conv, half_kernels.value_types(fp32), FP16)
    native = half_kernels.has_kernel(sig, FP16, "CPUExecutionProvider",
                                     half_kernels.default_opset(fp32))
    assert (reads["Conv"] == FP16) == native
    if not native:
        assert set(reads.values()) == {FP32}, reads
        casts = [n for n in model.graph.node if n.op_type == "Cast"]
        weights = {t.name for t in model.graph.initializer}
        assert casts and all(n.input[0] in weights for n in casts)
        assert "0% of the model's conv/matmul" in note and "the model runs in fp32" in note


def test_bf16_without_a_kernel_stays_fp32_behind_casts(emulated):
    """The CPU provider has no bf16 conv at all (not even emulated): fp32 compute, bf16
    weights cast to fp32 in the graph, and a model that runs."""
    model, note, reads = half_export("bf16")
    assert set(reads.values()) == {FP32}, reads
    casts = {n.input[0] for n in model.graph.node if n.op_type == "Cast"}
    assert {"c1.weight", "c2.weight", "fc.weight"} <= casts
    assert {t.data_type for t in model.graph.initializer if t.name.endswith(".weight")} == {BF16}
    assert "0% of the model's conv/matmul" in note
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert np.isfinite(outputs(model, x)).all()


def test_compile_precision_prints_the_report(tmp_path, capsys):
    from graphcnn.cli import main

    spec = tmp_path / "half.yaml"
    spec.write_text(HALF_SPEC)
    out = str(tmp_path / "h.onnx")
    assert main(["compile", str(spec), "-o", out, "--precision", "fp16"]) == 0
    said = capsys.readouterr().out
    assert "precision fp16 on the cpu provider: " in said and "float ops run in fp16" in said


def test_int8_quantization_runs_and_reports(checked, trained_weights, tmp_path):
    path, _ = trained_weights
    np.savez(tmp_path / "calib.npz", x=sample(16))
    model, notes = export(checked, SPEC, ExportOptions(weights=str(path), quantize="int8",
                                                      calibrate=str(tmp_path / "calib.npz")))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "int8 vs fp32 on 16 calibration samples" in notes[-1]
    assert outputs(model, sample()).shape == (4, 5)


def test_calibration_data_must_fit(checked, tmp_path):
    np.savez(tmp_path / "calib.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"expected \[N, 3, 16, 16\]"):
        export(checked, SPEC, ExportOptions(quantize="int8", calibrate=str(tmp_path / "calib.npz")))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "graphcnn.cli", *map(str, args)],
                          capture_output=True, text=True)


def test_export_weights_round_trip_and_bench(tmp_path):
    spec = tmp_path / "small.yaml"
    spec.write_text(SPEC)
    model = tmp_path / "m.onnx"
    assert run_cli("compile", spec, "-o", model, "--seed", 3).returncode == 0
    assert run_cli("export-weights", model, "-o", tmp_path / "w.npz").returncode == 0
    again = tmp_path / "again.onnx"
    res = run_cli("compile", spec, "-o", again, "--weights", tmp_path / "w.npz")
    assert res.returncode == 0, res.stderr
    a = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(model)).graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(again)).graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    res = run_cli("bench", model, "--compare", again, "--batches", "1,2", "--repeat", "3", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert [r["batch"] for r in report["results"][0]] == [1, 2]
    assert {"min_ms", "median_ms", "p90_ms", "samples_per_s"} <= set(report["results"][1][0])
    assert report["max_abs_diff"] == {"1": 0.0, "2": 0.0}


def test_bench_rejects_bad_batches(tmp_path):
    res = run_cli("bench", "specs/mnist1d_cnn.yaml", "--batches", "0,x")
    assert res.returncode == 1 and "--batches takes positive integers" in res.stderr
