"""torch.save files, zip and legacy, read through the restricted unpickler.

Each reader returns the unpickled object (tensors as TensorRef) and `span(key, start,
length, name)`, which reads bytes of one storage when entry `name` is read. Every storage's size is checked against
the file (zip member size, legacy record length) when the pickle names it, before any data is
read, so a file that lies about its sizes is refused from its headers.
"""
from __future__ import annotations

import io
import os
import struct
import zipfile
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dtypes import DTYPES
from .entry import Entry, read_exact, read_member, reading
from .torchpickle import (LEGACY_PROTOCOL, MAGIC, Refused, StorageRef, StorageType, TensorRef,
                          load)

MAX_PICKLE = 256 << 20  # a state dict's pickle is KBs to a few MBs; more is not a checkpoint


def _shared(refs: dict, path, key: str, stype: StorageType, numel: int) -> StorageRef | None:
    """The StorageRef already made for `key` (several tensors view one storage), or None."""
    ref = refs.get(key)
    if ref is not None and (ref.dtype, ref.numel) != (stype.dtype, numel):
        raise DataError(f"{path}: storage '{key}' is named twice with different types or sizes")
    return ref


def archive_dir(names, path) -> str:
    """The folder of the zip's data.pkl (torch names it after the file, or 'archive')."""
    found = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(found) != 1:
        raise DataError(f"{path} is a zip but not a torch.save file: it holds "
                        f"{len(found) or 'no'} <folder>/data.pkl")
    return found[0][: -len("data.pkl")]


def read_zip(path: Path, zf: zipfile.ZipFile):
    infos = {i.filename: i for i in zf.infolist()}
    base = archive_dir(infos, path)
    order = infos.get(base + "byteorder")
    if order is not None and (order.file_size > 16 or zf.read(order).strip() != b"little"):
        raise DataError(f"{path} was saved big-endian: only little-endian files are read")
    pkl = infos[base + "data.pkl"]
    if pkl.file_size > MAX_PICKLE:
        raise DataError(f"{path}: data.pkl declares {pkl.file_size} bytes, more than a "
                        f"checkpoint's pickle ({MAX_PICKLE})")
    refs: dict[str, StorageRef] = {}

    def storage(key: str, stype: StorageType, numel: int) -> StorageRef:
        ref = _shared(refs, path, key, stype, numel) or StorageRef(key, stype.dtype, numel)
        info = infos.get(f"{base}data/{key}")
        if info is None:
            raise DataError(f"{path}: storage '{key}' has no record {base}data/{key}")
        if info.file_size != ref.nbytes:
            raise DataError(f"{path}: record {base}data/{key} holds {info.file_size} bytes, its "
                            f"storage declares {numel} x {stype.cls} = {ref.nbytes} bytes")
        refs[key] = ref
        return ref

    top = load(io.BytesIO(zf.read(pkl)), path, "data.pkl", storage)
    members = {key: infos[f"{base}data/{key}"] for key in refs}
    return top, partial(_zip_span, path, members)


def _zip_span(path: Path, members: dict, key: str, start: int, length: int,
              name: str) -> np.ndarray:
    return read_member(path, members[key], start, length, name)


class Window:
    """A file whose reads are capped at its end, so a length a pickle declares never makes a
    read ask for (and allocate) more than the file holds."""

    def __init__(self, f, size: int):
        self.f, self.size = f, size

    def _left(self, n) -> int:
        left = max(self.size - self.f.tell(), 0)
        return left if n is None or n < 0 else min(n, left)

    def read(self, n=-1) -> bytes:
        return self.f.read(self._left(n))

    def readline(self, n=-1) -> bytes:
        return self.f.readline(self._left(n))

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        return self.f.readinto(view[: self._left(len(view))])

    def tell(self) -> int:
        return self.f.tell()

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.f.seek(pos, whence)


def is_legacy(f, path) -> bool:
    """Whether the file's first pickle is torch's legacy magic number."""
    size = os.fstat(f.fileno()).st_size
    try:
        return load(Window(f, size), path, "the first pickle") == MAGIC
    except Refused:
        raise  # a hostile pickle, whatever it is: say so
    except DataError:
        return False


def read_legacy(path: Path):
    """torch.save(..., _use_new_zipfile_serialization=False): pickles of the magic number,
    the protocol version, system info, the object, the storage keys; then per storage an
    8-byte little-endian element count and its bytes."""
    with open(path, "rb") as f, reading(path):
        size = os.fstat(f.fileno()).st_size
        w = Window(f, size)
        if load(w, path, "the magic number") != MAGIC:
            raise DataError(f"{path} is a pickle but not a torch.save file")
        if load(w, path, "the protocol version") != LEGACY_PROTOCOL:
            raise DataError(f"{path}: unknown legacy torch protocol",
                            expected=str(LEGACY_PROTOCOL))
        info = load(w, path, "the system info")
        if not isinstance(info, dict) or info.get("little_endian") is not True:
            raise DataError(f"{path} was saved big-endian: only little-endian files are read")
        refs: dict[str, StorageRef] = {}

        def storage(key: str, stype: StorageType, numel: int) -> StorageRef:
            refs[key] = _shared(refs, path, key, stype, numel) or \
                StorageRef(key, stype.dtype, numel)
            return refs[key]

        top = load(w, path, "the pickle", storage)
        keys = load(w, path, "the storage list")
        offsets = _legacy_offsets(f, path, size, keys, refs)
    return top, partial(_legacy_span, path, offsets)


def _legacy_offsets(f, path, size: int, keys, refs: dict) -> dict[str, int]:
    """Where each storage's bytes start, checked against the counts the pickle declared."""
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise DataError(f"{path}: the storage list is not a list of keys")
    offsets, pos = {}, f.tell()
    for key in keys:
        ref = refs.get(key)
        if ref is None:
            raise DataError(f"{path}: storage '{key}' is stored but no tensor uses it")
        f.seek(pos)
        head = f.read(8)
        if len(head) != 8 or struct.unpack("<q", head)[0] != ref.numel:
            raise DataError(f"{path}: storage '{key}' should hold {ref.numel} elements; its "
                            "record says otherwise or is cut off")
        offsets[key], pos = pos + 8, pos + 8 + ref.nbytes
        if pos > size:
            raise DataError(f"{path} is truncated: storage '{key}' ends at byte {pos}, the file "
                            f"has {size}")
    missing = sorted(set(refs) - set(offsets))
    if missing:
        raise DataError(f"{path}: storages {missing[:5]} are used but not stored")
    return offsets


def _legacy_span(path: Path, offsets: dict, key: str, start: int, length: int,
                 name: str) -> np.ndarray:
    with open(path, "rb") as f:
        f.seek(offsets[key] + start)
        return read_exact(f, length, path, name)


def materialize(ref: TensorRef, span, name: str) -> np.ndarray:
    """A tensor's values: only the storage bytes it views are read; a strided view (a
    transposed tensor saved as is) is copied into C order."""
    dtype = DTYPES[ref.dtype]
    start, end = ref.span()
    if end == start:
        return np.empty(ref.shape, dtype)
    flat = span(ref.storage.key, start, end - start, name).view(dtype)
    view = np.lib.stride_tricks.as_strided(flat, ref.shape,
                                           [s * dtype.itemsize for s in ref.stride])
    return np.asarray(view, order="C")  # no copy when already C order; 0-d stays 0-d


def entry_of(name: str, ref: TensorRef, span, path: Path) -> Entry:
    return Entry(name, ref.shape, ref.dtype, ref.numel * ref.itemsize, path,
                 partial(materialize, ref, span, name))
