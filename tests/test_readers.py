"""Every file graphcnn reads outside training goes through the checked reading layer: `run
--input` and `--calibrate` (graphcnn.checkpoints.arrays), ONNX models and their external
data (graphcnn.runtime.external). Each damaged, lying or hostile file ends in a GraphCnnError
naming the file (and the array or tensor), refused from headers and os.stat before anything
large is read or allocated; values are checked after their conversion."""
from __future__ import annotations

import io
import os
import struct
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphcnn.api import compile_spec
from graphcnn.checkpoints.arrays import Want, read_arrays, training_arrays
from graphcnn.errors import DataError, GraphCnnError, RunError
from graphcnn.lower.save import save_model
from graphcnn.spec import NetworkSpec

SMALL = """name: small
inputs: {x: [2, 16]}
nodes:
  - {id: conv, op: conv1d, channels: 4, kernel: 3, padding: same}
  - {op: relu}
  - {op: flatten}
  - {id: out, op: linear, features: 3}
"""
X = Want(("N", 2, 16))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "m.onnx"
    save_model(compile_spec(NetworkSpec.from_text(SMALL, "small.yaml")), path)
    return path


def run_main(capsys, *args) -> tuple[int, str, str]:
    from graphcnn.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(fn, *words, exc=GraphCnnError, seconds: float = 1.0, peak_mb: float = 10.0):
    """fn() raises `exc` naming every word, within `seconds`, allocating under `peak_mb`."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(exc) as info:
            fn()
        took = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    for word in words:
        assert word in str(info.value), str(info.value)
    assert took < seconds, f"{took:.2f} s"
    assert peak < peak_mb * 2 ** 20, f"peak {peak / 2 ** 20:.1f} MB"
    return info.value


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def lying_npy(shape, dtype="<f4", body: bytes = b"\0" * 16) -> bytes:
    """A .npy whose header declares `shape` over a few bytes of data."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + body


def npz_of(path: Path, members: dict[str, bytes], method=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name + ".npy", data)
    return path


# --- run --input ---------------------------------------------------------------------------


@pytest.mark.parametrize("content, words", [
    (b"", ["is empty"]),
    (b"PK\x03\x04" + b"\0" * 60, ["bad.npz"]),  # a zip's start, cut off
    (b"hello, not an array", ["neither an .npz nor a .npy"]),
])
def test_empty_truncated_not_a_zip(tmp_path, content, words):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    refused(lambda: read_arrays(path, {"x": X}, "--input", single="x"), "bad.npz", *words)


def test_truncated_npz_and_npy(tmp_path):
    good = npz_of(tmp_path / "good.npz", {"x": npy_bytes(np.ones((3, 2, 16), np.float32))})
    raw = good.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 30, 200):
        (tmp_path / "cut.npz").write_bytes(raw[:cut])
        refused(lambda: read_arrays(tmp_path / "cut.npz", {"x": X}, "--input"), "cut.npz")
    (tmp_path / "cut.npy").write_bytes(npy_bytes(np.ones((3, 2, 16), np.float32))[:-4])
    refused(lambda: read_arrays(tmp_path / "cut.npy", {"x": X}, "--input", single="x"),
            "cut.npy", "'x'", "declares shape [3, 2, 16]")


def test_npy_where_npz_is_expected(tmp_path):
    np.save(tmp_path / "d.npy", np.ones((4, 40), np.float32))
    refused(lambda: training_arrays(tmp_path / "d.npy"), "d.npy", "single .npy", "np.savez")


def test_npz_declaring_1e11_floats_refused_fast(tmp_path):
    """A 200-byte archive whose member declares 10^11 float32 (400 GB)."""
    path = npz_of(tmp_path / "huge.npz", {"x": lying_npy((10 ** 11,))})
    assert path.stat().st_size < 400
    refused(lambda: read_arrays(path, {"x": Want()}, "--input"), "huge.npz", "'x'",
            "100000000000")


def test_zip_sizes_that_lie_refused_before_inflating(tmp_path):
    """The central directory says a deflated member inflates to 400 GB."""
    path = npz_of(tmp_path / "z.npz", {"x": npy_bytes(np.zeros(1000, np.float32))},
                  zipfile.ZIP_DEFLATED)
    raw = bytearray(path.read_bytes())
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24:central + 28] = struct.pack("<I", 0xFFFFFFF0)  # uncompressed size
    path.write_bytes(bytes(raw))
    refused(lambda: read_arrays(path, {"x": Want()}, "--input"), "z.npz", "impossible")


def one_mb_and_an_extra_gib(path: Path) -> Path:
    """x: 1 MB of real data; big: a small member whose header declares (2**28,) float32."""
    return npz_of(path, {"x": npy_bytes(np.ones((8192, 2, 16), np.float32)),
                         "big": lying_npy((2 ** 28,))})


