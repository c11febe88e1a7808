"""Which format a checkpoint is in, told by its first bytes (a renamed file is still read)."""
from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import DataError
from .entry import reading
from .torchread import archive_dir, is_legacy

READ = "a .npz, a .safetensors, or a torch.save file (zip or legacy format)"


def sniff(path: Path) -> str:
    """"npz", "safetensors", "torch-zip" or "torch-legacy"."""
    if not path.is_file():
        raise DataError(f"no checkpoint file {path}" + (" (it is a folder)" if path.is_dir()
                                                         else ""))
    with reading(path):
        with open(path, "rb") as f:
            head = f.read(16)
        if not head:
            raise DataError(f"{path} is empty", expected=READ)
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            return _zip_kind(path)
        if head.startswith(b"\x93NUMPY"):
            raise DataError(f"{path} is a single .npy array, not named tensors", expected=READ,
                            hint="np.savez(path, name=array, ...) writes an .npz")
        if len(head) >= 9 and head[8:9] == b"{":
            return "safetensors"
        if head[:1] == b"\x80":
            with open(path, "rb") as f:
                if is_legacy(f, path):
                    return "torch-legacy"
    raise DataError(f"{path} is not a checkpoint format read here", expected=READ,
                    received=f"a file starting {head[:8]!r}")


def _zip_kind(path: Path) -> str:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names):
        archive_dir(names, path)  # exactly one
        return "torch-zip"
    if any(n.endswith(".npy") for n in names):
        return "npz"
    raise DataError(f"{path} is a zip holding neither <folder>/data.pkl (torch.save) nor .npy "
                    "arrays (np.savez)", expected=READ)
