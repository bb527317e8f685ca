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

``load(..., eight_bit_scale=256)`` goes one step further for images whose pixels are 8-bit values
stored as floats (MNIST's are pixel / 256): a large float32 array is converted as it is read, a
chunk at a time, into one byte per value, and comes back as ``Scaled``. MNIST's 220 MB of floats are
then never in memory at all: 55 MB of bytes are (a process's first parse 0.51 -> 0.19 s here).
An array with any value that is not a whole multiple of 1 / scale in [0, 255 / scale] comes back
as the same floats as without it.
"""

from __future__ import annotations

import math
import pickle
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

# (module, name) a pickled ndarray refers to; numpy 2 pickles say numpy._core, older ones numpy.core.
_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
# Protocol 5 pickles carry an array as _frombuffer(buffer, dtype, shape, order).
_FROMBUFFER = {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}
# Python 3's protocol 0-2 pickles write bytes as _codecs.encode(str, "latin1").
_ALLOWED = _RECONSTRUCT | _FROMBUFFER | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


@dataclass(frozen=True)
class Scaled:
    """A float32 array read as bytes: ``values / scale`` are the pickled floats, exactly."""

    values: np.ndarray  # uint8, read-only
    scale: int

    def floats(self) -> np.ndarray:
        """The pickled float32 values (a new array; exact, for a power-of-two scale)."""
        return np.multiply(self.values, np.float32(1 / self.scale), dtype=np.float32)


class _Array:
    """Stands in for the ndarray under construction: keeps the state pickle hands to it."""

    __slots__ = ("shape", "dtype", "fortran", "data")

    def __setstate__(self, state: tuple) -> None:
        if len(state) == 5:  # (version, shape, dtype, is_fortran, raw data)
            state = state[1:]
        if len(state) != 4:
            raise pickle.UnpicklingError(f"unexpected ndarray state with {len(state)} fields")
        self.shape, self.dtype, self.fortran, self.data = state

    def array(self) -> np.ndarray | Scaled:
        if isinstance(self.data, Scaled):
            values = self.data.values
            values.flags.writeable = False
            return Scaled(self._shaped(values), self.data.scale)
        dtype = np.dtype(self.dtype)
        if dtype.hasobject or not isinstance(self.data, (bytes, bytearray, np.ndarray)):
            raise pickle.UnpicklingError(f"only arrays of plain values are read, not {dtype}")
        values = np.frombuffer(self.data, dtype=dtype)
        values.flags.writeable = False  # as over bytes: the arrays are the source's, callers copy
        return self._shaped(values)

    def _shaped(self, values: np.ndarray) -> np.ndarray:
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
# Floats converted to bytes at a time by an eight-bit read: 1 MiB, so the two buffers stay in cache.
CHUNK_VALUES = 2**18
FLOAT32 = np.dtype(np.float32)


def _fill(stream: IO[bytes], buffer: np.ndarray, total: int) -> None:
    """Fill ``buffer`` (any dtype) from ``stream``; ``total`` is the whole read's size, for the error."""
    view, filled = memoryview(buffer).cast("B"), 0
    while filled < len(view):
        count = stream.readinto(view[filled:])
        if not count:
            raise EOFError(f"pickle data was truncated: {filled} of {total} bytes of a buffer")
        filled += count


def _read_eight_bit(stream: IO[bytes], size: int, scale: int) -> Scaled | np.ndarray:
    """``size`` bytes of float32 values as ``Scaled`` bytes, converted a chunk at a time; the raw bytes
    of the floats (as a plain large read) once a value is not a whole multiple of 1 / scale in
    [0, 255 / scale]."""
    count = size // FLOAT32.itemsize
    out = np.empty(count, dtype=np.uint8)
    chunk = np.empty(min(count, CHUNK_VALUES), dtype=np.float32)
    scaled = np.empty_like(chunk)
    for lo in range(0, count, len(chunk)):
        floats, times = chunk[: count - lo], scaled[: count - lo]
        _fill(stream, floats, size)
        np.multiply(floats, np.float32(scale), out=times)
        # min and max propagate NaN: both in [0, 255] means every value is, and the cast is defined.
        exact = 0 <= times.min() and times.max() <= 255
        if exact:
            np.copyto(out[lo : lo + len(floats)], times, casting="unsafe")
            times -= out[lo : lo + len(floats)]
            exact = not times.any()
        if not exact:
            whole = np.empty(count, dtype=np.float32)
            np.multiply(out[:lo], np.float32(1 / scale), out=whole[:lo])
            whole[lo : lo + len(floats)] = floats
            _fill(stream, whole[lo + len(floats) :], size)
            return whole.view(np.uint8)
    return Scaled(out, scale)


class _LargeReadsIntoNumpy:
    """The stream the unpickler reads: a large ``read`` is a uint8 array filled by ``readinto``.

    ``eight_bit``: (scale, whether the next ``size`` bytes are a float32 array's data), for ``load``.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.readline = stream.readline
        self.eight_bit: tuple[int, Callable[[int], bool]] | None = None

    def read(self, size: int = -1) -> bytes | np.ndarray | Scaled:
        if size < LARGE_READ or not hasattr(self.stream, "readinto"):
            return self.stream.read(size)
        if self.eight_bit is not None and self.eight_bit[1](size):
            return _read_eight_bit(self.stream, size, self.eight_bit[0])
        buffer = np.empty(size, dtype=np.uint8)
        _fill(self.stream, buffer, size)
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

    def load_bytearray8(self) -> None:
        """A protocol 5 buffer. Pickle's own fills a new bytearray with what ``read`` returns, which
        refuses the numpy array a large read is here (every protocol 5 pickle with an array of 1 MiB
        or more failed to load); the buffer read is kept instead, as for the other opcodes."""
        (size,) = struct.unpack("<Q", self.read(8))
        if size > sys.maxsize:
            raise pickle.UnpicklingError("BYTEARRAY8 exceeds system's maximum size")
        self.append(self.read(size))

    dispatch = {**pickle._Unpickler.dispatch, pickle.BYTEARRAY8[0]: load_bytearray8}

    def float32_data_next(self, size: int) -> bool:
        """Whether the next ``size`` bytes are a native float32 array's data: an ndarray's pickled state
        is (version, shape, dtype, is_fortran, data), so its data is read right after its dtype and flag
        (Python 2's pickles and protocols 3-4; protocol 5 pickles the data first, so never there)."""
        stack = self.stack
        return (
            len(stack) >= 3
            and isinstance(stack[-1], bool)
            and isinstance(stack[-2], np.dtype)
            and stack[-2] == FLOAT32
            and isinstance(stack[-3], tuple)
            and all(isinstance(n, int) for n in stack[-3])
            and size == FLOAT32.itemsize * math.prod(stack[-3])
        )


def _arrays(value: Any) -> Any:
    if isinstance(value, _Array):
        return value.array()
    if isinstance(value, (tuple, list)):
        return type(value)(_arrays(item) for item in value)
    return value


def load(stream: IO[bytes], *, eight_bit_scale: int | None = None) -> Any:
    """The pickled object, its arrays numpy arrays over the pickle's own buffers (read-only ones
    over bytes).

    Python 2 pickles (MNIST's) are read with ``encoding="bytes"``: their array buffers arrive as
    bytes, not decoded to str. Raises ``pickle.UnpicklingError`` (or ``ValueError``) for a pickle
    that is not plain numpy arrays in tuples and lists.

    ``eight_bit_scale``: a float32 array of at least ``LARGE_READ`` bytes whose values are all whole
    multiples of 1 / scale in [0, 255 / scale] comes back as ``Scaled`` (uint8 values * scale), never
    held as floats; any other array as without it.
    """
    reader = _LargeReadsIntoNumpy(stream)
    unpickler = _Unpickler(reader, encoding="bytes")
    if eight_bit_scale is not None:
        reader.eight_bit = (eight_bit_scale, unpickler.float32_data_next)
    return _arrays(unpickler.load())
