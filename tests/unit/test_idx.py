"""IDX reader: round trips, the MNIST file set, and a corpus of broken inputs."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from flows.datasets import idx, mnist
from flows.datasets.validation import DataValidationError

LOCATION = "s3://bucket/mnist"
TRAIN_IMAGES, TRAIN_LABELS = idx.TRAIN_FILES
TEST_IMAGES, TEST_LABELS = idx.TEST_FILES


def raw_idx(code: int, shape: tuple[int, ...], payload: bytes, prefix: bytes = b"\x00\x00") -> bytes:
    """IDX bytes written by hand (not with idx.encode), so malformed files can be built too."""
    return prefix + bytes([code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the pixel range, always
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    return images, labels


def sample_files(train: int = 20, test: int = 10) -> dict[str, bytes]:
    (train_x, train_y), (test_x, test_y) = sample(train, 0), sample(test, 1)
    return {
        TRAIN_IMAGES: idx.encode(train_x),
        TRAIN_LABELS: idx.encode(train_y),
        TEST_IMAGES: idx.encode(test_x),
        TEST_LABELS: idx.encode(test_y),
    }


def reader(files: dict[str, bytes], calls: list[str] | None = None):
    def read(name: str) -> bytes:
        if calls is not None:
            calls.append(name)
        if name not in files:
            raise FileNotFoundError(name)
        return files[name]

    return read


# --- encode / decode -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
@pytest.mark.parametrize(
    ("dtype", "shape"),
    [
        ("u1", (3, 28, 28)),
        ("i1", (17,)),
        ("i2", (4, 5)),
        (">i4", (2, 3, 4)),  # a big-endian input array encodes the same
        ("f4", (6, 2)),
        ("f8", (1, 1, 1, 5)),
    ],
)
def test_round_trip(dtype, shape, compress):
    rng = np.random.default_rng(len(shape))
    native = np.dtype(dtype).newbyteorder("=")
    if native.kind == "f":
        array = rng.normal(0, 1e3, size=shape).astype(dtype)
        array.reshape(-1)[:3] = [np.inf, -0.0, np.nan]
    else:
        info = np.iinfo(native)
        array = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=native).astype(dtype)
        array.reshape(-1)[:2] = [info.min, info.max]
    raw = idx.encode(array, compress=compress)
    assert raw.startswith(b"\x1f\x8b") == compress
    decoded = idx.decode(raw, "f.idx")
    assert decoded.shape == shape
    assert decoded.dtype == native and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, array)


def test_encode_writes_the_documented_layout():
    array = np.array([[1, -2, 3], [258, 5, -32768]], dtype=np.int16)
    expected = bytes.fromhex("00000b02 00000002 00000003 0001fffe0003 010200058000")
    assert idx.encode(array, compress=False) == expected
    assert gzip.decompress(idx.encode(array)) == expected


def test_decode_reads_hand_written_mnist_style_files():
    images = raw_idx(0x08, (2, 2, 3), bytes(range(12)))
    labels = raw_idx(0x08, (2,), b"\x07\x03")
    assert images[:4] == b"\x00\x00\x08\x03" and labels[:4] == b"\x00\x00\x08\x01"
    np.testing.assert_array_equal(idx.decode(gzip.compress(images), "i"), np.arange(12).reshape(2, 2, 3))
    np.testing.assert_array_equal(idx.decode(labels, "l"), [7, 3])
    floats = raw_idx(0x0D, (2,), struct.pack(">2f", 1.5, -0.25))
    np.testing.assert_array_equal(idx.decode(floats, "f"), np.array([1.5, -0.25], dtype=np.float32))


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros(3, dtype=np.int64), "cannot hold dtype int64"),
        (np.zeros(3, dtype=np.uint16), "cannot hold dtype uint16"),
        (np.array(5, dtype=np.uint8), "1..255 dimensions, got 0"),
    ],
)
def test_encode_refuses_what_idx_cannot_hold(array, message):
    with pytest.raises(ValueError, match=message):
        idx.encode(array)


# --- the MNIST file set ----------------------------------------------------------------------------------------


def test_file_names():
    assert idx.MNIST_FILES == {"train": idx.TRAIN_FILES, "test": idx.TEST_FILES}
    assert idx.TRAIN_FILES == ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    assert idx.TEST_FILES == ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def test_mnist_splits_returns_pickle_scaled_arrays():
    calls: list[str] = []
    splits = idx.mnist_splits(reader(sample_files(), calls), LOCATION)
    assert sorted(calls) == sorted(idx.TRAIN_FILES + idx.TEST_FILES)
    assert set(splits) == {"train", "test"}
    for name, n, seed in [("train", 20, 0), ("test", 10, 1)]:
        pixels, labels = sample(n, seed)
        images, got_labels = splits[name]
        assert images.dtype == np.float32 and images.shape == (n, 28, 28)
        np.testing.assert_array_equal(images, (pixels / 256).astype(np.float32))
        assert images.min() == 0.0 and images.max() == np.float32(255 / 256)
        assert got_labels.dtype == np.int64
        np.testing.assert_array_equal(got_labels, labels)
    mnist.validate(splits, Path(LOCATION))  # the same rules the pickle reader applies


def test_mnist_splits_from_a_local_folder(tmp_path):
    for name, raw in sample_files(train=3, test=2).items():
        (tmp_path / name).write_bytes(raw)
    splits = idx.mnist_splits(lambda name: (tmp_path / name).read_bytes(), str(tmp_path))
    assert [len(splits[s][0]) for s in ("train", "test")] == [3, 2]
    (tmp_path / TEST_IMAGES).unlink()
    with pytest.raises(DataValidationError) as err:
        idx.mnist_splits(lambda name: (tmp_path / name).read_bytes(), str(tmp_path))
    assert (err.value.file, err.value.field, err.value.rule) == (str(tmp_path / TEST_IMAGES), "file", "exists")


# --- the corpus of broken inputs -------------------------------------------------------------------------------


def _replace(name: str, make):
    def mutate(files: dict[str, bytes]) -> None:
        files[name] = make(files[name])

    return mutate


def _with_array(name: str, array: np.ndarray, compress: bool = True):
    return _replace(name, lambda _: idx.encode(array, compress=compress))


def _plain(name: str, edit):
    """Edit the decompressed IDX bytes of ``name`` and store them gzip-compressed again."""
    return _replace(name, lambda raw: gzip.compress(edit(gzip.decompress(raw))))


def _flip_middle_byte(raw: bytes) -> bytes:
    middle = len(raw) // 2
    return raw[:middle] + bytes([raw[middle] ^ 0xFF]) + raw[middle + 1 :]


def _delete(name: str):
    return lambda files: files.pop(name)


HUGE = raw_idx(0x08, (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), bytes(16))
RNG = np.random.default_rng(7)
# (mutation of the valid file set, broken file, field, rule substring, detail substring)
CORPUS = {
    "wrong magic": (
        _plain(TRAIN_IMAGES, lambda d: b"\x08\x03" + d[2:]),
        TRAIN_IMAGES,
        "magic",
        "two zero bytes",
        "found 0x0803",
    ),
    "unknown type code": (
        _plain(TRAIN_LABELS, lambda d: d[:2] + b"\x0a" + d[3:]),
        TRAIN_LABELS,
        "magic",
        "known type code",
        "found type code 0x0A",
    ),
    "truncated gzip": (
        _replace(TEST_IMAGES, lambda raw: raw[: len(raw) // 2]),
        TEST_IMAGES,
        "file",
        "readable gzip stream",
        "EOFError",
    ),
    "corrupt gzip": (_replace(TEST_IMAGES, _flip_middle_byte), TEST_IMAGES, "file", "readable gzip stream", ""),
    "non-gzip garbage": (
        _replace(TRAIN_IMAGES, lambda _: b"<Error><Code>AccessDenied</Code></Error>"),
        TRAIN_IMAGES,
        "magic",
        "two zero bytes",
        "found 0x3C45",
    ),
    "empty file": (_replace(TEST_LABELS, lambda _: b""), TEST_LABELS, "file", "not empty", "0 bytes"),
    "empty gzip": (_replace(TEST_LABELS, lambda _: gzip.compress(b"")), TEST_LABELS, "header", "complete", "found 0"),
    "header cut in the dimensions": (
        _plain(TRAIN_IMAGES, lambda d: d[:9]),
        TRAIN_IMAGES,
        "header",
        "complete header (16 bytes for 3 dimensions)",
        "found 9",
    ),
    "zero dimensions": (
        _replace(TRAIN_LABELS, lambda _: b"\x00\x00\x08\x00"),
        TRAIN_LABELS,
        "dimensions",
        "at least one dimension",
        "",
    ),
    "truncated payload": (
        _plain(TRAIN_IMAGES, lambda d: d[:-10]),
        TRAIN_IMAGES,
        "payload",
        "not truncated",
        "need 15680 bytes, found 15670 (10 missing)",
    ),
    "trailing bytes": (
        _plain(TEST_LABELS, lambda d: d + b"\x01\x02\x03"),
        TEST_LABELS,
        "payload",
        "no trailing bytes",
        "need 10 bytes, found 13 (3 extra)",
    ),
    "huge size in the header": (
        _replace(TRAIN_IMAGES, lambda _: gzip.compress(HUGE)),
        TRAIN_IMAGES,
        "payload",
        "not truncated",
        f"need {(2**32 - 1) ** 3} bytes, found 16",
    ),
    "one label too few": (
        _with_array(TRAIN_LABELS, np.zeros(19, dtype=np.uint8)),
        TRAIN_LABELS,
        "train.labels",
        "one label per image",
        "20 images, 19 labels",
    ),
    "images 27x28": (
        _with_array(TEST_IMAGES, np.zeros((10, 27, 28), dtype=np.uint8)),
        TEST_IMAGES,
        "test.images",
        "shape (n, 28, 28)",
        "(10, 27, 28)",
    ),
    "images 2-dim": (
        _with_array(TRAIN_IMAGES, np.zeros((20, 784), dtype=np.uint8), compress=False),
        TRAIN_IMAGES,
        "train.images",
        "shape (n, 28, 28)",
        "(20, 784)",
    ),
    "no images": (
        _with_array(TEST_IMAGES, np.zeros((0, 28, 28), dtype=np.uint8)),
        TEST_IMAGES,
        "test.images",
        "at least one image",
        "0 images",
    ),
    "labels out of 0..9": (
        _with_array(TEST_LABELS, np.array([0, 1, 10, 3, 4, 5, 255, 7, 8, 9], dtype=np.uint8)),
        TEST_LABELS,
        "test.labels",
        "labels in 0..9",
        "2 label(s) outside, range [0, 255]",
    ),
    "labels 2-dim": (
        _with_array(TRAIN_LABELS, np.zeros((20, 1), dtype=np.uint8)),
        TRAIN_LABELS,
        "train.labels",
        "shape (n,)",
        "(20, 1)",
    ),
    "int32 images": (
        _with_array(TRAIN_IMAGES, RNG.integers(0, 256, (20, 28, 28)).astype(np.int32)),
        TRAIN_IMAGES,
        "train.images",
        "uint8 pixels",
        "found int32",
    ),
    "float64 labels": (
        _with_array(TEST_LABELS, np.zeros(10)),
        TEST_LABELS,
        "test.labels",
        "uint8 labels",
        "found float64",
    ),
    "missing file": (_delete(TEST_LABELS), TEST_LABELS, "file", "exists", "no such file"),
}


@pytest.mark.parametrize(("mutate", "name", "field", "rule", "detail"), CORPUS.values(), ids=CORPUS.keys())
def test_broken_input_names_file_field_and_rule(mutate, name, field, rule, detail):
    files = sample_files()
    mutate(files)
    with pytest.raises(DataValidationError) as err:
        idx.mnist_splits(reader(files), LOCATION + "/")
    file = f"{LOCATION}/{name}"
    assert (err.value.file, err.value.field) == (file, field)
    assert rule in err.value.rule
    assert detail in err.value.detail
    assert file in str(err.value)


def test_each_corpus_case_breaks_only_its_own_file():
    """Guard the corpus: the unmutated set passes, and each mutation changes exactly the file it blames."""
    assert set(idx.mnist_splits(reader(sample_files()), LOCATION)) == {"train", "test"}
    for case, (mutate, name, *_) in CORPUS.items():
        before, after = sample_files(), sample_files()
        mutate(after)
        changed = {n for n in before if before.get(n) != after.get(n)}
        assert changed == {name}, case


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_huge_header_fails_fast_without_allocating(compress):
    raw = gzip.compress(HUGE) if compress else HUGE
    tracemalloc.start()
    try:
        with pytest.raises(DataValidationError) as err:
            idx.decode(raw, "huge.idx")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (err.value.field, err.value.rule) == ("payload", "complete payload (not truncated)")
    assert peak < 1_000_000, f"peak {peak} bytes"  # the claimed size was never allocated


def test_eight_bit_pixels_prepare_the_same_version_with_their_own_type_rule():
    """IDX's uint8 pixels kept through the shuffle and scaled once when normalized: the same tables
    and manifest (moments, profile, normalization) as from the pixels converted to float at read."""
    read = reader(sample_files(train=60, test=20))
    options = dict(seed=3, val_size=10, limit_rows=None, min_class_share=0.1, max_duplicate_fraction=0.5)
    floats = mnist.prepare(idx.mnist_splits(read, LOCATION), LOCATION, **options)
    eight_bit_splits = idx.mnist_splits(read, LOCATION, eight_bit=True)
    assert {name: images.dtype for name, (images, _) in eight_bit_splits.items()} == {
        "train": np.uint8,
        "test": np.uint8,
    }
    eight_bit = mnist.prepare(eight_bit_splits, LOCATION, eight_bit=True, **options)
    for name, split in floats[1].items():
        assert split.table().equals(eight_bit[1][name].table()), name
    assert floats[2] == eight_bit[2]
    rules = [(check["rule"], check["status"]) for check in eight_bit[0].to_dict()["checks"]]
    assert rules == [
        ("8-bit pixels" if rule == "float pixels" else rule, status)
        for rule, status in ((c["rule"], c["status"]) for c in floats[0].to_dict()["checks"])
    ]


def test_eight_bit_splits_must_hold_eight_bit_pixels():
    splits = idx.mnist_splits(reader(sample_files(train=5, test=3)), LOCATION)  # floats
    with pytest.raises(DataValidationError, match="8-bit pixels"):
        mnist.validate(splits, Path(LOCATION), eight_bit=True)
