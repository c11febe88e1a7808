"""Hostile input: limits that fail fast with a located error, CLI exit codes, Ctrl-C during a
compile, models from elsewhere (path traversal, corrupt files), determinism."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphcnn.api import check_spec, compile_spec
from graphcnn.errors import CompileError, GraphCnnError, RunError, ShapeError, SpecError
from graphcnn.graph import Limits
from graphcnn.lower.save import save_model
from graphcnn.spec import NetworkSpec, expand, yamlio

ROOT = Path(__file__).resolve().parent.parent
CLI = "import sys; from graphcnn.cli import main; sys.exit(main(sys.argv[1:]))"
SMALL = """name: small
inputs: {x: [2, 16]}
nodes:
  - {id: conv, op: conv1d, channels: 4, kernel: 3, padding: same}
  - {op: relu}
  - {op: flatten}
  - {id: out, op: linear, features: 3}
"""


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-c", CLI, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def located(text: str, *, exc=GraphCnnError) -> GraphCnnError:
    with pytest.raises(exc) as info:
        check_spec(NetworkSpec.from_text(text, "hostile.yaml"))
    assert info.value.loc is not None or info.value.node is not None
    return info.value


# --- YAML-level limits -----------------------------------------------------------------

def billion_laughs() -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        text += f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]\n"
    return text


def test_billion_laughs_refused_fast_with_location():
    text = billion_laughs()
    assert len(text) < 1024
    start = time.perf_counter()
    err = located(text, exc=SpecError)
    assert time.perf_counter() - start < 1.0
    assert "too many values" in err.message and err.loc.file == "hostile.yaml"


def test_self_referencing_anchor_refused():
    err = located("name: x\ninputs: &a {x: [*a]}\nnodes: [{op: relu}]\n", exc=SpecError)
    assert "nesting too deep" in err.message


@pytest.mark.parametrize("depth", [100, 5000])
def test_deep_nesting_refused(depth):
    err = located("name: " + "[" * depth + "]" * depth + "\n", exc=SpecError)
    assert "nesting" in err.message and err.loc.line == 1


def test_spec_file_too_large(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("# " + "x" * yamlio.MAX_FILE_BYTES + "\n")
    with pytest.raises(SpecError) as info:
        NetworkSpec.from_yaml(path)
    assert info.value.loc is not None and "bytes" in str(info.value)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_endless_spec_file_refused():
    """A device or pipe reports size 0 and never ends: read at most the limit + 1 bytes."""
    start = time.perf_counter()
    with pytest.raises(SpecError, match="bytes"):
        NetworkSpec.from_yaml("/dev/zero")
    assert time.perf_counter() - start < 5


def test_empty_and_non_mapping_documents_are_located():
    for text in ["", "# only a comment\n", "- a\n- b\n", "42\n"]:
        assert located(text, exc=SpecError).loc.file == "hostile.yaml"


# --- graph-level limits ----------------------------------------------------------------

def test_node_count_limit(monkeypatch):
    monkeypatch.setattr(expand, "MAX_NODES", 500)
    text = """name: nest
inputs: {x: [4, 8]}
blocks:
  inner: {nodes: [{op: relu}]}
  outer: {nodes: [{id: i, block: inner, repeat: 100}]}
nodes:
  - {id: o, block: outer, repeat: 100}
"""
    err = located(text, exc=SpecError)
    assert "too many nodes" in err.message and err.via


@pytest.mark.parametrize("repeat", ["1000000000", "-1", "0", "'x'"])
def test_bad_repeat_refused_immediately(repeat):
    text = f"""name: r