def test_extra_gib_array_refused_or_ignored_unread(tmp_path, model, capsys):
    path = one_mb_and_an_extra_gib(tmp_path / "extra.npz")
    refused(lambda: read_arrays(path, {"x": X}, "--input"), "extra.npz", "'big'",
            "nothing reads")
    # ignored (as --data ignores arrays it does not use): x read, big never opened
    data = one_mb_and_an_extra_gib(tmp_path / "data.npz")
    tracemalloc.start()
    arrays = read_arrays(data, {"x": X}, "--data", extra="ignore")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert list(arrays) == ["x"] and arrays["x"].shape == (8192, 2, 16)
    assert peak < 4 * 2 ** 20
    # expected, it is refused from its header: 1 GiB declared, 16 bytes held
    refused(lambda: read_arrays(path, {"x": X, "big": Want()}, "--input"), "'big'",
            "1073741824 bytes")
    code, _, err = run_main(capsys, "run", model, "--input", path)
    assert code == 1 and "extra.npz" in err and "'big'" in err and "Traceback" not in err


def test_input_npy_declaring_4_tib(tmp_path, model, capsys):
    path = tmp_path / "four.npy"
    path.write_bytes(lying_npy((2 ** 40, 1, 1), "<f4"))
    refused(lambda: read_arrays(path, {"x": Want(("N", 1, 1))}, "--input", single="x"),
            "four.npy", "4398046511104 bytes")
    code, _, err = run_main(capsys, "run", model, "--input", path)
    assert code == 1 and "four.npy" in err and "Traceback" not in err


def test_npy_header_length_is_bounded(tmp_path):
    """numpy would read (and allocate) a 4 GB header before checking its length."""
    path = tmp_path / "h.npy"
    path.write_bytes(b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFFFFF0) + b"{")
    refused(lambda: read_arrays(path, {"x": Want()}, "--input", single="x"), "h.npy",
            "header")


@pytest.mark.parametrize("array, words", [
    (np.array([[1e300] * 16] * 2), ["overflow float32", "1e+300"]),
    (np.ones((2, 16), np.complex64), ["complex64", "imaginary"]),
    (np.array([["a"] * 16] * 2), ["<U1"]),
    (np.full((2, 16), 2 ** 40, np.int64), ["cannot hold exactly"]),
])
def test_values_checked_after_conversion(tmp_path, model, capsys, array, words):
    np.savez(tmp_path / "bad.npz", x=array[None])
    refused(lambda: read_arrays(tmp_path / "bad.npz", {"x": X}, "--input"), "bad.npz", "'x'",
            *words, exc=DataError)
    code, out, err = run_main(capsys, "run", model, "--input", tmp_path / "bad.npz")
    assert code == 1 and "bad.npz" in err and "'x'" in err and "Traceback" not in err
    assert words[0] in err


def test_object_arrays_refused(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}, None], dtype=object))
    refused(lambda: read_arrays(tmp_path / "o.npz", {"x": Want()}, "--input"), "o.npz",
            "object arrays")


def test_good_inputs_run_and_integers_convert_with_a_note(tmp_path, model, capsys):
    np.save(tmp_path / "f.npy", np.ones((3, 2, 16)))  # float64: converted silently
    code, out, _ = run_main(capsys, "run", model, "--input", tmp_path / "f.npy")
    assert code == 0 and "out: shape [3, 3], dtype float32" in out
    np.savez(tmp_path / "i.npz", x=np.arange(64, dtype=np.int64).reshape(2, 2, 16))
    code, out, _ = run_main(capsys, "run", model, "--input", tmp_path / "i.npz")
    assert code == 0 and "converted from int64 to float32" in out


def test_inputs_named_and_shaped_as_the_model(tmp_path, model, capsys):
    np.savez(tmp_path / "y.npz", y=np.ones((1, 2, 16), np.float32))
    code, _, err = run_main(capsys, "run", model, "--input", tmp_path / "y.npz")
    assert code == 1 and "has no array 'x'" in err
    np.save(tmp_path / "s.npy", np.ones((1, 3, 16), np.float32))
    code, _, err = run_main(capsys, "run", model, "--input", tmp_path / "s.npy")
    assert code == 1 and "has shape [1, 3, 16]" in err and "[N, 2, 16]" in err
    code, _, err = run_main(capsys, "run", model, "--input", tmp_path)
    assert code == 1 and "folder" in err


