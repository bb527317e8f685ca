"""Dataset locations: a local directory or ``s3://bucket/prefix`` on AWS or any S3-compatible store.

One PyArrow filesystem serves the manifest, the Parquet splits and Ray Data's reads. The S3
endpoint comes from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (e.g. MinIO, moto), the region
from ``AWS_REGION`` / ``AWS_DEFAULT_REGION``; credentials from the standard AWS chain (environment,
``~/.aws``, the instance profile of a cloud node).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

S3 = "s3://"


def is_s3(location: str | Path) -> bool:
    return str(location).startswith(S3)


def normalize(location: str | Path) -> str:
    """An absolute local path, or the ``s3://`` URI without a trailing slash."""
    return str(location).rstrip("/") if is_s3(location) else str(Path(location).resolve())


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    # Explicit keys travel with the filesystem into Ray Data's read tasks, whose processes may not
    # have this environment (a local Ray started earlier); without keys each node uses its own chain.
    keys = {
        "access_key": os.environ.get("AWS_ACCESS_KEY_ID"),
        "secret_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
        "session_token": os.environ.get("AWS_SESSION_TOKEN"),
    }
    keys = keys if keys["access_key"] and keys["secret_key"] else {}
    return pafs.S3FileSystem(endpoint_override=endpoint, region=region, **keys)


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``location`` and the path within it."""
    if is_s3(location):
        return s3_filesystem(), normalize(location).removeprefix(S3)
    return pafs.LocalFileSystem(), normalize(location)


def read_bytes(location: str | Path) -> bytes:
    filesystem, path = resolve(location)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def join(location: str | Path, name: str) -> str:
    return f"{normalize(location)}/{name}"


@contextlib.contextmanager
def parquet_reader_v1() -> Iterator[None]:
    """Ray Data's first Parquet reader for the ``read_parquet`` calls in the block.

    The default (DataSourceV2) lists files in a task that starts 32 footer-reading actors per read
    (``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS``), new processes every run: on this project's 2-core
    machine a one-file read took 3 to 7 s that way, and 0.2 s with V1, which reads the footers in
    the driver. The dataset keeps the choice (it copies the context it was created under).
    """
    import ray.data  # here: the rest of this module serves processes that never start Ray

    context = ray.data.DataContext.get_current()
    previous, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        yield
    finally:
        context.use_datasource_v2 = previous
