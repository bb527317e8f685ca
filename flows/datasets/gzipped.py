"""Gunzip with ISA-L (``isal``): the same gzip format and errors as the standard library, at
about twice zlib's speed. MNIST's sources are 17-47 MB of gzip, so this is a visible part of data prep.
"""

from __future__ import annotations

import io
import zlib
from typing import IO

from isal import igzip, isal_zlib

MAGIC = b"\x1f\x8b"
# What a damaged stream raises: a truncated one EOFError, a bad header or CRC gzip.BadGzipFile
# (an OSError), a bad deflate block isal's error (or zlib's, for the standard library's reader).
ERRORS = (OSError, EOFError, zlib.error, isal_zlib.error)


def decompress(raw: bytes) -> bytes:
    """Every member of a gzip stream, decompressed (``gzip.decompress``)."""
    return igzip.decompress(raw)


def reader(raw: bytes) -> IO[bytes]:
    """A file object that decompresses ``raw`` as it is read: no whole decompressed copy in memory."""
    return igzip.GzipFile(fileobj=io.BytesIO(raw), mode="rb")
