"""graphcnn.checkpoints: torch.save files (zip and legacy), safetensors and npz read without torch
and without running pickled code; written back so that torch and safetensors read them; every
hostile or broken file refused with a DataError from its headers, fast and without allocating.

torch is the oracle only: the tests that need it skip when it is not installed."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from graphcnn.checkpoints import (Checkpoint, Entry, format_for, read_checkpoint,
                                  write_checkpoint)
from graphcnn.checkpoints import torchsave as ts
from graphcnn.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ["zip", "legacy"]
LEGACY_HEAD = (b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."  # the magic number
               b"\x80\x02M\xe9\x03."  # protocol 1001
               b"\x80\x02}X\x0d\x00\x00\x00little_endianq\x00\x88s.")


# ---------------------------------------------------------------- helpers


def _save(obj, path: Path, fmt: str) -> Path:
    import torch

    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def _np(t) -> np.ndarray:
    """A torch tensor as numpy, bfloat16 as ml_dtypes.bfloat16."""
    import torch

    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
        a.view(np.uint8) if a.dtype.kind == "V" else a, b.view(np.uint8) if b.dtype.kind == "V"
        else b, equal_nan=a.dtype.kind == "f")


def _arrays(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    return {name: entry.read() for name, entry in ckpt.entries.items()}


def _torch_zip(path: Path, pkl: bytes, records: dict[str, bytes] | None = None) -> Path:
    """A zip laid out as torch.save's around a pickle the test wrote."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pkl)
        for name, data in (records or {}).items():
            zf.writestr(f"archive/{name}", data)
        zf.writestr("archive/version", "3\n")
    return path


def _legacy(path: Path, pkl: bytes, keys: bytes = b"\x80\x02].", data: bytes = b"") -> Path:
    path.write_bytes(LEGACY_HEAD + pkl + keys + data)
    return path


def _tensor_pkl(storage_cls: str, key: str, numel: int, offset: int, shape, stride) -> bytes:
    """Pickle opcodes of one _rebuild_tensor_v2 call, as torch.save writes it."""
    storage = ts._tuple([ts._str("storage"), ts._global("torch", storage_cls), ts._str(key),
                         ts._str("cpu"), ts._int(numel)]) + b"Q"
    args = [storage, ts._int(offset), ts._tuple([ts._int(n) for n in shape]),
            ts._tuple([ts._int(n) for n in stride]), b"\x89", ts._ordered_dict()]
    return ts._global("torch._utils", "_rebuild_tensor_v2") + b"(" + b"".join(args) + b"tR"


def _f32(key: str, numel: int, offset: int, shape, stride) -> bytes:
    return _tensor_pkl("FloatStorage", key, numel, offset, shape, stride)


def _dict_pkl(items: dict[str, bytes]) -> bytes:
    body = b"".join(ts._str(k) + v for k, v in items.items())
    return b"\x80\x02}(" + body + b"u."


def _raises(fn, *words):
    with pytest.raises(DataError) as err:
        fn()
    for word in words:
        assert word in str(err.value), str(err.value)
    return err.value


# ---------------------------------------------------------------- torch.save'd files


