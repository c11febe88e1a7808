"""Fuzz graphcnn's file readers with mutated files.

Seed files of every format graphcnn reads (.npz stored and deflated, .npy, .safetensors,
torch.save zip and legacy, .onnx with its weights inline and in external data) are mutated:
truncated, bytes flipped, header fields rewritten (the .npy header's shape and dtype, zip sizes,
offsets and methods, the safetensors JSON's offsets, shapes and dtypes, pickle integers, legacy
record counts, ONNX dims and external-data fields), dtypes swapped. Each mutated file goes
through the readers (read_checkpoint and every entry's data, read_arrays, load_model), in this
process, and must end one of these ways:

    ok            read; every value came back
    refused       a GraphCnnError (it names the file)

Anything else is a failure: another exception (a crash), a hang (over 10 s), more than 64 MB
allocated (tracemalloc's peak; the seeds are a few KB), or the process's peak memory growing
by more than 512 MB.

    python tools/fuzz_files.py            # 2000 files, a table of outcomes
    python tools/fuzz_files.py -n 500 --seed 3 --show 5 --save fails/
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import tracemalloc
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from graphcnn.errors import GraphCnnError  # noqa: E402

PEAK_BYTES = 64 << 20
RSS_GROWTH_KB = 512 << 10
HANG_SECONDS = 10
WILD_INTS = [0, 1, 7, 255, 65535, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 40, 10 ** 11,
             2 ** 62, 2 ** 63 - 1, -1, -2 ** 31]
WILD_SHAPES = ["(10**11,)", "(2**40, 1)", "(-1, 4)", "(0,)", "()", "(3, -2)", "(2**31, 2**31)",
               "(" + "1, " * 33 + ")",  # more axes than numpy allows (32)
               "(3, 2, 4)", "(24,)", "(4, 3, 2)", "'x'", "(1.5,)", "None"]
WILD_DESCRS = ["'<f8'", "'<f2'", "'<c8'", "'|O'", "'<U3'", "'>f4'", "'|V4'", "'<i8'", "'|b1'",
               "'<M8[s]'", "[('a', '<f4')]", "('<f4', (10**9,))", "'<f4'", "'x'", "0"]
SAFE_DTYPES = ["F32", "F64", "F16", "BF16", "I64", "U8", "BOOL", "C64", "F8_E4M3", "XX", 5, None]
HOSTILE_LOCATIONS = ["../w.bin", "/etc/passwd", "w\0.bin", "loop", "sub", "", "sparse.bin",
                     "sub/../w.bin", "missing.bin", "out", "w.bin", "w.bin"]
TORCH_STORAGES = [b"FloatStorage", b"DoubleStorage", b"LongStorage", b"ComplexFloatStorage",
                  b"BoolStorage", b"HalfStorage", b"NoSuchStorage", b"ByteStorage"]


class Failure(Exception):
    """A reader did something it must not do on this file."""


@dataclass
class Case:
    seed: str                 # which seed file was mutated
    kind: str                 # the mutation
    files: dict[str, bytes]   # name -> content; the first is the file given to the readers


# ----------------------------------------------------------------------------- seed files


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((3, 2, 4)).astype(np.float32),
            "y": np.arange(3, dtype=np.int64), "b": np.ones((2, 2), np.float16)}


def _npz(arrays, compressed: bool) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _written(arrays, fmt: str, suffix: str) -> bytes:
    from graphcnn.checkpoints import write_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"w{suffix}"
        write_checkpoint(path, arrays, fmt)
        return path.read_bytes()


def _legacy(arrays) -> bytes:
    """torch.save(..., _use_new_zipfile_serialization=False) of `arrays`, written by hand:
    pickles of the magic number, the protocol, the system info, the dict, the storage keys;
    then per storage its element count and bytes."""
    from graphcnn.checkpoints import torchsave as ts
    from graphcnn.checkpoints.dtypes import dtype_name

    head = (b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."
            b"\x80\x02M\xe9\x03."
            b"\x80\x02}X\x0d\x00\x00\x00little_endianq\x00\x88s.")
    pkl = ts.data_pkl(arrays, {k: dtype_name(a.dtype) for k, a in arrays.items()})
    keys = b"\x80\x02](" + b"".join(ts._str(str(i)) for i in range(len(arrays))) + b"e."
    records = b"".join(struct.pack("<q", a.size) + a.tobytes() for a in arrays.values())
    return head + pkl + keys + records


def _onnx_model(external: bool):
    from onnx import TensorProto, helper

    w = np.arange(8, dtype=np.float32)
    weight = helper.make_tensor("w", TensorProto.FLOAT, [8], w.tobytes(), raw=True)
    if external:
        weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[8],
                             data_location=TensorProto.EXTERNAL)
        for key, value in (("location", "w.bin"), ("offset", "0"), ("length", "32")):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])],
                              [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), w.tobytes()


def seeds() -> dict[str, dict[str, bytes]]:
    """Seed name -> its files (the first one is read)."""
    arrays = _arrays()
    inline, _ = _onnx_model(external=False)
    ext, data = _onnx_model(external=True)
    return {
        "npz": {"f.npz": _npz(arrays, False)},
        "npz-deflated": {"f.npz": _npz(arrays, True)},
        "npy": {"f.npy": _npy(arrays["x"])},
        "safetensors": {"f.safetensors": _written(arrays, "safetensors", ".safetensors")},
        "torch-zip": {"f.pth": _written(arrays, "torch-zip", ".pth")},
        "torch-legacy": {"f.pth": _legacy(arrays)},
        "onnx": {"m.onnx": inline.SerializeToString()},
        "onnx-external": {"m.onnx": ext.SerializeToString(), "w.bin": data},
    }


# ----------------------------------------------------------------------------- mutations


def truncate(data: bytes, rng: random.Random) -> bytes:
    at = rng.choice([rng.randrange(len(data)), rng.randrange(min(len(data), 200))])
    return data[:at]


def flip(data: bytes, rng: random.Random) -> bytes:
    raw = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        near = rng.choice([0, max(0, len(raw) - 200)])  # headers and the zip directory
        at = rng.randrange(near, min(len(raw), near + 200)) if rng.random() < 0.7 \
            else rng.randrange(len(raw))
        raw[at] ^= 1 << rng.randrange(8)
    return bytes(raw)


def npy_header(data: bytes, rng: random.Random, dtype_only: bool = False) -> bytes:
    """The .npy header's shape and/or descr rewritten; its padding keeps the length when the
    new text fits, else the length field follows the text."""
    end = data.find(b"\n", 10)
    if not data.startswith(b"\x93NUMPY") or end < 0:
        return flip(data, rng)
    start = 10 if data[6] == 1 else 12
    descr = rng.choice(WILD_DESCRS)
    shape = "(3, 2, 4)" if dtype_only else rng.choice(WILD_SHAPES)
    order = rng.choice(["False", "False", "True", "1", "'x'"])
    text = f"{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape}, }}".encode()
    old = end + 1 - start
    text = text.ljust(old - 1) + b"\n" if len(text) < old else text + b"\n"
    size = struct.pack("<H" if start == 10 else "<I", len(text) & (0xFFFF if start == 10 else
                                                                    0xFFFFFFFF))
    return data[:8] + size + text + data[end + 1:]


def zip_members(data: bytes, rng: random.Random, mutate) -> bytes:
    """The archive rebuilt with one member's bytes mutated (its CRC and sizes made right)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = [(info, zf.read(info)) for info in zf.infolist()]
    k = rng.randrange(len(members))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for i, (info, raw) in enumerate(members):
            zf.writestr(info, mutate(raw, rng) if i == k else raw)
    return out.getvalue()


