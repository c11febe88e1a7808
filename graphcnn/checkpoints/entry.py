"""What a read checkpoint is: named entries known from headers, each read only when asked."""
from __future__ import annotations

import struct
import tokenize
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError
from .dtypes import DTYPES, FLOATS


@dataclass(frozen=True)
class Entry:
    """One tensor: its name, shape and dtype from the headers; `read` loads its data."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    path: Path = field(repr=False)
    _load: Callable[[], np.ndarray] = field(repr=False, compare=False)

    def read(self) -> np.ndarray:
        """The tensor in its stored dtype (bfloat16 as ml_dtypes.bfloat16), C-contiguous."""
        with reading(self.path, self.name):
            array = self._load()
        return np.asarray(array.astype(array.dtype.newbyteorder("="), copy=False), order="C")

    def read_float32(self) -> np.ndarray:
        """The tensor as float32; refused for non-float dtypes and for values that are not
        finite once converted (1e300 in float64 overflows float32)."""
        where = f"tensor '{self.name}' in {self.path}"
        if self.dtype not in FLOATS:
            raise DataError(f"{where} is {self.dtype}, not floating point",
                            expected="a float tensor (float16/bfloat16/float32/float64)",
                            received=self.dtype)
        with np.errstate(over="ignore"):
            array = self.read().astype(np.float32)
        bad = np.size(array) - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            first = np.unravel_index(int(np.argmin(np.isfinite(array))), array.shape)
            raise DataError(f"{where} has {bad} value(s) that are NaN or infinite as float32 "
                            f"(first at index {tuple(int(i) for i in first)})",
                            expected="finite float32 values")
        return array


@dataclass
class Checkpoint:
    """A checkpoint's tensors by name (file order) and where they were found."""

    path: Path
    format: str
    container: str | None
    prefix: str | None
    entries: dict[str, Entry]
    ignored: list[str] = field(default_factory=list)


# What reading a damaged file raises below our checks; all of it becomes a DataError.
# RuntimeError: zipfile's for an encrypted member, NotImplementedError for an unknown version
# or method, RecursionError; numpy's .npy header parser lets tokenize's TokenError out.
READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, struct.error,
               KeyError, IndexError, TypeError, OverflowError, MemoryError, RuntimeError,
               tokenize.TokenError)

# Deflate cannot shrink data more than 1032:1, so a member declaring more is lying about its size.
DEFLATE_RATIO = 1032


@contextmanager
def reading(path, name: str | None = None):
    """Turn a low-level failure while reading `path` (entry `name`) into a DataError."""
    try:
        yield
    except DataError:
        raise
    except READ_ERRORS as e:
        inside = f" (entry '{name}')" if name else ""
        raise DataError(f"could not read {path}{inside}: {type(e).__name__}: {e}") from e


def _skip(stream, start: int, keep: bool) -> bytes:
    """Move past the member's first `start` bytes, returning them when `keep` (for the CRC)."""
    if keep:
        return stream.read(start)
    stream.seek(start, 1)
    return b""


def read_exact(stream, nbytes: int, path, name: str) -> np.ndarray:
    """Exactly `nbytes` bytes from `stream` into a fresh uint8 array; short means truncated."""
    buffer = np.empty(nbytes, np.uint8)
    view, done = memoryview(buffer), 0
    while done < nbytes:
        got = stream.readinto(view[done:])
        if not got:
            raise DataError(f"{path} is truncated: tensor '{name}' needs {nbytes} bytes, "
                            f"found {done}")
        done += got
    return buffer


def from_bytes(raw: np.ndarray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Bytes -> array of `dtype` and `shape` (C order), without copying."""
    return raw.view(DTYPES[dtype]).reshape(shape)


def element_count(shape) -> int:
    count = 1
    for n in shape:
        count *= int(n)
    return count


def check_member(path, info: zipfile.ZipInfo, name: str) -> None:
    """Refuse a member whose sizes (from the central directory) the archive cannot hold, before
    anything that large is allocated: stored data beyond the file, more inflated bytes than
    deflate can produce, compression methods neither numpy nor torch writes."""
    where = f"{path}: zip member {info.filename} (entry '{name}')"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DataError(f"{where} is compressed with method {info.compress_type}",
                        expected="stored or deflated members (np.savez, torch.save)")
    if info.flag_bits & 0x1:
        raise DataError(f"{where} is encrypted")
    stored = info.compress_type == zipfile.ZIP_STORED
    if (stored and info.file_size != info.compress_size) or \
            info.file_size > DEFLATE_RATIO * info.compress_size + 64:
        raise DataError(f"{where} declares {info.file_size} bytes from {info.compress_size} "
                        f"{'stored' if stored else 'deflated'} bytes: impossible")
    size = Path(path).stat().st_size
    if info.header_offset + info.compress_size > size:
        raise DataError(f"{path} is truncated: zip member {info.filename} (entry '{name}') "
                        f"ends past byte {info.header_offset + info.compress_size}, the file "
                        f"has {size}")


def read_member(path, info: zipfile.ZipInfo, start: int, length: int, name: str) -> np.ndarray:
    """Bytes [start, start+length) of a zip member: read in place when stored (torch and
    np.savez store), through zipfile when compressed. No central directory is parsed again.
    A read that runs to the member's end is checked against the member's CRC-32 (what
    np.load checks): a flipped byte is an error, not a weight."""
    check_member(path, info, name)
    whole = start + length == info.file_size and start <= 1 << 20  # a header, not a storage
    if info.compress_type != zipfile.ZIP_STORED:
        with zipfile.ZipFile(path) as zf, zf.open(info) as member:
            prefix = _skip(member, start, whole)
            data = read_exact(member, length, path, name)
    else:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            head = f.read(30)
            if len(head) != 30 or head[:4] != b"PK\x03\x04":
                raise DataError(f"{path}: zip member {info.filename} has no local header")
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            prefix = _skip(f, start, whole)
            data = read_exact(f, length, path, name)
    if whole and zlib.crc32(data, zlib.crc32(prefix)) != info.CRC:
        raise DataError(f"{path} is corrupt: tensor '{name}' fails its zip member's CRC-32 check "
                        f"({info.filename})", hint="the file was damaged after it was written; "
                        "use another copy")
    return data