@pytest.mark.parametrize("fmt", FORMATS)
def test_torch_dtypes_read_equal(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    sd = {"f32": torch.randn(3, 4, generator=g), "f16": torch.randn(5, generator=g).half(),
          "bf16": torch.randn(2, 3, generator=g).bfloat16(),
          "f64": torch.randn(4, generator=g).double(),
          "i64": torch.arange(-3, 3), "i32": torch.arange(4, dtype=torch.int32),
          "i8": torch.tensor([-2, 7], dtype=torch.int8),
          "u8": torch.tensor([1, 255], dtype=torch.uint8),
          "bool": torch.tensor([True, False]), "scalar": torch.tensor(2.5),
          "empty": torch.zeros(0, 3)}
    ckpt = read_checkpoint(_save(sd, tmp_path / "w.pth", fmt))
    assert ckpt.format == f"torch-{fmt}"
    assert (ckpt.container, ckpt.prefix, ckpt.ignored) == (None, None, [])
    assert list(ckpt.entries) == list(sd)
    names = {k: e.dtype for k, e in ckpt.entries.items()}
    assert names == {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64",
                     "i64": "int64", "i32": "int32", "i8": "int8", "u8": "uint8", "bool": "bool",
                     "scalar": "float32", "empty": "float32"}
    for name, t in sd.items():
        entry = ckpt.entries[name]
        assert entry.shape == tuple(t.shape) and entry.nbytes == t.numel() * t.element_size()
        assert _same(entry.read(), _np(t)), name
    assert ckpt.entries["bf16"].read_float32().dtype == np.float32
    assert np.array_equal(ckpt.entries["bf16"].read_float32(), sd["bf16"].float().numpy())


@pytest.mark.parametrize("fmt", FORMATS)
def test_strided_views_and_shared_storage(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    base = torch.arange(24, dtype=torch.float32)
    sd = {"t": base[:12].reshape(3, 4).t(),          # transposed: strides (1, 4)
          "tail": base[12:20],                       # same storage, offset 12
          "step": base[::5],                         # stride 5
          "wide": base[2:14].reshape(2, 6)[:, 1:4],  # a window of rows
          "own": torch.ones(2)}
    ckpt = read_checkpoint(_save(sd, tmp_path / "v.pth", fmt))
    for name, t in sd.items():
        got = ckpt.entries[name].read()
        assert got.flags.c_contiguous and _same(got, _np(t)), name


@pytest.mark.parametrize("fmt", FORMATS)
def test_state_dict_under_a_key_beside_training_state(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    sd = model.state_dict()  # carries _metadata (a BUILD) and a 0-d int64 num_batches_tracked
    ckpt_obj = {"epoch": 3, "state_dict": sd, "lr": 0.1, "name": "run",
                "hyper": {"tags": {"a", "b"}, "blob": b"\x00\xff", "none": None}}
    ckpt = read_checkpoint(_save(ckpt_obj, tmp_path / "c.pth", fmt))
    assert ckpt.container == "state_dict" and ckpt.prefix is None
    assert ckpt.ignored == ["epoch", "lr", "name", "hyper"]
    assert list(ckpt.entries) == list(sd)
    assert ckpt.entries["1.num_batches_tracked"].shape == ()
    for name, t in sd.items():
        assert _same(ckpt.entries[name].read(), _np(t)), name


@pytest.mark.parametrize("fmt", FORMATS)
def test_dataparallel_prefix_and_parameters(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    sd = {"module.conv.weight": torch.nn.Parameter(torch.randn(2, 1, 3, 3)),
          "module.conv.bias": torch.zeros(2)}
    ckpt = read_checkpoint(_save(sd, tmp_path / "p.pth", fmt))
    assert ckpt.prefix == "module." and list(ckpt.entries) == ["conv.weight", "conv.bias"]
    assert ckpt.entries["conv.weight"].name == "conv.weight"
    assert _same(ckpt.entries["conv.weight"].read(), _np(sd["module.conv.weight"]))


def test_lightning_model_prefix_and_nested_dicts(tmp_path):
    torch = pytest.importorskip("torch")
    obj = {"global_step": 10, "state_dict": {"model.backbone": {"conv.weight": torch.ones(2)},
                                             "model.head.bias": torch.zeros(1), "model.note": "x"}}
    ckpt = read_checkpoint(_save(obj, tmp_path / "l.ckpt", "zip"))
    assert (ckpt.container, ckpt.prefix) == ("state_dict", "model.")
    assert list(ckpt.entries) == ["backbone.conv.weight", "head.bias"]
    assert ckpt.ignored == ["global_step", "model.note"]


def test_rarer_dtypes_through_untyped_storage(tmp_path):
    torch = pytest.importorskip("torch")
    sd = {"u16": torch.arange(5).to(torch.uint16), "c64": torch.tensor([1 + 2j]),
          "f8": torch.ones(3).to(torch.float8_e4m3fn)}
    ckpt = read_checkpoint(_save(sd, tmp_path / "r.pth", "zip"))
    assert {k: e.dtype for k, e in ckpt.entries.items()} == {
        "u16": "uint16", "c64": "complex64", "f8": "float8_e4m3fn"}
    assert np.array_equal(ckpt.entries["u16"].read(), np.arange(5, dtype=np.uint16))
    assert ckpt.entries["c64"].read()[0] == 1 + 2j
    assert np.array_equal(ckpt.entries["f8"].read_float32(), np.ones(3, np.float32))


def test_safetensors_from_torch_and_numpy(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file as save_np
    from safetensors.torch import save_file as save_torch

    sd = {"a": torch.randn(2, 3), "b": torch.randn(4).bfloat16(), "c": torch.randn(2).half(),
          "i": torch.arange(3), "flag": torch.tensor([True])}
    save_torch(sd, tmp_path / "t.safetensors", metadata={"format": "pt"})
    ckpt = read_checkpoint(tmp_path / "t.safetensors")
    assert ckpt.format == "safetensors" and set(ckpt.entries) == set(sd)
    for name, t in sd.items():
        assert _same(ckpt.entries[name].read(), _np(t)), name
    arrays = {k: _np(t) for k, t in sd.items()}
    save_np(arrays, tmp_path / "n.safetensors")
    got = _arrays(read_checkpoint(tmp_path / "n.safetensors"))
    assert got.keys() == arrays.keys() and all(_same(a, arrays[k]) for k, a in got.items())


def test_read_without_torch_importable(tmp_path):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(1)
    sd = {"w": torch.randn(4, 3, generator=g).t(), "h": torch.randn(3, generator=g).bfloat16(),
          "n": torch.tensor(7)}
    files = [_save({"state_dict": sd, "epoch": 1}, tmp_path / f"{f}.pth", f) for f in FORMATS]
    script = ("import sys; sys.modules['torch'] = None\n"
              "import numpy as np\nfrom graphcnn.checkpoints import read_checkpoint\n"
              "for p in sys.argv[1:]:\n"
              "    c = read_checkpoint(p)\n"
              "    assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
              "    raw = {k: e.read().reshape(-1).view(np.uint8) for k, e in c.entries.items()}\n"
              "    np.savez(p + '.out.npz', **raw)\n")
    subprocess.run([sys.executable, "-c", script, *map(str, files)], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    for f in files:
        got = np.load(str(f) + ".out.npz")
        assert set(got.files) == set(sd)
        for name, t in sd.items():
            assert np.array_equal(got[name], _np(t).reshape(-1).view(np.uint8)), name


# ---------------------------------------------------------------- writing


def _sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "half": rng.standard_normal(5).astype(np.float16),
            "double": np.array(1.5), "count": np.arange(-2, 3, dtype=np.int64),
            "mask": np.array([[True, False]]), "empty": np.zeros((0, 2), np.float32),
            "t": np.arange(6, dtype=np.float32).reshape(2, 3).T,   # not C-contiguous
            "file": np.ones(2, ">f4")}                             # big-endian; np.savez kwarg name


@pytest.mark.parametrize("fmt,suffix", [("npz", ".npz"), ("safetensors", ".safetensors"),
                                        ("torch-zip", ".pth")])
def test_round_trip(tmp_path, fmt, suffix):
    arrays = _sample()
    if fmt != "npz":
        arrays["bf"] = np.array([1.5, -2.0], ml_dtypes.bfloat16)
    path = tmp_path / ("w" + suffix)
    assert format_for(path) == fmt
    write_checkpoint(path, arrays, fmt)
    ckpt = read_checkpoint(path)
    assert ckpt.format == fmt and set(ckpt.entries) == set(arrays)
    for name, a in arrays.items():
        assert _same(ckpt.entries[name].read(), np.asarray(a, a.dtype.newbyteorder("="))), name


def test_written_path_and_format_are_the_callers(tmp_path):
    # write_atomic hands over a temporary name: the format comes from fmt, not the suffix
    path = tmp_path / "out.pth.tmp123"
    write_checkpoint(path, {"a": np.ones(2, np.float32)}, "safetensors")
    assert read_checkpoint(path).format == "safetensors"


def test_torch_zip_we_write_loads_in_torch(tmp_path):
    torch = pytest.importorskip("torch")
    arrays = {**_sample(), "bf": np.array([1.5, -2.0, 3.0], ml_dtypes.bfloat16),
              "u16": np.arange(3, dtype=np.uint16)}
    path = tmp_path / "ours.pth"
    write_checkpoint(path, arrays, "torch-zip")
    for mmap in (False, True):
        loaded = torch.load(path, weights_only=True, mmap=mmap)
        assert type(loaded).__name__ == "OrderedDict" and list(loaded) == list(arrays)
        for name, a in arrays.items():
            assert _same(_np(loaded[name]), np.asarray(a, a.dtype.newbyteorder("="))), name
    assert loaded["bf"].dtype == torch.bfloat16 and loaded["half"].dtype == torch.float16


def test_torch_zip_layout_matches_torch(tmp_path):
    path = tmp_path / "ours.pth"
    write_checkpoint(path, {"a": np.ones(3, np.float32), "b": np.zeros(5, np.int64)}, "torch-zip")
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == [
            "archive/data.pkl", "archive/.format_version", "archive/.storage_alignment",
            "archive/byteorder", "archive/data/0", "archive/data/1", "archive/version",
            "archive/.data/serialization_id"]
        assert zf.read("archive/byteorder") == b"little" and zf.read("archive/version") == b"3\n"
    for info in infos:
        assert info.compress_type == zipfile.ZIP_STORED
        at = info.header_offset
        name_len, extra_len = struct.unpack("<HH", raw[at + 26:at + 30])
        assert (at + 30 + name_len + extra_len) % 64 == 0, info.filename


def test_write_refusals(tmp_path):
    _raises(lambda: format_for(tmp_path / "w.onnx"), ".npz", ".safetensors", ".pth")
    _raises(lambda: write_checkpoint(tmp_path / "w", {"a": np.ones(1)}, "pickle"), "pickle")
    _raises(lambda: write_checkpoint(tmp_path / "w.npz", {"a": np.array([object()])}, "npz"), "'a'")
    _raises(lambda: write_checkpoint(tmp_path / "w.npz", {"b": np.ones(2, ml_dtypes.bfloat16)},
                                     "npz"), "'b'", "safetensors")
    _raises(lambda: write_checkpoint(tmp_path / "missing" / "w.pth", {"a": np.ones(1)},
                                     "torch-zip"), "could not write")


# ---------------------------------------------------------------- no code is run

PAYLOADS = {"os.system": (b"cos\nsystem\n", "touch {}"),
            "builtins.eval": (b"cbuiltins\neval\n", "open({!r}, 'w')"),
            "subprocess.Popen": (b"csubprocess\nPopen\n", None)}


def _payload(kind: str, pwned: Path) -> bytes:
    """Opcodes that, unpickled by pickle.load, create `pwned`."""
    glob, template = PAYLOADS[kind]
    arg = (ts._str(template.format(str(pwned))) if template else
           ts._tuple([ts._str("touch"), ts._str(str(pwned))]))
    return glob + ts._tuple([arg]) + b"R"


def test_the_payload_is_real(tmp_path):
    import pickle

    pickle.loads(b"\x80\x02" + _payload("os.system", tmp_path / "pwned") + b".")
    assert (tmp_path / "pwned").exists()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_malicious_pickle_refused(tmp_path, fmt, kind):
    pwned = tmp_path / "pwned"
    good = _f32("0", 2, 0, (2,), (1,))
    pkl = _dict_pkl({"w": good, "evil": _payload(kind, pwned)})
    path = (_torch_zip(tmp_path / "e.pth", pkl, {"data/0": b"\0" * 8}) if fmt == "zip"
            else _legacy(tmp_path / "e.pth", pkl))
    _raises(lambda: read_checkpoint(path), f"refused to load '{kind}'", str(path), "no code is run")
    time.sleep(0.05 if kind == "subprocess.Popen" else 0)
    assert not pwned.exists()


def test_malicious_first_pickle_of_legacy_file(tmp_path):
    pwned = tmp_path / "pwned"
    path = tmp_path / "e.pth"
    path.write_bytes(b"\x80\x02" + _payload("os.system", pwned) + b".")
    _raises(lambda: read_checkpoint(path), "refused to load 'os.system'")
    assert not pwned.exists()


def test_memo_index_bomb_refused_fast(tmp_path):
    # LONG_BINPUT 2**31 would make the unpickler size its memo for 2**31 entries
    pkl = b"\x80\x02}r" + struct.pack("<I", 2 ** 31) + b"."
    path = _torch_zip(tmp_path / "m.pth", pkl)
    _raises(lambda: read_checkpoint(path), "memo index")


# ---------------------------------------------------------------- broken and lying files


def test_empty_random_and_npy_files(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    _raises(lambda: read_checkpoint(tmp_path / "empty.pth"), "empty")
    (tmp_path / "noise.bin").write_bytes(np.random.default_rng(0).bytes(300))
    _raises(lambda: read_checkpoint(tmp_path / "noise.bin"), "not a checkpoint format",
            ".safetensors")
    np.save(tmp_path / "a.npy", np.ones(3))
    os.replace(tmp_path / "a.npy", tmp_path / "a.npz")
    _raises(lambda: read_checkpoint(tmp_path / "a.npz"), "single .npy")
    _raises(lambda: read_checkpoint(tmp_path / "absent.pth"), "no checkpoint file")
    _raises(lambda: read_checkpoint(tmp_path), "folder")


def test_plain_pickle_is_not_a_torch_file(tmp_path):
    import pickle

    (tmp_path / "p.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    _raises(lambda: read_checkpoint(tmp_path / "p.pkl"), "not a checkpoint format")


def test_truncated_files(tmp_path):
    path = tmp_path / "w.pth"
    write_checkpoint(path, {"a": np.ones(1000, np.float32)}, "torch-zip")
    raw = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(raw[: len(raw) // 2])
    _raises(lambda: read_checkpoint(tmp_path / "cut.pth"), "cut.pth")
    legacy = _legacy(tmp_path / "l.pth", _dict_pkl({"a": _f32("k", 4, 0, (4,), (1,))}),
                     b"\x80\x02]X\x01\x00\x00\x00ka.",
                     struct.pack("<q", 4) + b"\0" * 10)
    _raises(lambda: read_checkpoint(legacy), "truncated")
    st = tmp_path / "w.safetensors"
    write_checkpoint(st, {"a": np.ones(100, np.float32)}, "safetensors")
    st.write_bytes(st.read_bytes()[:-8])
    _raises(lambda: read_checkpoint(st), "'a'")


def test_zip_without_data_pkl_or_npy(tmp_path):
    with zipfile.ZipFile(tmp_path / "z.pth", "w") as zf:
        zf.writestr("notes.txt", "hello")
    _raises(lambda: read_checkpoint(tmp_path / "z.pth"), "neither", "data.pkl")


def test_no_tensors_where_tensors_should_be(tmp_path):
    import pickle

    path = _torch_zip(tmp_path / "s.pth", pickle.dumps({"a": "x", "b": "y"}, protocol=2))
    _raises(lambda: read_checkpoint(path), "no named tensors", "keys a, b")
    one = _torch_zip(tmp_path / "t.pth", b"\x80\x02" + _f32("0", 1, 0, (1,), (1,)) + b".",
                     {"data/0": b"\0" * 4})
    _raises(lambda: read_checkpoint(one), "a single tensor")


def test_storage_sizes_checked_before_reading(tmp_path):
    # the pickle declares 10**11 floats in a 40-byte record: refused from the zip's directory
    lying = _dict_pkl({"w": _f32("0", 10 ** 11, 0, (10 ** 11,), (1,))})
    big = _torch_zip(tmp_path / "b.pth", lying, {"data/0": b"\0" * 40})
    _raises(lambda: read_checkpoint(big), "data/0", "holds 40 bytes")
    # a view reaching past its (honest) storage
    past = _torch_zip(tmp_path / "p.pth", _dict_pkl({"w": _f32("0", 10, 4, (3, 3), (3, 1))}),
                      {"data/0": b"\0" * 40})
    _raises(lambda: read_checkpoint(past), "reaches byte 52", "40 bytes")
    absent = _torch_zip(tmp_path / "a.pth", _dict_pkl({"w": _f32("9", 1, 0, (1,), (1,))}))
    _raises(lambda: read_checkpoint(absent), "no record archive/data/9")


def _safetensors(path: Path, header: dict, data: bytes, length: int | None = None) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


@pytest.mark.parametrize("header,words", [
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, ["[0, 16) of 8"]),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, ["overlap"]),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, ["needs 12"]),
    ({"a": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}, ["F99"]),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, ["non-negative"]),
    ({"a": 5}, ["lacks dtype"]),
])
def test_safetensors_header_lies(tmp_path, header, words):
    path = _safetensors(tmp_path / "h.safetensors", header, b"\0" * 8)
    _raises(lambda: read_checkpoint(path), *words)


def test_safetensors_bad_lengths_and_json(tmp_path):
    huge = _safetensors(tmp_path / "h.safetensors", {}, b"", length=2 ** 40)
    start = time.perf_counter()
    _raises(lambda: read_checkpoint(huge), str(2 ** 40))
    assert time.perf_counter() - start < 1
    bad = tmp_path / "j.safetensors"
    bad.write_bytes(struct.pack("<Q", 5) + b"{oops")
    _raises(lambda: read_checkpoint(bad), "not valid JSON")


def test_lying_npz_refused_fast_without_allocating(tmp_path):
    header = {"descr": "<f4", "fortran_order": False, "shape": (100000, 1000000)}
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    path = tmp_path / "big.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("w.npy", member.getvalue() + b"\0" * 16)
    assert path.stat().st_size < 400
    tracemalloc.start()
    start = time.perf_counter()
    try:
        _raises(lambda: read_checkpoint(path), "'w'", "shape [100000, 1000000]")
        elapsed, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1 and peak < 10 * 2 ** 20


def test_npz_object_arrays_refused(tmp_path):
    np.savez(tmp_path / "o.npz", a=np.array([{"x": 1}], dtype=object))
    _raises(lambda: read_checkpoint(tmp_path / "o.npz"), "object arrays")


# ---------------------------------------------------------------- containers and keys


def test_conventional_keys_and_key_argument(tmp_path):
    def weights(key):
        return _f32(key, 1, 0, (1,), (1,))

    records = {f"data/{k}": b"\0" * 4 for k in "0123"}
    both = _torch_zip(tmp_path / "b.pth", _dict_pkl({
        "ema": _dict_pkl({"w": weights("0")})[2:-1], "model": _dict_pkl({"w": weights("1")})[2:-1],
        "extra": _dict_pkl({"inner": _dict_pkl({"w": weights("2")})[2:-1]})[2:-1]}), records)
    ckpt = read_checkpoint(both)
    assert ckpt.container == "model" and ckpt.ignored == ["ema", "extra"]
    assert read_checkpoint(both, key="ema").container == "ema"
    dotted = read_checkpoint(both, key="extra.inner")
    assert dotted.container == "extra.inner" and list(dotted.entries) == ["w"]
    _raises(lambda: read_checkpoint(both, key="optimizer"), "no 'optimizer'", "ema, model, extra")


def test_flat_formats_and_key(tmp_path):
    path = tmp_path / "f.safetensors"
    write_checkpoint(path, {"module.a": np.ones(1, np.float32),
                            "module.b": np.zeros(2, np.float32)}, "safetensors")
    ckpt = read_checkpoint(path)
    assert ckpt.prefix == "module." and set(ckpt.entries) == {"a", "b"}
    npz = tmp_path / "k.npz"
    write_checkpoint(npz, {"ema.w": np.ones(1, np.float32), "model.w": np.zeros(1, np.float32)},
                     "npz")
    ckpt = read_checkpoint(npz, key="ema")
    assert (ckpt.container, list(ckpt.entries)) == ("ema", ["w"])
    assert ckpt.entries["w"].read()[0] == 1
    _raises(lambda: read_checkpoint(npz, key="net"), "no tensors under 'net'", "ema, model")


# ---------------------------------------------------------------- read_float32


def test_read_float32_refusals(tmp_path):
    path = tmp_path / "r.npz"
    write_checkpoint(path, {"count": np.arange(3), "huge": np.array([1.0, 1e300]),
                            "nan": np.array([np.nan], np.float32), "ok": np.array([0.5])}, "npz")
    ckpt = read_checkpoint(path)
    _raises(ckpt.entries["count"].read_float32, "'count'", str(path), "int64")
    _raises(ckpt.entries["huge"].read_float32, "'huge'", "infinite", "index (1,)")
    _raises(ckpt.entries["nan"].read_float32, "'nan'", "NaN")
    assert ckpt.entries["ok"].read_float32().dtype == np.float32
    assert isinstance(ckpt.entries["ok"], Entry) and ckpt.entries["huge"].read().dtype == np.float64


def test_entries_read_lazily(tmp_path):
    path = tmp_path / "lazy.pth"
    write_checkpoint(path, {"a": np.ones(4, np.float32), "b": np.full(2, 3.0, np.float32)},
                     "torch-zip")
    ckpt = read_checkpoint(path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("archive/data/1")
    raw[info.header_offset + 30 + len(info.filename) + len(info.extra)] ^= 0xFF
    path.write_bytes(bytes(raw))  # b's bytes change after the headers were read
    assert ckpt.entries["a"].read().tolist() == [1, 1, 1, 1]
    with pytest.raises(DataError, match="corrupt: tensor 'b' fails its zip member's CRC-32"):
        ckpt.entries["b"].read()  # read now, not when opened: and checked as np.load checks


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_member_crc_checked(tmp_path, compressed):
    """A byte flipped inside a member's data (a damaged copy) is refused, not trained on."""
    path = tmp_path / "w.npz"
    values = np.arange(1 << 16, dtype=np.float32)  # larger than a read-ahead: the header read stops short
    (np.savez_compressed if compressed else np.savez)(path, w=values)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("w.npy")
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size - 8
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"w\.npz.*CRC-32"):
        read_checkpoint(path).entries["w"].read()


def test_npz_fortran_order_and_compressed(tmp_path):
    arrays = {"f": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
              "z": np.arange(5, dtype=">i4")}
    np.savez(tmp_path / "f.npz", **arrays)
    np.savez_compressed(tmp_path / "c.npz", **arrays)
    for name in ("f.npz", "c.npz"):
        got = _arrays(read_checkpoint(tmp_path / name))
        assert np.array_equal(got["f"], arrays["f"]) and got["f"].flags.c_contiguous
        assert got["z"].dtype == np.int32 and np.array_equal(got["z"], arrays["z"])


def test_hostile_structures_refused(tmp_path):
    # a dict holding itself twice beside a tensor: bounded, not exponential
    cyclic = (b"\x80\x02}q\x00(" + ts._str("a") + b"h\x00" + ts._str("b") + b"h\x00" +
              ts._str("t") + _f32("0", 1, 0, (1,), (1,)) + b"u.")
    path = _torch_zip(tmp_path / "c.pth", cyclic, {"data/0": b"\0" * 4})
    start = time.perf_counter()
    _raises(lambda: read_checkpoint(path), "nested deeper")
    assert time.perf_counter() - start < 1
    # BUILD on an allowed global would otherwise change it for the rest of the process
    for glob in [("torch._utils", "_rebuild_tensor_v2"), ("torch", "FloatStorage")]:
        build = (b"\x80\x02" + ts._global(*glob) + b"N}" + ts._str("__defaults__") +
                 ts._tuple([ts._int(1)]) + b"s\x86b.")
        _raises(lambda: read_checkpoint(_torch_zip(tmp_path / "b.pth", build)), "set the state")
    # a bytes length far beyond the pickle
    huge = b"\x80\x02B" + struct.pack("<I", 2 ** 32 - 1) + b"."
    _raises(lambda: read_checkpoint(_torch_zip(tmp_path / "h.pth", huge)), "data.pkl")
