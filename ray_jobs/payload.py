"""A ``/predict`` request body, checked against the served version's signature before any scoring.

The body is MLflow's scoring format for tensors: ``{"inputs": [row, ...]}`` (``"instances"`` is
accepted for the same), each row a number array of the signature's input shape, e.g. 26 numbers
for the diamonds regressor or a 1x28x28 array for the CNN (784 numbers flat are taken too).
Everything wrong with a body is a ``PayloadError`` carrying the HTTP status to answer with: 400 for
a body that is not JSON, 413 for one too big or with too many rows, 422 for the wrong shape or type.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson

ROWS_KEYS = ("inputs", "instances")
FLOAT32_MAX = float(np.finfo(np.float32).max)


class PayloadError(ValueError):
    """A request body the model cannot take: the status to answer and why, naming the field and rule."""

    def __init__(self, status: int, field: str, rule: str, detail: str = "") -> None:
        self.status, self.field, self.rule = status, field, rule
        message = f"field '{field}' breaks rule '{rule}'"
        super().__init__(f"{message}: {detail}" if detail else message)


def _no_constants(name: str) -> float:
    raise PayloadError(422, "inputs", "finite numbers only", f"found {name}")


def _first_non_number(rows: list[Any], path: str = "inputs") -> tuple[str, Any] | None:
    """Where the first value that is not a JSON number is, and the value (for the error)."""
    for i, value in enumerate(rows):
        where = f"{path}[{i}]"
        if isinstance(value, list):
            if (found := _first_non_number(value, where)) is not None:
                return found
        elif isinstance(value, bool) or not isinstance(value, int | float):
            return where, value
    return None


def _numbers(rows: list[Any], field: str, maybe_booleans: bool) -> np.ndarray:
    """The rows as one float64 array. Only a body that is not all numbers is walked value by value
    (to name the first bad one): NumPy alone would take a boolean or a numeric string as a number."""
    try:
        values = np.array(rows)
    except ValueError:  # nested lists of unequal lengths
        values = None
    if values is None or values.dtype.kind not in "iuf" or maybe_booleans:
        if (found := _first_non_number(rows, field)) is not None:
            where, value = found
            raise PayloadError(422, where, "a number", f"got {json.dumps(value)[:80]}")
        if values is None:
            raise PayloadError(422, field, "rows of equal shape", "the rows' lists differ in length")
    return values.astype(np.float64)


def parse(body: bytes, row_shape: tuple[int, ...], max_rows: int, max_bytes: int) -> np.ndarray:
    """The rows of ``body`` as float32, shaped ``(n, *row_shape)``; ``PayloadError`` for anything else."""
    if len(body) > max_bytes:
        raise PayloadError(413, "body", f"at most {max_bytes} bytes", f"got {len(body)}")
    try:
        # orjson parses an MNIST image's 16 KB body in a sixth of json's 0.24 ms. Whatever it refuses
        # (NaN, Infinity, numbers beyond a double's range, lone surrogates, broken JSON) goes to json,
        # whose answer (a value, or the 400 / 422 below) is the one the body gets.
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            document = json.loads(body, parse_constant=_no_constants)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PayloadError(400, "body", "valid JSON", str(error)) from None
    if not isinstance(document, dict):
        raise PayloadError(
            422, "body", "a JSON object", f'got {type(document).__name__}; send {{"inputs": [row, ...]}}'
        )
    keys = [key for key in ROWS_KEYS if key in document]
    unknown = sorted(set(document) - set(ROWS_KEYS))
    if len(keys) != 1 or unknown:
        detail = f"unknown fields {unknown}" if unknown else f"got fields {sorted(document)}"
        raise PayloadError(422, "body", "exactly one of 'inputs' or 'instances'", detail)
    field = keys[0]
    rows = document[field]
    if not isinstance(rows, list) or not rows:
        raise PayloadError(422, field, "a non-empty list of rows", f"got {json.dumps(rows)[:80]}")
    if len(rows) > max_rows:
        raise PayloadError(413, field, f"at most {max_rows} rows per request", f"got {len(rows)}")
    values = _numbers(rows, field, maybe_booleans=b"true" in body or b"false" in body)
    size = math.prod(row_shape)
    if values.shape[1:] != row_shape and values.shape[1:] != (size,):
        flat = f" (or {size} numbers flat)" if len(row_shape) > 1 else ""
        expected = "x".join(map(str, row_shape))
        got = "x".join(map(str, values.shape[1:])) or "a single number"
        raise PayloadError(422, field, f"each row of shape {expected}{flat}", f"got rows of shape {got}")
    if np.abs(values).max() > FLOAT32_MAX:
        raise PayloadError(422, field, "values within float32's range", f"largest is {np.abs(values).max():.3g}")
    return values.astype(np.float32).reshape(-1, *row_shape)
