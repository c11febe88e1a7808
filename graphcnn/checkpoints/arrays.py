"""Named arrays from .npz and .npy files (`run --input`, `--calibrate`, `--data`, the mnist1d
cache), read through the checkpoint layer, in three steps, each before the next costs anything:

1. names, from the zip's directory alone: a missing array, or one nothing reads, is refused
   before any member is opened (an extra 1 GiB array is never inflated);
2. dtypes and shapes, from each wanted member's .npy header, checked against what the caller
   expects and against the member's (the file's) size (npz_io), before any data is allocated;
3. values, converted to the dtype wanted explicitly and checked after the conversion: 1e300
   is inf as float32, complex would lose its imaginary part, an int64 above 2**24 is not
   exact as float32.

Every failure is a DataError naming the file and the array.

    arrays = read_arrays("in.npz", {"x": Want(("N", 1, 40))}, what="--input")
"""
from __future__ import annotations

import os
import stat
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ml_dtypes
import numpy as np

from ..errors import DataError
from . import npz_io
from .dtypes import DTYPES, FLOATS, dtype_name
from .entry import Entry, reading

__all__ = ["TRAINING", "Want", "array_names", "convert", "read_arrays", "training_arrays"]


@dataclass(frozen=True)
class Want:
    """What one array must be. `shape`: None for any, else one item per axis: an int is that
    axis's size, anything else (a name such as "N", or None) lets it be any size. `dtype`: what
    the values become ("float32", "int64", "uint8", ...), or None to keep the stored dtype
    (complex is refused either way). `required`: whether a missing array is an error.
    `exact`: the stored dtype must already be `dtype`, refused from the header otherwise (a
    file graphcnn wrote itself, such as a training checkpoint: another dtype means another
    writer, not data to convert)."""

    shape: tuple | None = None
    dtype: str | None = "float32"
    required: bool = True
    exact: bool = False


# The .npz of `--data` and of the mnist1d cache: x and y, optionally x_test and y_test; labels
# keep their dtype (class indices, or mse targets), train.data checks them against the spec.
TRAINING = {"x": Want(), "y": Want(dtype=None), "x_test": Want(required=False),
            "y_test": Want(dtype=None, required=False)}


def training_arrays(path, what: str = "--data") -> dict[str, np.ndarray]:
    """x, y (and x_test, y_test) of a training .npz; other arrays are left unread."""
    return read_arrays(path, TRAINING, what, extra="ignore")