# (signature, {field: (offset, struct format)}) of the zip records whose fields are rewritten
ZIP_FIELDS = {
    b"PK\x01\x02": {"method": (10, "<H"), "csize": (20, "<I"), "usize": (24, "<I"),
                    "name": (28, "<H"), "extra": (30, "<H"), "offset": (42, "<I")},
    b"PK\x03\x04": {"method": (8, "<H"), "csize": (18, "<I"), "usize": (22, "<I"),
                    "name": (26, "<H"), "extra": (28, "<H")},
    b"PK\x05\x06": {"entries": (10, "<H"), "cdsize": (12, "<I"), "cdoffset": (16, "<I")},
}


def zip_field(data: bytes, rng: random.Random) -> bytes:
    """One size, offset, method or count of a zip record set to a wild value."""
    raw = bytearray(data)
    sig = rng.choice(list(ZIP_FIELDS))
    spots = [i for i in range(len(raw)) if raw.startswith(sig, i)]
    if not spots:
        return flip(data, rng)
    at = rng.choice(spots)
    offset, fmt = rng.choice(list(ZIP_FIELDS[sig].values()))
    if at + offset + struct.calcsize(fmt) > len(raw):
        return flip(data, rng)
    (old,) = struct.unpack_from(fmt, raw, at + offset)
    limit = 256 ** struct.calcsize(fmt)
    value = rng.choice([w for w in WILD_INTS if 0 <= w < limit] + [old + 1, old - 1, old * 1000,
                        rng.choice([0, 8, 12, 14, 99])]) % limit
    struct.pack_into(fmt, raw, at + offset, value)
    return bytes(raw)


