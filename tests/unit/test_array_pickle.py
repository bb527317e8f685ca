"""The restricted unpickler data prep reads MNIST's pickle with: numpy arrays, nothing else."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct

import numpy as np
import pytest

from flows.datasets import array_pickle, mnist
from flows.datasets.validation import DataValidationError


def _arrays():
    rng = np.random.default_rng(0)
    return (
        (rng.random((5, 784), dtype=np.float32), rng.integers(0, 10, 5)),
        [np.asfortranarray(rng.random((3, 4))), np.arange(6, dtype=">i4").reshape(2, 3)],
        "a label",
    )


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_arrays_come_back_equal_and_read_only(protocol):
    original = _arrays()
    loaded = array_pickle.load(io.BytesIO(pickle.dumps(original, protocol=protocol)))
    assert isinstance(loaded, tuple) and isinstance(loaded[1], list) and loaded[2] == "a label"
    for before, after in zip([*original[0], *original[1]], [*loaded[0], *loaded[1]]):
        assert after.dtype == before.dtype and after.shape == before.shape
        np.testing.assert_array_equal(after, before)
        assert not after.flags.owndata  # a view of the pickle's buffer, not a copy
    assert loaded[1][0].flags.f_contiguous


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_any_other_global_is_refused_before_it_runs():
    with pytest.raises(pickle.UnpicklingError, match="refused global .*system"):
        array_pickle.load(io.BytesIO(pickle.dumps((np.zeros(3), _Exploit()))))


def test_object_arrays_are_refused():
    with pytest.raises(pickle.UnpicklingError, match="plain values"):
        array_pickle.load(io.BytesIO(pickle.dumps(np.array([1, "a"], dtype=object))))


def test_mnist_parse_names_the_file_for_a_forbidden_pickle(tmp_path):
    import gzip

    raw = gzip.compress(pickle.dumps((_Exploit(), None, None)))
    with pytest.raises(DataValidationError) as err:
        mnist.parse(raw, "mnist.pkl.gz")
    assert (err.value.file, err.value.field) == ("mnist.pkl.gz", "file")
    assert "only numpy arrays" in str(err.value)


def test_large_buffers_are_read_into_numpy_memory_read_only_and_equal():
    """A buffer of at least LARGE_READ bytes is filled by ``readinto`` from the gzip stream (huge pages)."""
    import gzip

    from flows.datasets import gzipped

    images = np.random.default_rng(1).random((700, 784), dtype=np.float32)  # 2.2 MB: one large read
    labels = np.arange(700) % 10
    raw = gzip.compress(pickle.dumps((images, labels), protocol=2))
    with gzipped.reader(raw) as stream:
        loaded_images, loaded_labels = array_pickle.load(stream)
    assert images.nbytes >= array_pickle.LARGE_READ > loaded_labels.nbytes
    np.testing.assert_array_equal(loaded_images, images)
    np.testing.assert_array_equal(loaded_labels, labels)
    assert isinstance(loaded_images.base, np.ndarray)  # the numpy buffer the stream filled
    assert not loaded_images.flags.writeable and not loaded_labels.flags.writeable


def test_a_truncated_large_buffer_fails_the_parse_with_the_file_named():
    import gzip

    images = np.zeros((700, 784), dtype=np.float32)
    raw = gzip.compress(pickle.dumps((images, None, None), protocol=2))
    cut = gzip.compress(gzip.decompress(raw)[: images.nbytes // 2])  # a whole gzip stream, half the pickle
    with pytest.raises(DataValidationError) as err:
        mnist.parse(cut, "mnist.pkl.gz")
    assert (err.value.file, err.value.field) == ("mnist.pkl.gz", "file")
    assert "truncated" in str(err.value)


class _Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 did (BINSTRING), the way MNIST's pickle holds its arrays' data."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj: bytes) -> None:
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _python2_pickle(value) -> bytes:
    out = io.BytesIO()
    _Python2Pickler(out, protocol=2).dump(value)
    return out.getvalue()


def _eight_bit_images(rows: int, seed: int = 0) -> np.ndarray:
    """Floats that are whole multiples of 1/256 in [0, 1), as MNIST's pixels; 700 rows span 3 chunks."""
    pixels = np.random.default_rng(seed).integers(0, 256, (rows, 784))
    return (pixels / 256).astype(np.float32)


def _dumps(value, protocol) -> bytes:
    return _python2_pickle(value) if protocol == "python2" else pickle.dumps(value, protocol=protocol)