def read_arrays(path, expected: dict[str, Want], what: str, *, single: str | None = None,
                extra: str = "refuse", notes: list[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays `expected` names (file order), each checked and converted as its Want says.
    A .npy file is read as the one array `single` when that is given, refused otherwise.
    `extra`: "refuse" arrays nothing expects, or "ignore" them (they are never opened).
    `notes` (a list) collects one line per array converted between integers and floats."""
    path = Path(path)

    def choose(names: list[str]) -> list[str]:
        return _chosen(names, expected, path, what, extra)

    with _saying(what, path):
        entries = _entries(path, what, single, choose)
        for entry in entries.values():  # every header checked before any data is read
            _check(entry, expected[entry.name], _where(what, path, entry.name))
        return {name: convert(entry.read(), expected[name].dtype, _where(what, path, name),
                              notes) for name, entry in entries.items()}


def array_names(path, what: str, single: str | None = None) -> list[str]:
    """The array names of an .npz in file order, from its directory only ([single] for a .npy)."""
    names: list[str] = []
    with _saying(what, Path(path)):
        _entries(Path(path), what, single, lambda found: names.extend(found) or [])
    return names


@contextmanager
def _saying(what: str, path: Path):
    """Errors from the checkpoint layer below say which option's file they are about."""
    try:
        yield
    except DataError as e:
        if not e.message.startswith(what):
            e.message = f"{what} {e.message}" if e.message.startswith(str(path)) else \
                f"{what}: {e.message}"
            e.args = (e.render(),)
        raise


def _where(what: str, path: Path, name: str) -> str:
    return f"{what} {path}: array '{name}'"


def _entries(path: Path, what: str, single: str | None,
             choose: Callable[[list[str]], list[str]]) -> dict[str, Entry]:
    """Entries (headers read) of the arrays `choose` keeps from the file's array names."""
    if _kind(path, what, single) == "npy":
        return {name: npz_io.npy_entry(path, name) for name in choose([single])}
    with reading(path), zipfile.ZipFile(path) as zf:
        members, others = npz_io.members(zf)
        if not members:
            raise DataError(f"{what} {path} is a zip holding no .npy arrays",
                            expected="an .npz (np.savez)",
                            received=", ".join(others[:5]) or "an empty archive")
        return {name: npz_io.member_entry(path, zf, name, members[name])
                for name in choose(list(members))}


def _kind(path: Path, what: str, single: str | None) -> str:
    """"npy" or "npz", told by the first bytes; anything else is refused."""
    expected = "an .npz (np.savez)" + (" or a .npy (np.save)" if single else "")
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise DataError(f"{what}: cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{what} {path} is " + ("a folder" if stat.S_ISDIR(mode) else
                                                 "not a regular file"), expected=expected)
    with reading(path), open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise DataError(f"{what} {path} is empty", expected=expected)
    if head.startswith(npz_io.MAGIC[:6]):
        if single is None:
            raise DataError(f"{what} {path} is a single .npy array, not named arrays",
                            expected=expected,
                            hint="np.savez(path, name=array, ...) writes an .npz")
        return "npy"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "npz"
    raise DataError(f"{what} {path} is neither an .npz nor a .npy file", expected=expected,
                    received=f"a file starting {head!r}")


def _chosen(names: list[str], expected: dict[str, Want], path: Path, what: str,
            extra: str) -> list[str]:
    """The names to read; missing and (unless ignored) unexpected ones refused by name."""
    missing = [n for n, want in expected.items() if want.required and n not in names]
    if missing:
        raise DataError(f"{what} {path} has no array " + ", ".join(f"'{n}'" for n in missing),
                        expected=", ".join(expected), received=", ".join(names) or "no arrays")
    unexpected = [n for n in names if n not in expected]
    if unexpected and extra == "refuse":
        raise DataError(f"{what} {path} holds arrays nothing reads: "
                        + ", ".join(f"'{n}'" for n in unexpected[:5]),
                        expected=", ".join(expected))
    return [n for n in names if n in expected]


def _check(entry: Entry, want: Want, where: str) -> None:
    """The header against the Want: rank and fixed sizes; complex refused before reading."""
    if want.shape is not None:
        fits = len(entry.shape) == len(want.shape) and all(
            not isinstance(w, int) or w == n for w, n in zip(want.shape, entry.shape))
        if not fits:
            raise DataError(f"{where} has shape {list(entry.shape)}",
                            expected="[" + ", ".join(map(str, want.shape)) + "]")
    if entry.dtype.startswith("complex"):
        raise _complex(where, entry.dtype)
    if want.exact and entry.dtype != want.dtype:
        raise DataError(f"{where} is {entry.dtype}", expected=want.dtype, received=entry.dtype)


def _complex(where: str, dtype: str) -> DataError:
    return DataError(f"{where} is {dtype}: its imaginary part would be lost",
                     expected="real numbers", received=dtype)


def convert(array: np.ndarray, dtype: str | None, where: str,
            notes: list[str] | None = None) -> np.ndarray:
    """`array` as `dtype` (None: as it is), refused where the values would change: float
    overflow (finite before, inf after), integers a float cannot hold exactly, floats that
    are not whole numbers (or out of range) for an integer dtype, complex, strings, objects."""
    stored = dtype_name(array.dtype)
    if array.dtype.kind == "c":
        raise _complex(where, str(array.dtype))
    if stored is None or stored.startswith("complex"):
        raise DataError(f"{where} has dtype {array.dtype}", expected="real numbers")
    if dtype is None or stored == dtype:
        return array
    floats = stored in FLOATS
    out = _to_float(array, dtype, where) if dtype in FLOATS else _to_int(array, dtype, where)
    if notes is not None and floats != (dtype in FLOATS):
        notes.append(f"{where}: converted from {stored} to {dtype}")
    return out


def _to_float(array: np.ndarray, dtype: str, where: str) -> np.ndarray:
    target = DTYPES[dtype]
    if array.dtype.kind in "iu" and array.size:
        _exact_integers(array, target, dtype, where)
    with np.errstate(over="ignore", invalid="ignore"):
        out = array.astype(target)
    lost = np.isfinite(array) & ~np.isfinite(out)  # NaN/inf already there are left to callers
    if lost.any():
        first = np.unravel_index(int(np.argmax(lost)), array.shape)
        index = tuple(int(i) for i in first)
        raise DataError(f"{where} has {int(lost.sum())} value(s) that overflow {dtype} (first "
                        f"at index {index}: {float(array[index])!r})",
                        expected=f"values {dtype} holds")
    return out


def _exact_integers(array: np.ndarray, target: np.dtype, dtype: str, where: str) -> None:
    """Integers past 2**(mantissa bits + 1) would be rounded (int64 into float32: past 2**24)."""
    exact = 2 ** (ml_dtypes.finfo(target).nmant + 1)
    if array.dtype.itemsize * 8 <= ml_dtypes.finfo(target).nmant:
        return  # uint8 and int8 into any float, int16 into float32: always exact
    low, high = int(array.min()), int(array.max())
    if max(abs(low), abs(high)) > exact:
        raise DataError(f"{where} holds integers a {dtype} cannot hold exactly",
                        expected=f"magnitudes up to {exact}", received=f"{low} to {high}")


def _to_int(array: np.ndarray, dtype: str, where: str) -> np.ndarray:
    target = DTYPES[dtype]
    low, high = (0, 1) if target.kind == "b" else (np.iinfo(target).min, np.iinfo(target).max)
    if array.size:
        whole = array.dtype.kind in "biu" or bool(np.all(np.isfinite(array) &
                                                         (array == np.round(array))))
        if not whole:
            raise DataError(f"{where} holds values that are not whole numbers",
                            expected=dtype, received=str(array.dtype))
        number = int if array.dtype.kind in "biu" else float
        lo, hi = number(array.min()), number(array.max())  # Python compares these exactly
        if lo < low or hi > high:
            raise DataError(f"{where} holds values outside {dtype}'s range",
                            expected=f"{low} to {high}", received=f"{lo} to {hi}")
    return array.astype(target)
