"""``/predict`` bodies: what is accepted, and the status and message for each kind of bad body."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ray_jobs.payload import PayloadError, parse

IMAGE, ROW = (1, 28, 28), (26,)
LIMITS = dict(max_rows=4, max_bytes=200_000)


def body(document) -> bytes:
    return json.dumps(document).encode()


def test_rows_in_the_signature_shape_or_flat_come_back_as_float32():
    rows = np.random.default_rng(0).random((3, *IMAGE))
    nested = parse(body({"inputs": rows.tolist()}), IMAGE, **LIMITS)
    flat = parse(body({"instances": rows.reshape(3, -1).tolist()}), IMAGE, **LIMITS)
    assert nested.dtype == flat.dtype == np.float32 and nested.shape == flat.shape == (3, *IMAGE)
    np.testing.assert_array_equal(nested, rows.astype(np.float32))
    np.testing.assert_array_equal(flat, nested)
    integers = parse(body({"inputs": [list(range(26))]}), ROW, **LIMITS)
    assert integers.tolist() == [list(map(float, range(26)))]


@pytest.mark.parametrize(
    ("raw", "status", "field", "message"),
    [
        (b"{not json", 400, "body", "valid JSON"),
        (b"\xff\xfe", 400, "body", "valid JSON"),
        (body([[0.0] * 26]), 422, "body", "a JSON object.*got list"),
        (
            body({"rows": [[0.0] * 26]}),
            422,
            "body",
            "exactly one of 'inputs' or 'instances'.*unknown fields \\['rows'\\]",
        ),
        (body({"inputs": [[0.0] * 26], "instances": []}), 422, "body", "exactly one of"),
        (body({"inputs": []}), 422, "inputs", "a non-empty list of rows"),
        (body({"inputs": [0.5, 1.5]}), 422, "inputs", "each row of shape 26.*got rows of shape a single number"),
        (body({"inputs": [[0.0] * 27]}), 422, "inputs", "each row of shape 26.*got rows of shape 27"),
        (body({"inputs": [[0.0] * 26, [0.0] * 25]}), 422, "inputs", "rows of equal shape"),
        (body({"inputs": [[0.0] * 25 + ["1"]]}), 422, "inputs\\[0\\]\\[25\\]", 'a number.*got "1"'),
        (body({"inputs": [[0.0] * 25 + [True]]}), 422, "inputs\\[0\\]\\[25\\]", "a number.*got true"),
        (body({"inputs": [[0.0] * 25 + [None]]}), 422, "inputs\\[0\\]\\[25\\]", "a number.*got null"),
        (b'{"inputs": [[NaN' + b", 0" * 25 + b"]]}", 422, "inputs", "finite numbers only.*NaN"),
        (b'{"inputs": [[0' + b", 0" * 24 + b", -Infinity]]}", 422, "inputs", "finite numbers only.*-Infinity"),
        (body({"inputs": [[1e39] + [0.0] * 25]}), 422, "inputs", "within float32's range"),
        (body({"inputs": [[0.0] * 26] * 5}), 413, "inputs", "at most 4 rows per request.*got 5"),
        (b" " * 200_001, 413, "body", "at most 200000 bytes"),
    ],
)
def test_bad_bodies_name_the_field_and_the_rule(raw, status, field, message):
    with pytest.raises(PayloadError, match=message) as caught:
        parse(raw, ROW, **LIMITS)
    assert caught.value.status == status
    assert caught.value.field.startswith(field.replace("\\", ""))
    assert str(caught.value).startswith(f"field '{caught.value.field}' breaks rule '{caught.value.rule}'")


def test_an_image_of_the_wrong_size_says_both_accepted_shapes():
    with pytest.raises(
        PayloadError, match="each row of shape 1x28x28 \\(or 784 numbers flat\\).*got rows of shape 28x28"
    ):
        parse(body({"inputs": np.zeros((2, 28, 28)).tolist()}), IMAGE, **LIMITS)


def test_what_the_fast_parser_refuses_gets_the_standard_librarys_answer():
    """orjson parses bodies first; a number beyond a double's range it refuses, json reads it as
    infinity, and the body gets the range rule's 422 as before orjson was used."""
    with pytest.raises(PayloadError, match="within float32's range.*largest is inf") as caught:
        parse(b'{"inputs": [[1e400' + b", 0" * 25 + b"]]}", ROW, **LIMITS)
    assert caught.value.status == 422
    huge = 2**70  # orjson reads it as a float, json as an int: the same row either way
    rows = parse(f'{{"inputs": [[{huge}{", 0" * 25}]]}}'.encode(), ROW, **LIMITS)
    assert rows.shape == (1, 26) and rows[0, 0] == np.float32(huge) and not rows[0, 1:].any()