@pytest.mark.parametrize("protocol", ["python2", 3, 4])
@pytest.mark.parametrize("order", ["C", "F"])
def test_eight_bit_floats_are_read_as_bytes(protocol, order):
    images = np.asarray(_eight_bit_images(700), order=order)
    assert images.size > array_pickle.CHUNK_VALUES and images.nbytes >= array_pickle.LARGE_READ
    labels = np.arange(700) % 10
    loaded_images, loaded_labels = array_pickle.load(
        io.BytesIO(_dumps((images, labels), protocol)), eight_bit_scale=256
    )
    assert isinstance(loaded_images, array_pickle.Scaled) and loaded_images.scale == 256
    assert loaded_images.values.dtype == np.uint8 and not loaded_images.values.flags.writeable
    np.testing.assert_array_equal(loaded_images.values, images * 256)
    assert loaded_images.floats().tobytes() == images.tobytes()  # bit for bit, in either order
    np.testing.assert_array_equal(loaded_labels, labels)


@pytest.mark.parametrize("bad", [0.3, np.nan, np.inf, 1.0, -1 / 256, 0.5 + 1 / 1024])
@pytest.mark.parametrize("where", [0, array_pickle.CHUNK_VALUES + 5, -1])  # first, middle, last chunk
def test_a_value_that_is_not_eight_bit_keeps_the_array_as_floats(bad, where):
    images = _eight_bit_images(700)
    images.reshape(-1)[where] = bad
    loaded = array_pickle.load(io.BytesIO(_python2_pickle(images)), eight_bit_scale=256)
    assert isinstance(loaded, np.ndarray) and loaded.dtype == np.float32
    assert loaded.tobytes() == images.tobytes()


@pytest.mark.parametrize("protocol", [2, 5])
def test_eight_bit_reads_only_arrays_whose_data_follows_their_dtype(protocol):
    """Python 3's protocol 2 encodes bytes as text, protocol 5 pickles the data before the dtype:
    those arrays come back as floats, as without ``eight_bit_scale``."""
    images = _eight_bit_images(700)
    loaded = array_pickle.load(io.BytesIO(pickle.dumps(images, protocol=protocol)), eight_bit_scale=256)
    assert isinstance(loaded, np.ndarray) and loaded.tobytes() == images.tobytes()


def test_eight_bit_leaves_other_dtypes_and_small_arrays_alone():
    wide = (_eight_bit_images(700).astype(np.float64), np.arange(400_000, dtype=np.int32))
    small = _eight_bit_images(10)  # under LARGE_READ
    loaded = array_pickle.load(io.BytesIO(_python2_pickle((*wide, small))), eight_bit_scale=256)
    for before, after in zip((*wide, small), loaded):
        assert isinstance(after, np.ndarray) and after.dtype == before.dtype
        np.testing.assert_array_equal(after, before)


def _mnist_like(test_value: float | None = None) -> tuple[bytes, tuple]:
    splits = tuple((_eight_bit_images(700, seed), np.arange(700) % 10) for seed in range(3))
    if test_value is not None:
        splits[2][0][5, 5] = test_value
    return gzip.compress(_python2_pickle(splits)), splits


def test_parse_eight_bit_prepares_the_same_version_as_the_floats():
    raw, _ = _mnist_like()
    splits, eight_bit = mnist.parse_eight_bit(raw, "mnist.pkl.gz")
    assert eight_bit and {images.dtype for images, _ in splits.values()} == {np.dtype(np.uint8)}
    options = dict(seed=3, val_size=100, limit_rows=None, min_class_share=0.05, max_duplicate_fraction=0.5)
    floats = mnist.prepare(mnist.parse(raw, "mnist.pkl.gz"), "mnist.pkl.gz", **options)
    bytes_ = mnist.prepare(splits, "mnist.pkl.gz", eight_bit=True, **options)
    for name, split in floats[1].items():
        assert split.table().equals(bytes_[1][name].table()), name
    assert floats[2] == bytes_[2]


def test_parse_eight_bit_gives_floats_everywhere_when_one_image_is_not():
    raw, original = _mnist_like(test_value=0.3)
    splits, eight_bit = mnist.parse_eight_bit(raw, "mnist.pkl.gz")
    assert not eight_bit
    for (images, labels), (before, before_labels) in zip(splits.values(), original):
        assert images.dtype == np.float32 and images.tobytes() == before.tobytes()
        np.testing.assert_array_equal(labels, before_labels)


def test_a_large_array_of_a_protocol_5_pickle_loads():
    """Pickle's own BYTEARRAY8 could not take the numpy buffer a large read returns (a TypeError)."""
    images = np.random.default_rng(2).random((700, 784), dtype=np.float32)
    loaded = array_pickle.load(io.BytesIO(pickle.dumps(images, protocol=5)))
    assert loaded.tobytes() == images.tobytes() and isinstance(loaded.base, np.ndarray)


def test_a_truncated_eight_bit_buffer_fails_the_parse_with_the_file_named():
    raw, _ = _mnist_like()
    cut = gzip.compress(gzip.decompress(raw)[: 700 * 784 * 3])  # ends inside the first images' data
    with pytest.raises(DataValidationError) as err:
        mnist.parse_eight_bit(cut, "mnist.pkl.gz")
    assert (err.value.file, err.value.field) == ("mnist.pkl.gz", "file")
    assert "truncated" in str(err.value)