def safetensors_header(data: bytes, rng: random.Random, dtype_only: bool = False) -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    header, body = json.loads(data[8:8 + length]), data[8 + length:]
    name = rng.choice([k for k in header if k != "__metadata__"])
    field = "dtype" if dtype_only else rng.choice(["dtype", "shape", "data_offsets", "length"])
    if field == "dtype":
        header[name]["dtype"] = rng.choice(SAFE_DTYPES)
    elif field == "shape":
        header[name]["shape"] = rng.choice([[10 ** 11], [-1, 24], [2 ** 40, 2 ** 40], "x",
                                            [], [24], [4, 3, 2], [0], None])
    elif field == "data_offsets":
        a, b = header[name]["data_offsets"]
        header[name]["data_offsets"] = rng.choice([[a, b + 4], [a - 4, b], [b, a], [0, 2 ** 62],
                                                   [a, 10 ** 11], [-4, b], [a], "x"])
    text = json.dumps(header).encode()
    size = len(text) if field != "length" else rng.choice(WILD_INTS + [len(text) + 1]) % 2 ** 64
    return struct.pack("<Q", size) + text + body


def pickle_ints(pkl: bytes, rng: random.Random) -> bytes:
    """A pickled small int (BININT1 'K' n) made a wild BININT/LONG1, or a storage class
    swapped: the sizes, shapes, strides, offsets and dtypes a torch pickle declares."""
    if rng.random() < 0.4:
        old = rng.choice([s for s in TORCH_STORAGES if s in pkl] or [b"FloatStorage"])
        return pkl.replace(old, rng.choice(TORCH_STORAGES), 1)
    spots = [i for i in range(len(pkl) - 1) if pkl[i:i + 1] == b"K"]
    if not spots:
        return flip(pkl, rng)
    at = rng.choice(spots)
    value = rng.choice(WILD_INTS)
    raw = value.to_bytes(9, "little", signed=True)
    return pkl[:at] + b"\x8a\x09" + raw + pkl[at + 2:]  # LONG1 of 9 bytes


def legacy_record(data: bytes, rng: random.Random) -> bytes:
    """A legacy file's storage record count (8 bytes after the keys pickle) set wild."""
    at = data.rfind(b"e.")
    if at < 0 or at + 10 > len(data):
        return flip(data, rng)
    value = rng.choice(WILD_INTS) % 2 ** 63
    return data[:at + 2] + struct.pack("<q", value) + data[at + 10:]


def onnx_fields(data: bytes, rng: random.Random, dtype_only: bool = False) -> bytes:
    """One to three of the weight's dims, type, raw data or external-data fields rewritten
    (several at once: a hostile location with a wild length, a 3 GB file read to its end)."""
    import onnx

    model = onnx.ModelProto()
    model.ParseFromString(data)
    tensor = model.graph.initializer[0]
    for _ in range(1 if dtype_only else rng.randint(1, 3)):
        field = "type" if dtype_only else rng.choice(["dims", "type", "raw", "location",
                                                      "offset", "length", "drop"])
        _onnx_field(tensor, field, rng)
    return model.SerializeToString()


