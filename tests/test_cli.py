"""The command line end to end, in a subprocess as a user runs it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import ROOT, SPECS, ort_run
from graphcnn.cli import main

CNN = str(SPECS / "mnist1d_cnn.yaml")


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "graphcnn.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def ok(*args, cwd=None) -> str:
    proc = cli(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def fails(*args, code=1) -> str:
    proc = cli(*args)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_check():
    assert ok("check", CNN).strip() == f"{CNN}: ok: 9 nodes, 2,050 parameters, output probs [N, 10]"


def test_summary_table():
    text = ok("summary", CNN)
    for row in (["conv1", "conv1d", "[N, 15, 19]", "60"], ["conv2", "[N, 15, 9]", "690"],
                ["conv3", "[N, 15, 4]", "690"], ["logits", "linear", "[N, 10]", "610"]):
        line = next(ln for ln in text.splitlines() if ln.split() and ln.split()[0] == row[0])
        assert all(cell in line for cell in row), line
    assert "Total params: 2,050" in text


def test_summary_json():
    data = json.loads(ok("summary", "--json", CNN))
    assert {"name", "total_params", "total_macs", "nodes"} <= set(data)
    assert data["name"] == "mnist1d_cnn" and data["total_params"] == 2050
    assert data["total_macs"] == sum(n["macs"] for n in data["nodes"])
    for node in data["nodes"]:
        assert {"id", "op", "inputs", "output_shape", "params", "macs"} <= set(node)
        assert node["output_shape"][0] == "N"
    by_id = {n["id"]: n for n in data["nodes"]}
    assert by_id["conv1"]["output_shape"] == ["N", 15, 19] and by_id["conv1"]["inputs"] == ["x"]
    assert by_id["conv1"]["macs"] == 15 * 19 * 1 * 3
    assert by_id["probs"]["output_shape"] == ["N", 10]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """mnist1d_cnn compiled once by the CLI (seed 5), shared by the run tests."""
    out = tmp_path_factory.mktemp("cli") / "m.onnx"
    assert ok("compile", CNN, "-o", out, "--seed", 5).startswith(f"wrote {out}: 2,050 parameters")
    return out


def test_compile(compiled, tmp_path, capsys):
    model = onnx.load(str(compiled))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    fixed = tmp_path / "b3.onnx"
    assert main(["compile", CNN, "-o", str(fixed), "--batch", "3"]) == 0
    dims = onnx.load(str(fixed)).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [3, 10]
    assert capsys.readouterr().out.startswith(f"wrote {fixed}")


def test_compile_opset_too_high(tmp_path):
    err = fails("compile", CNN, "-o", tmp_path / "m.onnx", "--opset", 999)
    assert err.startswith("error: opset 999 is not possible; expected 18 to ")
    assert "onnxruntime runs up to" in err
    assert not (tmp_path / "m.onnx").exists()


def test_run_spec_random_input():
    out = ok("run", CNN, "--batch", 4)
    assert out.splitlines()[0] == "probs: shape [4, 10], dtype float32"
    assert "on CPUExecutionProvider" in out


def test_run_model_with_input_and_output_files(compiled, tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 1, 40)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = ok("run", compiled, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert "probs: shape [3, 10], dtype float32" in out
    y = np.load(tmp_path / "y.npy")
    (want,) = ort_run(onnx.load(str(compiled)), {"x": x})
    np.testing.assert_array_equal(y, want)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


def test_run_unavailable_provider_lists_available():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    err = fails("run", CNN, "--provider", "cuda")
    assert err.startswith("error: execution provider 'cuda' is not available in this onnxruntime")
    for provider in ort.get_available_providers():
        assert provider in err


def test_schema_is_json_and_matches_the_shipped_file():
    schema = json.loads(ok("schema"))
    assert schema == json.loads((SPECS / "schema.json").read_text()), \
        "specs/schema.json is stale: run `graphcnn schema > specs/schema.json`"


def test_usage_error_exits_2():
    proc = cli("bogus")
    assert proc.returncode == 2
    assert "usage: graphcnn" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [[], ["compile", CNN], ["summary", "--depth", "x", CNN]])
def test_usage_errors_exit_2_in_process(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert "usage: graphcnn" in capsys.readouterr().err


def test_missing_file_is_a_user_error(tmp_path, capsys):
    assert main(["check", str(tmp_path / "none.yaml")]) == 1
    assert capsys.readouterr().err.startswith("error: cannot read spec file")


def test_console_script():
    """The installed `graphcnn` entry point (pyproject [project.scripts]) next to this Python."""
    script = shutil.which("graphcnn", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("graphcnn is not installed as a console script in this environment")
    proc = subprocess.run([script, "check", CNN], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "2,050 parameters" in proc.stdout


@pytest.mark.parametrize("args,message", [
    # --batch 0: a usage error (exit 2), test_hardening_train.py
    (["compile", CNN, "-o", "nodir/m.onnx"], "error: output folder 'nodir' does not exist"),
    (["run", "missing.onnx"], "error: no such file: missing.onnx"),
    (["run", CNN, "--input", "bad.npy"], "error: --input bad.npy: array 'x' has shape [2, 1, 39]"),
    (["summary", "--depth", "0", CNN], "error: --depth must be at least 1"),
])
def test_user_errors_in_process(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "bad.npy", np.zeros((2, 1, 39), np.float32))
    assert main(args) == 1
    assert capsys.readouterr().err.startswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy"]
