"""Hardening, round three: what a sweep of hostile model and weight files found. Each case
failed before its fix (a hang, a 24 GB allocation from a 1.6 KB file, a traceback, an output
silently dropped, a difference reported as none); docs/reliability.md lists them."""
from __future__ import annotations

import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import SPECS
from graphcnn.checkpoints import read_checkpoint
from graphcnn.cli import main
from graphcnn.errors import DataError
from graphcnn.workbench.diff import tensor_diff


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.onnx"
    assert main(["compile", str(SPECS / "mnist1d_cnn.yaml"), "-o", str(path)]) == 0
    return path


def test_pth_with_shared_dicts_refused_quickly(capsys, tmp_path, model):
    """30 levels of {'a': d, 'b': d} in 2 KB name 2^30 tensors: before, `run --weights` grew
    past 437 MB and never ended."""
    torch = pytest.importorskip("torch")
    d = {"t": torch.zeros(1)}
    for _ in range(30):
        d = {"a": d, "b": d}
    torch.save(d, tmp_path / "expo.pth")
    code, _, err = cli(capsys, "run", model, "--weights", tmp_path / "expo.pth")
    assert code == 1 and "names more than 100,000 values" in err, err


def test_pth_broadcast_view_refused_from_the_pickle(tmp_path):
    """expand(40000, 40000) of one float: 1.6 KB on disk, 6.4 GB read (diff was killed)."""
    torch = pytest.importorskip("torch")
    torch.save({"big": torch.zeros(1).expand(40000, 40000),
                "row": torch.arange(4.0).expand(3, 4)}, tmp_path / "b.pth")
    with pytest.raises(DataError, match=r"repeats the 4 bytes of storage '0' into "
                                        r"6,400,000,000 bytes"):
        read_checkpoint(tmp_path / "b.pth")
    torch.save({"row": torch.arange(4.0).expand(3, 4)}, tmp_path / "small.pth")
    got = read_checkpoint(tmp_path / "small.pth").entries["row"].read()
    np.testing.assert_array_equal(got, np.tile(np.arange(4.0, dtype=np.float32), (3, 1)))


def with_metadata(model_path, tmp_path, key: str, value: str):
    m = onnx.load(str(model_path))
    kept = {p.key: p.value for p in m.metadata_props if p.key != key}
    del m.metadata_props[:]
    helper.set_model_props(m, {**kept, key: value})
    path = tmp_path / "meta.onnx"
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize("value", ["a=b=c", "N", "N=abc", "N=-5", "N=0"])
def test_malformed_dynamic_metadata(capsys, tmp_path, model, value):
    path = with_metadata(model, tmp_path, "graphcnn_dynamic", value)
    for command in (["run"], ["bench", "--batches", "1", "--repeat", "1"]):
        code, _, err = cli(capsys, *command, path)
        assert code == 1 and f"{path}: the model's graphcnn_dynamic metadata is malformed" in err
        assert "Traceback" not in err


@pytest.mark.parametrize("key", ["graphcnn.preprocess", "graphcnn.labels"])
def test_deeply_nested_metadata_json(capsys, tmp_path, key):
    """Before: a RecursionError traceback from json.loads."""
    assert main(["compile", str(SPECS / "digits_cnn.yaml"), "-o", str(tmp_path / "d.onnx")]) == 0
    path = with_metadata(tmp_path / "d.onnx", tmp_path, key, "[" * 100_000 + "]" * 100_000)
    Image = pytest.importorskip("PIL.Image")
    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    code, _, err = cli(capsys, "predict", path, tmp_path / "x.png")
    assert code == 1 and "metadata is" in err and str(path) in err, err
    (tmp_path / "imgs").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "imgs" / "x.png")
    code, _, err = cli(capsys, "predict", path, "--data", tmp_path / "imgs", "--out",
                       tmp_path / "rows.csv")
    assert code == 1 and "metadata is" in err and f"{path}: " in err, err


def test_outputs_named_as_savez_keywords_are_all_written(capsys, tmp_path):
    """Before: an output named 'file' was a TypeError; one named 'allow_pickle' was dropped."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in
            ("file", "allow_pickle", "z")]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["file"]),
                               helper.make_node("Neg", ["x"], ["allow_pickle"]),
                               helper.make_node("Abs", ["x"], ["z"])], "g", [x], outs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "o.onnx"))
    code, _, err = cli(capsys, "run", tmp_path / "o.onnx", "--output", tmp_path / "o.npz")
    assert code == 0, err
    assert sorted(np.load(tmp_path / "o.npz").files) == ["allow_pickle", "file", "z"]
    code, _, err = cli(capsys, "run", tmp_path / "o.onnx", "--output", tmp_path / "o.txt")
    assert code == 1 and "--output writes .npy (one output) or .npz" in err, err


def test_diff_sees_complex_and_infinite_gaps():
    a, b = np.full(15, 1 + 5j, np.complex64), np.full(15, 1 + 1j, np.complex64)
    assert tensor_diff("c", a, b).max_abs == 4.0  # before: 0, the imaginary parts dropped
    inf = tensor_diff("t", np.array([np.inf, 1], np.float32), np.array([0, 1], np.float32))
    assert inf.max_abs == np.inf and inf.max_rel == np.inf  # before: 1.798e308 and 0
    same = tensor_diff("t", np.array([np.inf, 1], np.float32), np.array([np.inf, 1], np.float32))
    assert same.max_abs == 0.0


def test_npz_with_a_member_twice_is_refused(capsys, tmp_path, model):
    path = tmp_path / "dup.npz"
    with zipfile.ZipFile(path, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        for value in (1.0, 2.0):
            with zf.open("x.npy", "w") as member:
                np.lib.format.write_array(member, np.full((1, 1, 40), value, np.float32))
    with pytest.raises(DataError, match="array 'x' appears twice"):
        read_checkpoint(path)
    code, _, err = cli(capsys, "run", model, "--input", path)
    assert code == 1 and "appears twice" in err, err


def test_a_new_output_gets_the_usual_permissions_whatever_its_writer_chose(tmp_path):
    """onnx writes external data (models past 2 GiB) as 0600, beside a 0644 model."""
    import os
    import stat

    from graphcnn.fileio import write_atomic

    def private(tmp):
        tmp.write_bytes(b"weights")
        os.chmod(tmp, 0o600)

    write_atomic(tmp_path / "m.onnx.data", private)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "m.onnx.data").stat().st_mode) == 0o666 & ~umask


def test_a_swallowed_interrupt_still_stops_before_publishing(capsys, tmp_path, monkeypatch):
    """Ctrl-C whose KeyboardInterrupt Python swallowed ("Exception ignored in: <function
    _get_module_lock...>" when it landed in an import's callback): compile went on and
    replaced the output, exit 0. The handler's note now stops the rename and the exit."""
    import signal

    import graphcnn.lower.save as save
    from graphcnn.fileio import note_stop

    checked = save.full_check

    def check_then_swallowed_interrupt(*args, **kwargs):
        checked(*args, **kwargs)
        note_stop(signal.SIGINT)  # what the handler does before its exception is lost

    monkeypatch.setattr(save, "full_check", check_then_swallowed_interrupt)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    code, _, err = cli(capsys, "compile", SPECS / "mnist1d_cnn.yaml", "-o", out)
    assert code == 130 and "interrupted; no output was changed" in err, err
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
