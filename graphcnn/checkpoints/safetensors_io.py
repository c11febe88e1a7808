""".safetensors: an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and byte range, then the data. The header is checked in full (bounded length,
ranges inside the data, sized as the shape says, not overlapping) before any data is read."""
from __future__ import annotations

import json
import os
import struct
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dtypes import DTYPES, SAFETENSORS
from .entry import Entry, element_count, from_bytes, read_exact, reading

MAX_HEADER = 100_000_000  # the format's own limit


def _no_duplicates(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"'{k}' appears twice in the header")
        seen[k] = v
    return seen


def _header(path: Path) -> tuple[dict, int, int]:
    """(the JSON header, where the data starts, how many data bytes follow)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > MAX_HEADER or 8 + length > size:
            raise DataError(f"{path}: the safetensors header declares {length} bytes; the file "
                            f"has {size} and the format allows {MAX_HEADER}")
        text = f.read(length)
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"{path}: the safetensors header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise DataError(f"{path}: the safetensors header is not a JSON object")
    return header, 8 + length, size - 8 - length


def _info(path, name: str, info, data_size: int) -> tuple[str, tuple, int, int]:
    """(dtype, shape, begin, end) of one header entry, checked against the data area."""
    bad = f"{path}: safetensors entry '{name}'"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise DataError(f"{bad} lacks dtype, shape or data_offsets")
    dtype = SAFETENSORS.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise DataError(f"{bad} has dtype {info['dtype']!r}", expected=", ".join(SAFETENSORS))
    shape, offsets = info["shape"], info["data_offsets"]
    lists = isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
    if not lists or not all(type(n) is int and n >= 0 for n in [*shape, *offsets]):
        raise DataError(f"{bad} has shape {shape!r} and data_offsets {offsets!r}",
                        expected="lists of non-negative integers")
    begin, end = offsets
    need = element_count(shape) * DTYPES[dtype].itemsize
    if not begin <= end <= data_size or end - begin != need:
        raise DataError(f"{bad} declares bytes [{begin}, {end}) of {data_size}; its shape "
                        f"{shape} of {dtype} needs {need}")
    return dtype, tuple(shape), begin, end


def read(path: Path) -> tuple[list[Entry], list[str]]:
    """Entries in the order of their data; '__metadata__' is not a tensor."""
    with reading(path):
        header, start, data_size = _header(path)
    infos = {name: _info(path, name, info, data_size)
             for name, info in header.items() if name != "__metadata__"}
    ordered = sorted(infos.items(), key=lambda item: (item[1][2], item[1][3]))
    last_end, last_name = 0, None
    for name, (_dtype, _shape, begin, end) in ordered:
        if begin < last_end:
            raise DataError(f"{path}: safetensors entries '{last_name}' and '{name}' overlap")
        if end > begin:
            last_end, last_name = end, name
    return [Entry(name, shape, dtype, end - begin, path,
                  partial(_load, path, start + begin, end - begin, dtype, shape, name))
            for name, (dtype, shape, begin, end) in ordered], []


def _load(path: Path, at: int, nbytes: int, dtype: str, shape: tuple, name: str) -> np.ndarray:
    with open(path, "rb") as f:
        f.seek(at)
        return from_bytes(read_exact(f, nbytes, path, name), dtype, shape)


def write(path, arrays: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.asarray(v, order="C") for k, v in arrays.items()}, os.fspath(path))
