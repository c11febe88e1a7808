"""PyTorch's pickles read without torch and without running code.

A restricted Unpickler resolves only the globals that rebuilding tensors and plain containers
needs, each to a stand-in of ours that records what the pickle describes (storage key, dtype,
offset, shape, stride); tensor data stays in the file until an entry is read. Anything else a
pickle names (os.system, builtins.eval, a model class) is refused before it could be called.
"""
from __future__ import annotations

import pickle
import pickletools
from typing import Callable

from ..errors import DataError
from .dtypes import DTYPES, STORAGE_CLASSES

MAGIC = 0x1950A86A20F9469CFC6C  # first object of torch's legacy (non-zip) format
LEGACY_PROTOCOL = 1001
# a view (stride 0, as expand makes) may read its storage more than once: up to this many
# bytes, for a broadcast buffer; 1.6 KB of pickle would otherwise ask for 6 GB
MAX_BROADCAST_BYTES = 64 << 20


class Refused(DataError):
    """A pickle named a global outside the allowed list (it was not called)."""


class Bad(Exception):
    """A stand-in saw arguments no torch.save writes; the reader adds the file's name."""


def _no_state(self, state):
    # BUILD on a stand-in could overwrite fields after they were checked: refuse it.
    raise Bad(f"a pickle tried to set the state of {type(self).__name__}")


class StorageType:
    """Stands for torch.FloatStorage & co; dtype None is torch.storage.UntypedStorage (bytes)."""

    __slots__ = ("cls", "dtype")
    __setstate__ = _no_state

    def __init__(self, cls: str, dtype: str | None):
        self.cls, self.dtype = cls, dtype


class TorchDtype:
    """Stands for torch.float32 & co (the dtype argument of _rebuild_tensor_v3)."""

    __slots__ = ("name",)
    __setstate__ = _no_state

    def __init__(self, name: str):
        self.name = name


class StorageRef:
    """A storage the pickle names by key; its bytes stay in the file."""

    __slots__ = ("key", "dtype", "numel", "nbytes")
    __setstate__ = _no_state

    def __init__(self, key: str, dtype: str | None, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.nbytes = numel * (DTYPES[dtype].itemsize if dtype else 1)


class TensorRef:
    """A tensor as a view of a storage: element offset, shape and strides (in elements)."""

    __slots__ = ("storage", "offset", "shape", "stride", "dtype")
    __setstate__ = _no_state

    def __init__(self, storage: StorageRef, offset: int, shape: tuple, stride: tuple, dtype: str):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride
        self.dtype = dtype

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize

    @property
    def numel(self) -> int:
        count = 1
        for n in self.shape:
            count *= n
        return count

    def span(self) -> tuple[int, int]:
        """The storage bytes [start, end) the view touches; (0, 0) when it is empty."""
        if self.numel == 0:
            return 0, 0
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        return self.offset * self.itemsize, (last + 1) * self.itemsize


class StateDict(dict):
    """Stands for collections.OrderedDict; dicts keep insertion order anyway."""

    def __setstate__(self, state):
        pass  # a state_dict's `_metadata` (module versions): not tensors


def _count(value, what: str) -> int:
    if type(value) is not int or value < 0:
        raise Bad(f"a tensor's {what} is {value!r}, not a count")
    return value


def _ints(values, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)):
        raise Bad(f"a tensor's {what} is {type(values).__name__}, not a tuple")
    return tuple(_count(v, what) for v in values)


def _tensor(storage, offset, size, stride, dtype: str | None) -> TensorRef:
    """Check a tensor against its storage before anything is read: the view must lie inside."""
    if not isinstance(storage, StorageRef):
        raise Bad(f"a tensor's storage is {type(storage).__name__}, not a storage")
    dtype = dtype or storage.dtype
    if dtype is None or (storage.dtype is not None and storage.dtype != dtype):
        raise Bad(f"storage '{storage.key}' holds {storage.dtype}, a tensor reads it as {dtype}")
    shape, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(shape) != len(stride):
        raise Bad(f"a tensor has size {list(shape)} but stride {list(stride)}")
    ref = TensorRef(storage, _count(offset, "storage offset"), shape, stride, dtype)
    end = ref.span()[1]
    if end > storage.nbytes:
        raise Bad(f"a tensor of size {list(shape)} reaches byte {end} of storage "
                  f"'{storage.key}', which holds {storage.nbytes} bytes")
    logical = ref.numel * ref.itemsize
    if logical > max(storage.nbytes, MAX_BROADCAST_BYTES):
        raise Bad(f"a tensor of size {list(shape)} and stride {list(stride)} repeats the "
                  f"{storage.nbytes} bytes of storage '{storage.key}' into {logical:,} bytes "
                  f"(a broadcast view may make at most {MAX_BROADCAST_BYTES:,})")
    return ref


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _tensor(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if not isinstance(dtype, TorchDtype):
        raise Bad(f"a tensor's dtype is {type(dtype).__name__}, not a torch dtype")
    return _tensor(storage, storage_offset, size, stride, dtype.name)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, TensorRef):
        raise Bad(f"a parameter holds {type(data).__name__}, not a tensor")
    return data


