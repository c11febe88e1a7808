"""Weight checkpoints read and written without PyTorch and without running pickled code.

    ckpt = read_checkpoint("resnet18.pth")        # .npz, .safetensors, torch zip or legacy
    ckpt.entries["conv1.weight"].read_float32()   # one tensor, read only now
    write_checkpoint("out.safetensors", arrays, format_for("out.safetensors"))

The format is told by the file's first bytes, not its name. Everything a header says (sizes,
offsets, shapes) is checked against the file before data is read, and every failure is a
DataError naming the file (and the entry inside it).
"""
from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import DataError
from . import containers, npz_io, safetensors_io, torchread, torchsave
from .dtypes import array_dtype_name
from .entry import Checkpoint, Entry, reading
from .sniff import sniff
from .torchpickle import TensorRef

WRITE_SUFFIXES = {".npz": "npz", ".safetensors": "safetensors", ".pth": "torch-zip",
                  ".pt": "torch-zip", ".bin": "torch-zip"}
WRITERS = {"npz": npz_io.write, "safetensors": safetensors_io.write, "torch-zip": torchsave.write}

__all__ = ["Checkpoint", "Entry", "format_for", "read_checkpoint", "write_checkpoint"]


def format_for(path) -> str:
    """The format to write `path` in, by its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise DataError(f"cannot tell which checkpoint format to write {path} in",
                        expected="a name ending " + ", ".join(WRITE_SUFFIXES),
                        received=f"'{suffix}'" if suffix else "no suffix")
    return WRITE_SUFFIXES[suffix]


def read_checkpoint(path, key: str | None = None) -> Checkpoint:
    """The named tensors of a checkpoint, from its headers; data is read per entry."""
    path = Path(path)
    fmt = sniff(path)
    if fmt == "safetensors":
        return _flat(path, fmt, *safetensors_io.read(path), key)
    if fmt == "torch-legacy":
        return _nested(path, fmt, *torchread.read_legacy(path), key)
    with reading(path), zipfile.ZipFile(path) as zf:
        if fmt == "npz":
            return _flat(path, fmt, *npz_io.read(path, zf), key)
        return _nested(path, fmt, *torchread.read_zip(path, zf), key)


def _flat(path: Path, fmt: str, entries: list[Entry], ignored: list[str], key) -> Checkpoint:
    """npz and safetensors hold names only: `key` selects the names under `key.`."""
    container, names = containers.select_flat([e.name for e in entries], key, path)
    by_name = {e.name: e for e in entries}
    cut = len(container) + 1 if container else 0
    kept = [_renamed(by_name[n], n[cut:]) for n in names]
    return _stripped(Checkpoint(path, fmt, container, None, {}, ignored), kept)


def _nested(path: Path, fmt: str, top, span, key) -> Checkpoint:
    container, level, beside = containers.choose(top, key, _is_tensor, path)
    tensors, ignored = containers.flatten(level, _is_tensor, path)
    entries = [torchread.entry_of(name, ref, span, path) for name, ref in tensors.items()]
    return _stripped(Checkpoint(path, fmt, container, None, {}, beside + ignored), entries)


def _is_tensor(obj) -> bool:
    return isinstance(obj, TensorRef)


def _stripped(ckpt: Checkpoint, entries: list[Entry]) -> Checkpoint:
    """The checkpoint with its entries, less the prefix they all share."""
    ckpt.prefix = containers.strip_prefix(e.name for e in entries)
    cut = len(ckpt.prefix or "")
    ckpt.entries = {e.name[cut:]: _renamed(e, e.name[cut:]) for e in entries}
    return ckpt


def _renamed(entry: Entry, name: str) -> Entry:
    return entry if entry.name == name else replace(entry, name=name)


def write_checkpoint(path, arrays: dict[str, np.ndarray], fmt: str) -> None:
    """Write `arrays` to exactly `path` in `fmt` ("npz", "safetensors", "torch-zip")."""
    if fmt not in WRITERS:
        raise DataError(f"unknown checkpoint format '{fmt}' for {path}",
                        expected=", ".join(WRITERS))
    checked = {}
    for name, array in arrays.items():
        if not isinstance(name, str) or not name:
            raise DataError(f"cannot write {path}: tensor names must be non-empty strings",
                            received=repr(name))
        checked[name] = np.asarray(array)
        array_dtype_name(checked[name], name, path)
    try:
        WRITERS[fmt](path, checked)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 -- OSError, or whatever the safetensors library raises
        raise DataError(f"could not write {path} ({fmt}): {type(e).__name__}: {e}") from e