def _onnx_field(tensor, field: str, rng: random.Random) -> None:
    if field == "dims":
        del tensor.dims[:]
        tensor.dims.extend(rng.choice([[10 ** 11], [-1], [2 ** 31, 2 ** 31], [], [0], [4, 2],
                                       [3 * 2 ** 28]]))
    elif field == "type":
        tensor.data_type = rng.choice([0, 2, 6, 7, 8, 11, 14, 16, 21, 99, 10 ** 6])
    elif field == "raw" and tensor.raw_data:
        tensor.raw_data = tensor.raw_data[:rng.randrange(len(tensor.raw_data))]
    elif field == "drop" and tensor.external_data:  # no length: onnx reads to the file's end
        kept = [e for e in tensor.external_data if e.key != rng.choice(["length", "offset"])]
        del tensor.external_data[:]
        tensor.external_data.extend(kept)
    elif tensor.external_data and field in ("location", "offset", "length"):
        value = rng.choice(HOSTILE_LOCATIONS) if field == "location" else \
            rng.choice([str(rng.choice(WILD_INTS)), "x", "", "1e3", "-0", "\u0663",
                        str(3 * 2 ** 30)])
        entries = {e.key: e for e in tensor.external_data}
        if field not in entries:
            entries[field] = tensor.external_data.add()
            entries[field].key = field
        entries[field].value = value


def mutate(seed: str, files: dict[str, bytes], rng: random.Random) -> Case:
    main = next(iter(files))
    data = files[main]
    kinds = ["truncate", "flip", "header", "dtype"]
    if seed.startswith("npz") or seed == "torch-zip":
        kinds.append("zip")
    if seed == "onnx-external":
        kinds.append("external-data")
    kind = rng.choice(kinds)
    files = dict(files)
    if kind == "truncate":
        files[main] = truncate(data, rng)
    elif kind == "flip":
        files[main] = flip(data, rng)
    elif kind == "zip":
        files[main] = zip_field(data, rng)
    elif kind == "external-data":
        files["w.bin"] = rng.choice([truncate, flip])(files["w.bin"], rng)
    else:
        files[main] = _header(seed, data, rng, kind == "dtype")
    return Case(seed, kind, files)


def _header(seed: str, data: bytes, rng: random.Random, dtype_only: bool) -> bytes:
    if seed == "npy":
        return npy_header(data, rng, dtype_only)
    if seed.startswith("npz"):
        return zip_members(data, rng, lambda raw, r: npy_header(raw, r, dtype_only))
    if seed == "safetensors":
        return safetensors_header(data, rng, dtype_only)
    if seed == "torch-zip":
        def pkl_only(raw, r):
            return pickle_ints(raw, r) if raw.startswith(b"\x80\x02") else raw
        return zip_members(data, rng, pkl_only)
    if seed == "torch-legacy":
        return legacy_record(data, rng) if not dtype_only and rng.random() < 0.4 else \
            pickle_ints(data, rng)
    return onnx_fields(data, rng, dtype_only)


# ----------------------------------------------------------------------------- readers


def read_everything(path: Path, seed: str) -> None:
    """Every reader graphcnn has for this kind of file, reading every value."""
    from graphcnn.checkpoints import read_checkpoint
    from graphcnn.checkpoints.arrays import Want, read_arrays, training_arrays
    from graphcnn.checkpoints.dtypes import FLOATS
    from graphcnn.runtime import load_model

    if seed.startswith("onnx"):
        load_model(path)
        return
    expected = {"x": Want(("N", 2, 4)), "y": Want(None, "int64", required=False)}
    if seed == "npy":  # run --input's and --calibrate's reader; not a checkpoint
        read_arrays(path, expected, "--input", single="x", extra="ignore")
        return
    if seed.startswith("npz"):
        _settle(lambda: read_arrays(path, expected, "--input", single="x", extra="ignore"))
        _settle(lambda: training_arrays(path))
    ckpt = read_checkpoint(path)
    for entry in ckpt.entries.values():
        entry.read_float32() if entry.dtype in FLOATS else entry.read()


