"""The data-quality statistics on integer features (IDX's 8-bit pixels), computed a block of rows
at a time: the same figures as on the same values held as floats."""

from __future__ import annotations

import numpy as np

from flows.datasets import quality


def rows_spanning_blocks(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(quality.ROWS_PER_BLOCK * 2 + 37, 12), dtype=np.uint8)
    pixels[100] = pixels[7]  # a duplicate in the first block of an earlier row
    pixels[-1] = pixels[3]  # and one in the last, partial block
    return pixels


def test_moments_of_integers_equal_those_of_the_same_values_as_floats():
    pixels = rows_spanning_blocks(0)
    mean, squares = quality.column_moments(pixels)
    float_mean, float_squares = quality.column_moments(pixels.astype(np.float32))
    np.testing.assert_array_equal(mean, float_mean)  # sums of integers in float64 are exact
    np.testing.assert_array_equal(squares, float_squares)
    np.testing.assert_allclose(mean, pixels.mean(axis=0))


def test_duplicates_among_integers_are_counted_as_among_floats():
    pixels = rows_spanning_blocks(1)
    labels = np.zeros(len(pixels), np.int64)
    assert quality.duplicate_count(pixels, labels) == 2
    assert quality.duplicate_count(pixels.astype(np.float32), labels) == 2
    labels[-1] = 1  # same pixels, another label: no longer a duplicate row
    assert quality.duplicate_count(pixels, labels) == 1
