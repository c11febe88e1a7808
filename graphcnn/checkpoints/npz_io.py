""".npz: a zip of .npy members (and single .npy files). Each header (magic, dtype, order,
shape) is read and checked against the member's (the file's) size before its data; object
(pickled) arrays are refused."""
from __future__ import annotations

import io
import os
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from ..errors import DataError
from .dtypes import dtype_name
from .entry import Entry, check_member, element_count, read_exact, read_member, reading

MAGIC = b"\x93NUMPY"
MAX_HEADER = 10_000  # numpy's own limit (numpy.lib.format._MAX_HEADER_SIZE)
LENGTH_BYTES = {1: 2, 2: 4, 3: 4}  # the header length field's size, by major version


def _header(stream, path, name: str) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran order, dtype, where the data starts) of one .npy file or member. The
    header's length is checked before the header is read: numpy would read (and allocate)
    whatever the 4-byte length field says before checking it."""
    head = stream.read(len(MAGIC) + 2)
    if len(head) < len(MAGIC) + 2 or not head.startswith(MAGIC):
        raise DataError(f"{path}: array '{name}' is not .npy data", received=f"{head[:8]!r}")
    version = (head[6], head[7])
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise DataError(f"{path}: array '{name}' is .npy format {version}", expected="1.0 to 3.0")
    field = stream.read(LENGTH_BYTES[version[0]])
    length = int.from_bytes(field, "little")
    if len(field) != LENGTH_BYTES[version[0]] or length > MAX_HEADER:
        raise DataError(f"{path}: array '{name}' has a {length}-byte .npy header (or none)",
                        expected=f"at most {MAX_HEADER} bytes")
    text = stream.read(length)
    header = io.BytesIO(head + field + text)
    header.seek(len(head))
    read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, fortran, dtype = read(header)
    if dtype_name(dtype) is None:
        kind = ("object arrays (pickles) are not read" if dtype.hasobject else
                "raw void bytes: not a tensor (bfloat16 saved by numpy looks like this)"
                if dtype.kind == "V" else "not a tensor dtype")
        raise DataError(f"{path}: array '{name}' has dtype {dtype}: {kind}")
    return shape, fortran, dtype, len(head) + len(field) + length


def members(zf: zipfile.ZipFile) -> tuple[dict[str, zipfile.ZipInfo], list[str]]:
    """The .npy members by array name, from the central directory alone (nothing is read),
    and the other members' names."""
    arrays, others = {}, []
    for info in zf.infolist():
        if info.filename.endswith(".npy"):
            name = info.filename[: -len(".npy")]
            if name in arrays:  # np.load would give the last; which one was meant is unknown
                raise DataError(f"{zf.filename}: array '{name}' appears twice",
                                expected="one member per name")
            arrays[name] = info
        else:
            others.append(info.filename)
    return arrays, others


def member_entry(path: Path, zf: zipfile.ZipFile, name: str, info: zipfile.ZipInfo) -> Entry:
    """One member's entry from its header, checked against the member's size."""
    check_member(path, info, name)
    with reading(path, name), zf.open(info) as member:
        shape, fortran, dtype, start = _header(member, path, name)
    nbytes = _declared(path, name, shape, dtype, info.file_size - start, "its member holds")
    return Entry(name, tuple(shape), dtype_name(dtype), nbytes, path,
                 partial(_load_member, path, info, start, shape, fortran, dtype, name))


def npy_entry(path: Path, name: str) -> Entry:
    """A single .npy file as entry `name`, from its header, checked against the file's size."""
    with reading(path, name), open(path, "rb") as f:
        shape, fortran, dtype, start = _header(f, path, name)
        size = os.fstat(f.fileno()).st_size
    nbytes = _declared(path, name, shape, dtype, size - start, "the file holds")
    return Entry(name, tuple(shape), dtype_name(dtype), nbytes, path,
                 partial(_load_npy, path, start, shape, fortran, dtype, name))


def _declared(path, name: str, shape, dtype: np.dtype, held: int, holds: str) -> int:
    nbytes = element_count(shape) * dtype.itemsize
    if nbytes != held or any(n < 0 for n in shape):
        raise DataError(f"{path}: array '{name}' declares shape {list(shape)} of {dtype} "
                        f"({nbytes} bytes); {holds} {held}")
    return nbytes


def read(path: Path, zf: zipfile.ZipFile) -> tuple[list[Entry], list[str]]:
    """Entries in member order; members that are not .npy are listed as ignored."""
    arrays, ignored = members(zf)
    return [member_entry(path, zf, name, info) for name, info in arrays.items()], ignored


def _load_member(path, info, start: int, shape, fortran: bool, dtype: np.dtype, name: str):
    raw = read_member(path, info, start, element_count(shape) * dtype.itemsize, name)
    return _shaped(raw, shape, fortran, dtype)


def _load_npy(path, start: int, shape, fortran: bool, dtype: np.dtype, name: str):
    with open(path, "rb") as f:
        f.seek(start)
        raw = read_exact(f, element_count(shape) * dtype.itemsize, path, name)
    return _shaped(raw, shape, fortran, dtype)


def _shaped(raw: np.ndarray, shape, fortran: bool, dtype: np.dtype) -> np.ndarray:
    values = raw.view(dtype)
    return values.reshape(shape[::-1]).T if fortran else values.reshape(shape)


def write(path, arrays: dict[str, np.ndarray]) -> None:
    """What np.savez writes (stored members, no pickles), without its keyword arguments, which
    a tensor named 'file' or 'allow_pickle' would collide with."""
    for name, array in arrays.items():
        if array.dtype.kind == "V" or dtype_name(array.dtype) in ("bfloat16", "float8_e4m3fn",
                                                                   "float8_e5m2"):
            raise DataError(f"cannot write tensor '{name}' ({dtype_name(array.dtype)}) to .npz: "
                            "numpy records it as raw bytes",
                            hint="write .safetensors or .pth, or convert it to float32")
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                npy.write_array(member, np.asarray(array, order="C"), allow_pickle=False)
