"""IDX: the format MNIST is distributed in (``train-images-idx3-ubyte.gz`` and friends).

An IDX file (usually gzip-compressed) is:

- 2 zero bytes;
- 1 type-code byte: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64;
- 1 byte: the number of dimensions ``d``;
- ``d`` big-endian uint32 sizes, one per dimension;
- the values, big-endian, row-major (the last dimension varies fastest).

MNIST images are type 0x08 with 3 dimensions ``(n, 28, 28)`` (magic 0x00000803); labels are type 0x08
with 1 dimension ``(n,)`` (magic 0x00000801). Every malformed input raises ``DataValidationError``
naming the file, the field and the rule; sizes are checked against the bytes actually present before
any array is built, so a header claiming absurd dimensions fails fast instead of allocating.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable

import numpy as np

from flows.datasets import gzipped
from flows.datasets.validation import DataValidationError, require

TRAIN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
MNIST_FILES = {"train": TRAIN_FILES, "test": TEST_FILES}

PREFIX = 4  # 2 zero bytes, type code, number of dimensions
# type code -> big-endian dtype of the values
TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# "u1", "i2", ... (kind + item size, any byte order) -> type code
CODES: dict[str, int] = {dtype.str[1:]: code for code, dtype in TYPES.items()}

SIDE = 28
CLASSES = 10
PIXEL_SCALE = 256  # pixel / 256: the scale of the bundled pickle (see flows.datasets.mnist)


def _known_types() -> str:
    return ", ".join(f"0x{code:02X} ({dtype.name})" for code, dtype in TYPES.items())


def _decompress(raw: bytes, file: str) -> bytes:
    """Gunzip ``raw`` when it starts with the gzip magic; otherwise return it unchanged."""
    require(len(raw) > 0, file, "file", "not empty", "the file has 0 bytes")
    if not raw.startswith(gzipped.MAGIC):
        return raw
    try:
        return gzipped.decompress(raw)
    except gzipped.ERRORS as exc:
        raise DataValidationError(
            file, "file", "readable gzip stream", f"{type(exc).__name__}: {exc} ({len(raw)} compressed bytes)"
        ) from exc


def _header(data: bytes, file: str) -> tuple[np.dtype, tuple[int, ...]]:
    """Parse the magic and the dimensions; return the big-endian dtype and the shape."""
    require(
        len(data) >= PREFIX,
        file,
        "header",
        "complete header (at least 4 bytes)",
        f"found {len(data)} byte(s)",
    )
    require(
        data[:2] == b"\x00\x00",
        file,
        "magic",
        "starts with two zero bytes",
        f"found 0x{data[:2].hex().upper()}, expected 0x0000 (IDX magic: 00 00 <type code> <dimensions>)",
    )
    code, ndim = data[2], data[3]
    require(
        code in TYPES,
        file,
        "magic",
        "known type code",
        f"found type code 0x{code:02X}, expected one of {_known_types()}",
    )
    require(ndim > 0, file, "dimensions", "at least one dimension", "the header declares 0 dimensions")
    end = PREFIX + 4 * ndim
    require(
        len(data) >= end,
        file,
        "header",
        f"complete header ({end} bytes for {ndim} dimensions)",
        f"found {len(data)} byte(s)",
    )
    shape = struct.unpack(f">{ndim}I", data[PREFIX:end])
    return TYPES[code], shape


def _check_payload(payload_size: int, dtype: np.dtype, shape: tuple[int, ...], file: str) -> None:
    """The payload must hold exactly prod(shape) values (Python ints: no overflow)."""
    expected = dtype.itemsize
    for size in shape:
        expected *= size
    require(
        payload_size >= expected,
        file,
        "payload",
        "complete payload (not truncated)",
        f"dimensions {shape} of {dtype.name} need {expected} bytes, found {payload_size} "
        f"({expected - payload_size} missing)",
    )
    require(
        payload_size <= expected,
        file,
        "payload",
        "no trailing bytes",
        f"dimensions {shape} of {dtype.name} need {expected} bytes, found {payload_size} "
        f"({payload_size - expected} extra)",
    )


def decode(raw: bytes, file: str) -> np.ndarray:
    """Decode gzip-compressed or plain IDX bytes into a native-endian array; ``file`` names it in errors."""
    data = _decompress(raw, file)
    dtype, shape = _header(data, file)
    offset = PREFIX + 4 * len(shape)
    _check_payload(len(data) - offset, dtype, shape, file)
    values = np.frombuffer(data, dtype=dtype, offset=offset)
    # Single bytes have no byte order: uint8 and int8 stay a view of ``data`` (read-only), not a copy.
    return values.astype(dtype.newbyteorder("="), copy=dtype.itemsize > 1).reshape(shape)


def encode(array: np.ndarray, *, compress: bool = True) -> bytes:
    """The inverse of ``decode``: IDX bytes for ``array`` (any byte order), gzip-compressed by default."""
    array = np.asarray(array)
    code = CODES.get(array.dtype.str[1:])
    if code is None:
        raise ValueError(f"IDX cannot hold dtype {array.dtype}; supported: {_known_types()}")
    if not 0 < array.ndim < 256:
        raise ValueError(f"IDX needs 1..255 dimensions, got {array.ndim}")
    if any(size >= 2**32 for size in array.shape):
        raise ValueError(f"IDX dimensions are uint32, got shape {array.shape}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=TYPES[code]).tobytes()
    return gzip.compress(data, compresslevel=6, mtime=0) if compress else data


def _where(location: str, name: str) -> str:
    return f"{location.rstrip('/')}/{name}"


def _read(read: Callable[[str], bytes], name: str, file: str) -> np.ndarray:
    """``read(name)`` then ``decode``; a missing file becomes a ``DataValidationError`` naming it."""
    try:
        raw = read(name)
    except FileNotFoundError as exc:
        raise DataValidationError(file, "file", "exists", f"no such file ({exc})") from exc
    return decode(raw, file)


def _check_images(images: np.ndarray, split: str, file: str) -> None:
    field = f"{split}.images"
    require(images.dtype == np.uint8, file, field, "uint8 pixels (type code 0x08)", f"found {images.dtype}")
    require(
        images.ndim == 3 and images.shape[1:] == (SIDE, SIDE),
        file,
        field,
        f"shape (n, {SIDE}, {SIDE})",
        f"found shape {images.shape}",
    )
    require(len(images) > 0, file, field, "at least one image", "found 0 images")


def _check_labels(labels: np.ndarray, images: np.ndarray, split: str, file: str) -> None:
    field = f"{split}.labels"
    require(labels.dtype == np.uint8, file, field, "uint8 labels (type code 0x08)", f"found {labels.dtype}")
    require(labels.ndim == 1, file, field, "shape (n,)", f"found shape {labels.shape}")
    require(
        len(labels) == len(images),
        file,
        field,
        "one label per image",
        f"{len(images)} images, {len(labels)} labels",
    )
    bad = labels >= CLASSES  # uint8: never negative
    require(
        not bad.any(),
        file,
        field,
        f"labels in 0..{CLASSES - 1}",
        f"{int(bad.sum())} label(s) outside, range [{labels.min()}, {labels.max()}]",
    )


def mnist_splits(
    read: Callable[[str], bytes], location: str, *, eight_bit: bool = False
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read and check the four standard MNIST IDX files through ``read(name)``.

    ``location`` (folder or prefix) only names the files in errors. Returns
    ``{"train": (images, labels), "test": (images, labels)}``: images float32 pixel / 256 shaped
    (n, 28, 28), labels int64 (the same values as the bundled pickle for the same data).
    ``eight_bit``: the images as read, uint8, for ``mnist.prepare(..., eight_bit=True)``, which
    scales them once while normalizing (no float copy of the whole set).
    """
    splits = {}
    for split, (images_name, labels_name) in MNIST_FILES.items():
        images_file, labels_file = _where(location, images_name), _where(location, labels_name)
        images = _read(read, images_name, images_file)
        _check_images(images, split, images_file)
        labels = _read(read, labels_name, labels_file)
        _check_labels(labels, images, split, labels_file)
        # One float32 array (x * 2**-8 is exactly x / 256), not a float copy then a divided one.
        pixels = images if eight_bit else np.multiply(images, np.float32(1 / PIXEL_SCALE), dtype=np.float32)
        splits[split] = (pixels, labels.astype(np.int64))
    return splits
