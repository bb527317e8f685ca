"""The restricted unpickler data prep reads MNIST's pickle with: numpy arrays, nothing else."""

from __future__ import annotations

import io
import os
import pickle

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
