""".npz: a zip of .npy members. Each member's header (magic, dtype, order, shape) is read and
checked against the member's size before its data; object (pickled) arrays are refused."""
from __future__ import annotations

import zipfile
from functools import partial
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from ..errors import DataError
from .dtypes import dtype_name
from .entry import Entry, element_count, read_member, reading


def _header(member, path, name: str) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran order, dtype, where the data starts) of one .npy member."""
    version = npy.read_magic(member)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise DataError(f"{path}: array '{name}' is .npy format {version}", expected="1.0 to 3.0")
    if version == (1, 0):
        shape, fortran, dtype = npy.read_array_header_1_0(member)
    else:
        shape, fortran, dtype = npy.read_array_header_2_0(member)
    if dtype_name(dtype) is None:
        kind = ("object arrays (pickles) are not read" if dtype.hasobject else
                "raw void bytes: not a tensor (bfloat16 saved by numpy looks like this)"
                if dtype.kind == "V" else "not a tensor dtype")
        raise DataError(f"{path}: array '{name}' has dtype {dtype}: {kind}")
    return shape, fortran, dtype, member.tell()


def read(path: Path, zf: zipfile.ZipFile) -> tuple[list[Entry], list[str]]:
    """Entries in member order; members that are not .npy are listed as ignored."""
    entries, ignored = [], []
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            ignored.append(info.filename)
            continue
        name = info.filename[: -len(".npy")]
        with reading(path, name), zf.open(info) as member:
            shape, fortran, dtype, start = _header(member, path, name)
        nbytes = element_count(shape) * dtype.itemsize
        if info.file_size - start != nbytes:
            raise DataError(f"{path}: array '{name}' declares shape {list(shape)} of {dtype} "
                            f"({nbytes} bytes); its member holds {info.file_size - start}")
        entries.append(Entry(name, tuple(shape), dtype_name(dtype), nbytes, path,
                             partial(_load, path, info, start, shape, fortran, dtype, name)))
    return entries, ignored


def _load(path, info, start: int, shape, fortran: bool, dtype: np.dtype, name: str):
    raw = read_member(path, info, start, element_count(shape) * dtype.itemsize, name)
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
