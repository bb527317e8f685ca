"""Where data prep reads its sources: a local path, ``s3://bucket/key`` or
``abfss://container@account.dfs.core.windows.net/path`` (Azure Blob Storage / ADLS Gen2).

S3 goes through boto3 with the standard credential chain (environment, ``~/.aws``, SSO, the
instance profile of a cloud node) and any S3-compatible endpoint: ``SKYTRAIN_S3_ENDPOINT_URL``,
else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (MinIO, moto, ...). Azure goes through the same
PyArrow filesystem as the dataset store (``ray_jobs/storage.py``: the account's key, a SAS token, a
service principal or the node's managed identity; ``SKYTRAIN_AZURE_ENDPOINT`` for Azurite). A
missing file, object or blob is bad input (``DataValidationError``: never retried), and so is a
credential Azure refuses (``PermissionError``); a refused connection is transient (the I/O tasks
retry it).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from flows.datasets.validation import DataValidationError
from ray_jobs import storage

CHUNK = 1 << 20
MISSING_CODES = frozenset({"NoSuchKey", "404", "NoSuchBucket", "NotFound"})
# How PyArrow words Azure's refusal of a credential: "Azure Error: [AuthorizationFailure] 403 ...".
AZURE_DENIED = re.compile(r"Azure Error: \[\w*\] 40[13] ")
WHERE = "a local path or s3://bucket/key (or abfss://container@account.dfs.core.windows.net/path)"


def s3_client():
    """An S3 client for the endpoint, region and credentials the environment names now."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=10, read_timeout=60)
    return boto3.client("s3", endpoint_url=storage.s3_endpoint(), region_name=storage.s3_region(), config=config)


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix(storage.S3).partition("/")
    if not bucket:
        raise DataValidationError(uri, "source", "s3://bucket/key", "no bucket in the URI")
    return bucket, key


def join(location: str, name: str) -> str:
    return f"{location.rstrip('/')}/{name}" if storage.is_remote(location) else str(Path(location) / name)


def _missing(uri: str, detail: str) -> DataValidationError:
    return DataValidationError(uri, "file", "exists", detail)


def _local(uri: str) -> Path:
    """A local source's path; a URI of a scheme no source can have (``ftp://``) is refused as such."""
    if scheme := storage.unsupported_scheme(uri):
        raise DataValidationError(uri, "source", WHERE, f"unsupported scheme '{scheme}://'")
    return Path(uri)


def _s3_body(uri: str):
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    try:
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in MISSING_CODES:
            raise _missing(uri, f"no such object ({code})") from error
        raise


def _azure_stream(uri: str):
    """An Azure blob, open for reading through PyArrow."""
    try:
        storage.split_azure(uri)
    except ValueError as error:
        raise DataValidationError(uri, "source", WHERE, str(error)) from error
    filesystem, path = storage.resolve(uri)  # ValueError for a bad endpoint setting or key
    try:
        return filesystem.open_input_stream(path)
    except FileNotFoundError as error:  # no such blob, or no such container
        raise _missing(uri, "no such blob") from error
    except OSError as error:
        if AZURE_DENIED.search(str(error)):  # a wrong key or a missing role: no second try will pass
            raise PermissionError(f"{uri}: Azure refused the credential: {str(error).splitlines()[0]}") from error
        raise  # a refused connection, a timeout, a 5xx: transient


def read_bytes(uri: str) -> bytes:
    """A source file's whole content."""
    if storage.is_s3(uri):
        return _s3_body(uri).read()
    if storage.is_azure(uri):
        with _azure_stream(uri) as stream:
            return stream.read()
    path = _local(uri)
    if not path.is_file():
        raise _missing(uri, "no such file")
    return path.read_bytes()


def sha256(uri: str) -> str:
    """A source file's sha256, read in chunks."""
    digest = hashlib.sha256()
    if storage.is_s3(uri):
        for block in _s3_body(uri).iter_chunks(CHUNK):
            digest.update(block)
        return digest.hexdigest()
    if storage.is_azure(uri):
        with _azure_stream(uri) as stream:
            for block in iter(lambda: stream.read(CHUNK), b""):
                digest.update(block)
        return digest.hexdigest()
    path = _local(uri)
    if not path.is_file():
        raise _missing(uri, "no such file")
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def files_sha256(location: str, names: tuple[str, ...]) -> str:
    """One hash of several files in a folder or under a prefix (their names and contents)."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}:{sha256(join(location, name))}\n".encode())
    return digest.hexdigest()
