"""Dataset locations: a local directory or ``s3://bucket/prefix`` on AWS or any S3-compatible store.

One PyArrow filesystem serves the manifest, the Parquet splits and Ray Data's reads. The S3
endpoint (MinIO, moto, any S3-compatible store) comes from ``SKYTRAIN_S3_ENDPOINT_URL``, else the
standard ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; the region from ``AWS_REGION`` /
``AWS_DEFAULT_REGION``; credentials from the standard AWS chain (environment, ``~/.aws``, the
instance profile of a cloud node).
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


ENDPOINT_VARIABLES = ("SKYTRAIN_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def s3_endpoint() -> str | None:
    """The S3 endpoint to use; None: AWS's own."""
    return next((os.environ[name] for name in ENDPOINT_VARIABLES if os.environ.get(name)), None)


def s3_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint, region = s3_endpoint(), s3_region()
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


def write_bytes(location: str | Path, data: bytes) -> None:
    filesystem, path = resolve(location)
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def is_file(location: str | Path) -> bool:
    filesystem, path = resolve(location)
    return filesystem.get_file_info(path).type == pafs.FileType.File


def modified(location: str | Path) -> float:
    """A file's modification time (seconds since the epoch; S3: when the object was written)."""
    filesystem, path = resolve(location)
    return filesystem.get_file_info(path).mtime.timestamp()


def subfolders(location: str | Path) -> list[str]:
    """The folders (S3: common prefixes) directly inside ``location``; none when it does not exist."""
    filesystem, path = resolve(location)
    found = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    prefix = S3 if is_s3(location) else ""
    return [prefix + info.path for info in found if info.type == pafs.FileType.Directory]


def delete_folder(location: str | Path) -> None:
    filesystem, path = resolve(location)
    filesystem.delete_dir(path)


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