def _size(dims=()):
    return _ints(dims, "torch.Size")


def _encode(text, encoding="latin1"):
    # protocol 2 pickles bytes as _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding != "latin1":
        raise Bad("_codecs.encode is read only as protocol 2 writes bytes")
    return text.encode("latin1")


def _set(items=()):
    return set(items)


def _frozenset(items=()):
    return frozenset(items)


class Call:
    """A stand-in function as the pickle sees it. A plain function would take BUILD's state
    as attributes (its __defaults__ even) for the rest of the process; this refuses it."""

    __slots__ = ("fn",)
    __setstate__ = _no_state

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


ALLOWED: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): StateDict,
    ("torch._utils", "_rebuild_tensor"): Call(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): Call(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor_v3"): Call(_rebuild_tensor_v3),
    ("torch._utils", "_rebuild_parameter"): Call(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): Call(_rebuild_parameter),
    ("torch", "Size"): Call(_size),
    ("torch.storage", "UntypedStorage"): StorageType("UntypedStorage", None),
    ("builtins", "set"): Call(_set),
    ("builtins", "frozenset"): Call(_frozenset),
    ("__builtin__", "set"): Call(_set),  # protocol 2 spells builtins as Python 2 did
    ("__builtin__", "frozenset"): Call(_frozenset),
    ("_codecs", "encode"): Call(_encode),
    **{("torch", cls): StorageType(cls, dtype) for cls, dtype in STORAGE_CLASSES.items()},
    **{("torch", name): TorchDtype(name) for name in DTYPES},
}

# persistent_load's callback: (key, storage type, numel) -> the StorageRef, checked by the reader
Storages = Callable[[str, StorageType, int], StorageRef]


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, stream, path, storages: Storages | None):
        super().__init__(stream)
        self.path, self.storages = path, storages

    def find_class(self, module, name):
        found = ALLOWED.get((module, name))
        if found is None:
            raise Refused(f"refused to load '{module}.{name}' from {self.path}: only tensors "
                          "and plain containers are read (no code is run)")
        return found

    def persistent_load(self, pid):
        if self.storages is None or not isinstance(pid, tuple) or len(pid) not in (5, 6) \
                or pid[0] != "storage":
            raise Bad(f"unexpected persistent id {str(pid)[:80]}")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, StorageType) or not isinstance(key, str):
            raise Bad(f"unexpected persistent id {str(pid)[:80]}")
        if len(pid) == 6 and pid[5] is not None:
            raise Bad("storage views (torch < 0.4 files) are not read")
        return self.storages(key, stype, _count(numel, "storage size"))


def _prescan(stream) -> None:
    """Walk the opcodes once before unpickling, so that a length or memo index a pickle
    declares is checked against what is there before the unpickler allocates for it."""
    count = 0
    for op, arg, _pos in pickletools.genops(stream):
        count += 1
        if "PUT" in op.name or "GET" in op.name:
            if not isinstance(arg, int) or arg > count:
                raise Bad(f"memo index {arg!r} at opcode {count}")


def load(stream, path, where: str, storages: Storages | None = None):
    """One pickle from `stream` (positioned at it), restricted; leaves the stream after it."""
    start = stream.tell()
    try:
        _prescan(stream)
        stream.seek(start)
        return RestrictedUnpickler(stream, path, storages).load()
    except DataError:
        raise
    except Bad as e:
        raise DataError(f"{path} ({where}): {e}") from None
    except Exception as e:  # noqa: BLE001 -- a hostile pickle can raise anything; none escapes raw
        raise DataError(f"could not read {where} of {path}: {type(e).__name__}: {e}") from e
