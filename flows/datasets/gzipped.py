"""Gunzip with ISA-L (``isal``): the same gzip format and errors as the standard library, at
about twice zlib's speed. MNIST's sources are 17-47 MB of gzip, so this is a visible part of data prep.
"""

from __future__ import annotations

import io
import zlib

from isal import igzip, isal_zlib

MAGIC = b"\x1f\x8b"
# What a damaged stream raises: a truncated one EOFError, a bad header or CRC gzip.BadGzipFile
# (an OSError), a bad deflate block isal's error (or zlib's, for the standard library's reader).
ERRORS = (OSError, EOFError, zlib.error, isal_zlib.error)


def decompress(raw: bytes) -> bytes:
    """Every member of a gzip stream, decompressed (``gzip.decompress``)."""
    return igzip.decompress(raw)


def reader(raw: bytes) -> io.BufferedReader:
    """A file object that decompresses ``raw`` as it is read: no whole decompressed copy in memory.

    The buffered reader of isal's gzip reader, the one ``igzip.GzipFile`` reads through: its
    ``readinto`` decompresses into the caller's buffer, where ``GzipFile.readinto`` (the
    ``io.BufferedIOBase`` default) reads a new ``bytes`` and copies it (156 MB: 0.07 s against 0.21 s).
    isal is pinned (pyproject), and ``tests/unit/test_array_pickle.py`` reads through this.
    """
    return io.BufferedReader(igzip._IGzipReader(io.BytesIO(raw)), buffer_size=igzip.READ_BUFFER_SIZE)