inputs: {{x: [4, 8]}}
blocks: {{b: {{nodes: [{{op: relu}}]}}}}
nodes: [{{id: s, block: b, repeat: {repeat}}}]
"""
    start = time.perf_counter()
    located(text, exc=SpecError)
    assert time.perf_counter() - start < 1.0


def test_huge_tensor_and_weights_refused_before_allocation():
    err = located("name: t\ninputs: {x: [3, 100000, 100000]}\nnodes: [{op: relu}]\n", exc=ShapeError)
    assert "too large" in err.message
    err = located("name: w\ninputs: {x: [100000]}\nnodes: [{op: linear, features: 100000}]\n",
                  exc=ShapeError)
    assert "too many weights" in err.message


def test_limits_are_configurable():
    spec = NetworkSpec.from_text(SMALL, "small.yaml")
    assert check_spec(spec).total_params > 100
    with pytest.raises(ShapeError, match="too many weights"):
        check_spec(spec, Limits(max_total_params=100))
    with pytest.raises(ShapeError, match="too large"):
        check_spec(spec, Limits(max_tensor_elements=10))


def test_weights_of_wrong_shape_refused():
    with pytest.raises(CompileError, match="wrong shape") as info:
        compile_spec(NetworkSpec.from_text(SMALL, "small.yaml"), weights={"conv.weight": np.zeros(3)})
    assert info.value.node == "conv"


# --- CLI exit codes ---------------------------------------------------------------------

def run_main(capsys, *args) -> tuple[int, str]:
    """The CLI in this process (fast); SystemExit from argparse is its exit code."""
    from graphcnn.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_cli_exit_codes(tmp_path, capsys):
    good = tmp_path / "small.yaml"
    good.write_text(SMALL)
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMALL.replace("channels: 4", "channels: four"))
    assert run_main(capsys, "check", good)[0] == 0
    code, err = run_main(capsys, "check", bad)
    assert code == 1 and "bad.yaml:4:" in err and "Traceback" not in err
    assert "Traceback" in run_main(capsys, "--verbose", "check", bad)[1]
    assert run_main(capsys, "check")[0] == 2 and run_main(capsys, "frobnicate", good)[0] == 2
    code, err = run_main(capsys, "check", good, "--max-params", "10")
    assert code == 1 and "too many weights" in err
    code, err = run_main(capsys, "summary", good, "--max-tensor", "10")
    assert code == 1 and "too large" in err
    code, err = run_main(capsys, "compile", good, "-o", tmp_path / "no" / "such" / "dir.onnx")
    assert code == 1 and "Traceback" not in err


def test_cli_process_reports_user_error_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMALL.replace("channels: 4", "channels: four"))
    res = cli("check", bad)
    assert res.returncode == 1 and "bad.yaml:4:" in res.stderr and "Traceback" not in res.stderr


def test_compile_is_deterministic(tmp_path):
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL)
    for name in ("a.onnx", "b.onnx"):
        save_model(compile_spec(spec), tmp_path / name)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_ctrl_c_during_compile_leaves_previous_output(tmp_path):
    """SIGINT while the model file is being written: exit 130, no temporary file left, the
    previous output untouched. The big spec makes the write last long enough to hit."""
    spec = tmp_path / "big.yaml"
    spec.write_text("name: big\ninputs: {x: [2048]}\nnodes:\n" +
                    "".join(f"  - {{id: l{i}, op: linear, features: 2048}}\n" for i in range(6)))
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous")
    proc = subprocess.Popen([sys.executable, "-c", CLI, "compile", str(spec), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
            break
        time.sleep(0.002)
    assert proc.poll() is None, "compile ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.yaml", "model.onnx"]


# --- models from elsewhere --------------------------------------------------------------

def external_model(tmp_path: Path, location: str) -> Path:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    weight.data_location = TensorProto.EXTERNAL
    del weight.float_data[:]
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    folder = tmp_path / "models"
    folder.mkdir(exist_ok=True)
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../secret", "/etc/passwd", "sub/../../secret"])
def test_external_data_outside_folder_refused(tmp_path, capsys, location):
    from graphcnn.runtime import load_model

    (tmp_path / "secret").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    path = external_model(tmp_path, location)
    with pytest.raises(RunError, match="outside the model's folder"):
        load_model(path)
    code, err = run_main(capsys, "run", path)
    assert code == 1 and "outside" in err and "Traceback" not in err



def test_external_data_inside_folder_loads(tmp_path):
    from graphcnn.runtime import load_model

    path = external_model(tmp_path, "weights.bin")
    (path.parent / "weights.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    model = load_model(path)
    assert onnx.numpy_helper.to_array(model.graph.initializer[0]).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_model_refused(tmp_path, capsys, damage):
    spec = tmp_path / "small.yaml"
    spec.write_text(SMALL)
    path = tmp_path / "m.onnx"
    save_model(compile_spec(spec), path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(len(data)),
                      "empty": b""}[damage])
    code, err = run_main(capsys, "run", path)
    assert code == 1 and "m.onnx" in err and "Traceback" not in err


def test_streamed_and_external_saves_read_back(tmp_path, monkeypatch):
    """save_model streams tensors one by one (the file must still be one valid model), and
    past the protobuf limit writes external data; both load back to the same weights."""
    from graphcnn.lower import save
    from graphcnn.runtime import load_model

    spec = NetworkSpec.from_text(SMALL, "small.yaml")
    model = compile_spec(spec)
    save_model(model, tmp_path / "streamed.onnx")
    onnx.checker.check_model(str(tmp_path / "streamed.onnx"), full_check=True)
    assert onnx.load(str(tmp_path / "streamed.onnx")) == model
    monkeypatch.setattr(save, "PROTOBUF_LIMIT", 1000)
    (tmp_path / "ext").mkdir()
    save_model(compile_spec(spec), tmp_path / "ext" / "m.onnx")
    assert (tmp_path / "ext" / "m.onnx.data").exists()
    back = load_model(tmp_path / "ext" / "m.onnx")
    for ours, theirs in zip(model.graph.initializer, back.graph.initializer):
        assert np.array_equal(onnx.numpy_helper.to_array(ours), onnx.numpy_helper.to_array(theirs))


def test_model_whose_tensor_lies_about_its_size(tmp_path, capsys):
    """4 bytes of data declared as 10^9 floats: refused by the checker, nothing allocated."""
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[10 ** 9], raw_data=b"\0" * 4)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
    path = tmp_path / "lie.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
                     .SerializeToString())
    code, err = run_main(capsys, "run", path)
    assert code == 1 and "fails the ONNX checker" in err and "too small" in err