def _settle(read) -> None:
    """One reader's outcome; a GraphCnnError is a fine end, and the next reader still runs."""
    try:
        read()
    except GraphCnnError:
        pass


def run_one(case: Case, folder: Path) -> str:
    """The outcome of one mutated file; raises Failure when a reader misbehaves."""
    main = next(iter(case.files))
    for name, data in case.files.items():
        (folder / name).write_bytes(data)
    tracemalloc.start(1)
    try:
        read_everything(folder / main, case.seed)
        outcome = "ok"
    except GraphCnnError as exc:
        if main not in str(exc):
            raise Failure(f"error that does not name the file: {type(exc).__name__}: {exc}")
        outcome = f"refused ({type(exc).__name__})"
    except Failure:
        raise
    except Exception as exc:  # noqa: BLE001 - the point: nothing else may escape
        raise Failure(f"crash: {type(exc).__name__}: {str(exc)[:300]}") from exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if peak > PEAK_BYTES:
        raise Failure(f"allocated {peak >> 20} MB")
    return outcome


def workspace(folder: Path) -> None:
    """What hostile external-data locations point at: a symlink loop, a folder, a link out of
    the folder, a 3 GB sparse file (no disk used)."""
    (folder / "sub").mkdir(exist_ok=True)
    for link, target in (("loop", "loop2"), ("loop2", "loop"), ("out", "/etc/hostname")):
        if not os.path.lexists(folder / link):
            os.symlink(target, folder / link)
    with open(folder / "sparse.bin", "wb") as f:
        f.truncate(3 * 2 ** 30)


def _hang(signum, frame):
    raise Failure(f"hang: more than {HANG_SECONDS} s on one file")


def cases(n: int, seed: int):
    """n mutated files, the same for the same seed."""
    base = seeds()
    names = sorted(base)
    for i in range(n):
        rng = random.Random(f"{seed}:{i}")
        name = names[i % len(names)]
        yield mutate(name, base[name], rng)


def fuzz(n: int, seed: int, folder: Path) -> tuple[collections.Counter, list]:
    """Run n cases; (outcome counts, [(case, why)] of failures)."""
    workspace(folder)
    outcomes: collections.Counter = collections.Counter()
    failures = []
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    old = signal.signal(signal.SIGALRM, _hang)
    try:
        for case in cases(n, seed):
            signal.alarm(HANG_SECONDS)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # onnx warns on unknown external-data keys
                    outcomes[f"{case.seed}: {run_one(case, folder)}"] += 1
                grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
                if grown > RSS_GROWTH_KB:
                    raise Failure(f"peak memory grew by {grown >> 10} MB")
            except Failure as exc:
                outcomes[f"{case.seed}: FAIL {str(exc).split(':')[0]}"] += 1
                failures.append((case, str(exc)))
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, old)
    return outcomes, failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="files to run (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=3, help="failures to print")
    ap.add_argument("--save", help="folder to write failing files into")
    args = ap.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        outcomes, failures = fuzz(args.n, args.seed, Path(tmp))
    print(f"{sum(outcomes.values())} files in {time.perf_counter() - start:.0f} s "
          f"(seed {args.seed})\n")
    print("| seed file: outcome | files |\n|---|---:|")
    for outcome, count in sorted(outcomes.items()):
        print(f"| {outcome} | {count} |")
    for case, why in failures[:args.show]:
        print(f"\n--- {case.seed} / {case.kind}: {why}")
    for k, (case, why) in enumerate(failures if args.save else []):
        target = Path(args.save) / f"fail{k}-{case.seed}"
        target.mkdir(parents=True, exist_ok=True)
        (target / "why.txt").write_text(f"{case.kind}: {why}\n")
        for name, data in case.files.items():
            (target / name).write_bytes(data)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