def test_calibration_data_through_the_layer(tmp_path):
    from graphcnn.deploy.quantize import calibration_data

    m = compile_spec(NetworkSpec.from_text(SMALL, "small.yaml"))
    np.save(tmp_path / "c.npy", np.ones((100, 2, 16)))
    assert calibration_data(str(tmp_path / "c.npy"), m).shape == (64, 2, 16)
    np.savez(tmp_path / "c.npz", a=np.ones((5, 2, 16)), x=np.ones((3, 2, 16), np.float16))
    assert calibration_data(str(tmp_path / "c.npz"), m).dtype == np.float32
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04junk")
    refused(lambda: calibration_data(str(tmp_path / "bad.npz"), m), "--calibrate", "bad.npz")
    np.savez(tmp_path / "big.npz", x=np.full((2, 2, 16), 1e300))
    refused(lambda: calibration_data(str(tmp_path / "big.npz"), m), "'x'", "overflow")


# --- ONNX models and their external data ---------------------------------------------------


def external_model(folder: Path, location: str, dims=(4,), fields=None) -> Path:
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=list(dims),
                         data_location=TensorProto.EXTERNAL)
    for key, value in {"location": location, "offset": "0", "length": "16",
                       **(fields or {})}.items():
        if value is not None:
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                              [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    folder.mkdir(exist_ok=True)
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_loads(tmp_path):
    from graphcnn.runtime import load_model

    path = external_model(tmp_path / "m", "w.bin")
    (path.parent / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    model = load_model(path)
    assert onnx.numpy_helper.to_array(model.graph.initializer[0]).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("location, words", [
    ("w\0.bin", ["NUL"]),
    ("/etc/passwd", ["outside the model's folder"]),
    ("../w.bin", ["outside the model's folder"]),
    ("sub/../w.bin", ["outside the model's folder"]),
    ("loop", ["Too many levels of symbolic links"]),
    ("out", ["outside the model's folder"]),  # a symlink leading out
    ("missing.bin", ["cannot be opened"]),
    ("sub", ["not a regular file"]),
    ("", ["empty"]),
])
def test_external_locations_refused(tmp_path, capsys, location, words):
    from graphcnn.runtime import load_model

    (tmp_path / "w.bin").write_bytes(b"\0" * 16)
    path = external_model(tmp_path / "m", location)
    (path.parent / "sub").mkdir()
    (path.parent / "w.bin").write_bytes(b"\0" * 16)
    os.symlink("loop2", path.parent / "loop")
    os.symlink("loop", path.parent / "loop2")
    os.symlink(tmp_path / "w.bin", path.parent / "out")
    refused(lambda: load_model(path), "m.onnx", "tensor 'w'", *words, exc=RunError)
    code, _, err = run_main(capsys, "run", path)
    assert code == 1 and "m.onnx" in err and "Traceback" not in err


@pytest.mark.parametrize("fields, words", [
    ({"length": "32"}, ["bytes [0, 32)", "holds 16"]),
    ({"offset": "8"}, ["bytes [8, 24)"]),
    ({"length": "8"}, ["dims [4] (16 bytes)", "is 8 bytes"]),
    ({"length": "-1"}, ["length '-1'"]),
    ({"offset": "x"}, ["offset 'x'"]),
])
def test_external_spans_refused(tmp_path, fields, words):
    from graphcnn.runtime import load_model

    path = external_model(tmp_path / "m", "w.bin", fields=fields)
    (path.parent / "w.bin").write_bytes(b"\0" * 16)
    refused(lambda: load_model(path), "m.onnx", "tensor 'w'", *words, exc=RunError)


@pytest.mark.parametrize("fields, dims, words", [
    ({"length": str(4 * 2 ** 30)}, (4,), ["holds 3221225472"]),     # beyond the file
    ({"length": None}, (4,), ["is 3221225472 bytes"]),              # to its end: 3 GB
    ({"length": str(3 * 2 ** 30)}, (2 ** 20,), ["4194304 bytes"]),  # dims disagree
])
def test_sparse_3gb_external_data_refused_unread(tmp_path, capsys, fields, dims, words):
    from graphcnn.runtime import load_model

    path = external_model(tmp_path / "m", "w.bin", dims, fields)
    with open(path.parent / "w.bin", "wb") as f:
        f.truncate(3 * 2 ** 30)  # sparse: no disk used
    refused(lambda: load_model(path), "m.onnx", "tensor 'w'", *words, exc=RunError)
    code, _, err = run_main(capsys, "run", path)
    assert code == 1 and "m.onnx" in err and "Traceback" not in err


@pytest.mark.parametrize("make", ["folder", "empty", "fifo"])
def test_model_paths_that_are_not_models(tmp_path, capsys, make):
    from graphcnn.runtime import load_model

    path = tmp_path / "m.onnx"
    {"folder": path.mkdir, "empty": path.touch, "fifo": lambda: os.mkfifo(path)}[make]()
    refused(lambda: load_model(path), "m.onnx", exc=RunError)
    code, _, err = run_main(capsys, "run", path)
    assert code == 1 and "m.onnx" in err and "Traceback" not in err
