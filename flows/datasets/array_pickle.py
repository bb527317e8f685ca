"""Load a pickle of numpy arrays (the bundled MNIST's format) without numpy's unpickling.

Two reasons. Safety: only the globals a pickled array needs are resolved (numpy's ``_reconstruct``,
``ndarray`` and ``dtype``); a pickle naming anything else is refused before it runs, whatever its
checksum said. Speed: numpy's ``ndarray.__setstate__`` copies the pickle's buffer into a new
array; here the array is a read-only view of that buffer, so MNIST's 220 MB are allocated once,
not twice (on these VMs fresh memory costs more than the copy itself). A buffer of 1 MiB or more
is read straight into numpy memory (``readinto``) rather than into a ``bytes`` object: numpy asks
the kernel for huge pages for it (``madvise``), which a ``bytes`` object never gets, and filling
4 KiB pages was half the time of MNIST's gunzip (0.12 of 0.24 s, warm; more on fresh memory).
That is why the unpickler is Python's own pure-Python one: the C unpickler accepts ``bytes`` only
from ``read``. It resolves globals through the same ``find_class``, and MNIST's pickle is ~150
opcodes, so its speed does not show.
"""

from __future__ import annotations

import pickle
from typing import IO, Any

import numpy as np

# (module, name) a pickled ndarray refers to; numpy 2 pickles say numpy._core, older ones numpy.core.
_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
# Protocol 5 pickles carry an array as _frombuffer(buffer, dtype, shape, order).
_FROMBUFFER = {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}
# Python 3's protocol 0-2 pickles write bytes as _codecs.encode(str, "latin1").
_ALLOWED = _RECONSTRUCT | _FROMBUFFER | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _Array:
    """Stands in for the ndarray under construction: keeps the state pickle hands to it."""

    __slots__ = ("shape", "dtype", "fortran", "data")

    def __setstate__(self, state: tuple) -> None:
        if len(state) == 5:  # (version, shape, dtype, is_fortran, raw data)
            state = state[1:]
        if len(state) != 4:
            raise pickle.UnpicklingError(f"unexpected ndarray state with {len(state)} fields")
        self.shape, self.dtype, self.fortran, self.data = state

    def array(self) -> np.ndarray:
        dtype = np.dtype(self.dtype)
        if dtype.hasobject or not isinstance(self.data, (bytes, bytearray, np.ndarray)):
            raise pickle.UnpicklingError(f"only arrays of plain values are read, not {dtype}")
        values = np.frombuffer(self.data, dtype=dtype)
        values.flags.writeable = False  # as over bytes: the arrays are the source's, callers copy
        count = int(np.prod(self.shape, dtype=np.int64))
        if values.size != count:
            raise pickle.UnpicklingError(f"an array of shape {tuple(self.shape)} holds {values.size} values")
        return values.reshape(self.shape, order="F" if self.fortran else "C")


def _reconstruct(cls: Any, shape: Any, dtype: Any) -> _Array:
    return _Array()


def _frombuffer(data: Any, dtype: Any, shape: Any, order: str) -> _Array:
    array = _Array()
    array.__setstate__((shape, dtype, order == "F", bytes(data) if isinstance(data, memoryview) else data))
    return array


# Reads of at least this many bytes (an array's buffer, not an opcode's argument) go into numpy memory.
LARGE_READ = 2**20


class _LargeReadsIntoNumpy:
    """The stream the unpickler reads: a large ``read`` is a uint8 array filled by ``readinto``."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.readline = stream.readline

    def read(self, size: int = -1) -> bytes | np.ndarray:
        if size < LARGE_READ or not hasattr(self.stream, "readinto"):
            return self.stream.read(size)
        buffer = np.empty(size, dtype=np.uint8)
        view, filled = memoryview(buffer), 0
        while filled < size:
            count = self.stream.readinto(view[filled:])
            if not count:
                raise EOFError(f"pickle data was truncated: {filled} of {size} bytes of a buffer")
            filled += count
        return buffer


class _Unpickler(pickle._Unpickler):  # the pure-Python one: see the module's docstring
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays are read")
        if (module, name) in _RECONSTRUCT:
            return _reconstruct
        if (module, name) in _FROMBUFFER:
            return _frombuffer
        return {"ndarray": np.ndarray, "dtype": np.dtype}.get(name) or super().find_class(module, name)


def _arrays(value: Any) -> Any:
    if isinstance(value, _Array):
        return value.array()
    if isinstance(value, (tuple, list)):
        return type(value)(_arrays(item) for item in value)
    return value


def load(stream: IO[bytes]) -> Any:
    """The pickled object, its arrays numpy arrays over the pickle's own buffers (read-only ones
    over bytes).

    Python 2 pickles (MNIST's) are read with ``encoding="bytes"``: their array buffers arrive as
    bytes, not decoded to str. Raises ``pickle.UnpicklingError`` (or ``ValueError``) for a pickle
    that is not plain numpy arrays in tuples and lists.
    """
    return _arrays(_Unpickler(_LargeReadsIntoNumpy(stream), encoding="bytes").load())
