"""A .pth that torch.load(weights_only=True) reads as an OrderedDict of tensors, written
without torch: torch's zip layout (stored records aligned to 64 bytes) around a protocol-2
pickle written opcode by opcode, naming only torch's tensor-rebuilding globals."""
from __future__ import annotations

import hashlib
import struct
import zipfile

import numpy as np

from .dtypes import STORAGE_OF, array_dtype_name

ALIGN = 64  # torch aligns every record's data (for mmap loading)
FOLDER = "archive"  # what torch.save names it when writing to a stream

PROTO, STOP, MARK, TUPLE, EMPTY_TUPLE = b"\x80\x02", b".", b"(", b"t", b")"
REDUCE, BINPERSID, NEWFALSE, SETITEMS = b"R", b"Q", b"\x89", b"u"
SMALL_TUPLES = {0: b")", 1: b"\x85", 2: b"\x86", 3: b"\x87"}


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    if -(1 << 31) <= n < (1 << 31):
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes(n.bit_length() // 8 + 1, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _tuple(items: list[bytes]) -> bytes:
    if len(items) in SMALL_TUPLES:
        return b"".join(items) + SMALL_TUPLES[len(items)]
    return MARK + b"".join(items) + TUPLE


def _ordered_dict() -> bytes:
    return _global("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE


def _tensor(key: str, array: np.ndarray, dtype: str) -> bytes:
    """_rebuild_tensor_v2(storage, 0, shape, C strides, False, OrderedDict()) for a typed
    storage; dtypes without one (uint16, float8) go as _rebuild_tensor_v3 on UntypedStorage."""
    cls = STORAGE_OF.get(dtype)
    numel = array.size if cls else array.nbytes
    storage = _tuple([_str("storage"), _global("torch", cls) if cls else
                      _global("torch.storage", "UntypedStorage"), _str(key), _str("cpu"),
                      _int(numel)]) + BINPERSID
    strides = _c_strides(array.shape)
    args = [storage, _int(0), _tuple([_int(n) for n in array.shape]),
            _tuple([_int(s) for s in strides]), NEWFALSE, _ordered_dict()]
    rebuild = "_rebuild_tensor_v2" if cls else "_rebuild_tensor_v3"
    if not cls:
        args.append(_global("torch", dtype))
    return _global("torch._utils", rebuild) + MARK + b"".join(args) + TUPLE + REDUCE


def data_pkl(arrays: dict[str, np.ndarray], dtypes: dict[str, str]) -> bytes:
    body = b"".join(_str(name) + _tensor(str(i), arrays[name], dtypes[name])
                    for i, name in enumerate(arrays))
    return PROTO + _ordered_dict() + (MARK + body + SETITEMS if arrays else b"") + STOP


def _record(zf: zipfile.ZipFile, f, name: str, data) -> None:
    """One stored record whose data starts on a multiple of ALIGN: the local header's extra
    field is padded, as torch's writer does (extra id 'FB')."""
    raw = memoryview(data)  # bytes, or a 1-D uint8 view of an array (no copy)
    big = len(raw) > (1 << 30)  # zipfile adds a 20-byte zip64 field to the header exactly then
    header = 30 + len(name.encode()) + 4 + (20 if big else 0)
    pad = -(f.tell() + header) % ALIGN
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type, info.file_size = zipfile.ZIP_STORED, len(raw)
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    with zf.open(info, "w", force_zip64=big) as out:
        out.write(raw)


def write(path, arrays: dict[str, np.ndarray]) -> None:
    dtypes = {name: array_dtype_name(a, name, path) for name, a in arrays.items()}
    arrays = {name: _little(np.asarray(a, order="C")) for name, a in arrays.items()}
    pkl = data_pkl(arrays, dtypes)
    ident = str(int.from_bytes(hashlib.sha256(pkl).digest(), "big"))[:40].rjust(40, "0")
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for name, data in [("data.pkl", pkl), (".format_version", b"1"),
                           (".storage_alignment", str(ALIGN).encode()),
                           ("byteorder", b"little")]:
            _record(zf, f, f"{FOLDER}/{name}", data)
        for i, array in enumerate(arrays.values()):
            _record(zf, f, f"{FOLDER}/data/{i}", array.reshape(-1).view(np.uint8))
        _record(zf, f, f"{FOLDER}/version", b"3\n")
        _record(zf, f, f"{FOLDER}/.data/serialization_id", ident.encode())


def _little(array: np.ndarray) -> np.ndarray:
    if array.dtype.byteorder == ">":
        return array.astype(array.dtype.newbyteorder("<"))
    return array


def _c_strides(shape) -> list[int]:
    """torch's contiguous strides, in elements (a size-0 axis counts as 1, as in torch)."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return strides[::-1]
