"""Dataset locations: a local directory, ``s3://bucket/prefix`` (AWS or any S3-compatible store) or
``abfss://container@account.dfs.core.windows.net/prefix`` (Azure Blob Storage / ADLS Gen2).

One PyArrow filesystem serves the manifest, the Parquet splits, Ray Data's reads and Ray Train's
checkpoints. S3: the endpoint (MinIO, moto, ...) comes from ``SKYTRAIN_S3_ENDPOINT_URL``, else the
standard ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; the region from ``AWS_REGION`` /
``AWS_DEFAULT_REGION``; credentials from the standard AWS chain (environment, ``~/.aws``, the
instance profile of a cloud node).

Azure: ``abfs://`` and ``abfss://`` both mean HTTPS (as Hadoop's ABFS driver does by default) and are
written ``abfss://`` from here on. The account's key (``AZURE_STORAGE_ACCOUNT_KEY`` or the Azure CLI's
``AZURE_STORAGE_KEY``), else a SAS token (``AZURE_STORAGE_SAS_TOKEN``), else a service principal
(``AZURE_CLIENT_ID``, ``AZURE_TENANT_ID``, ``AZURE_CLIENT_SECRET``), else Azure's default credential
chain (workload identity, the Azure CLI's login, the managed identity of an Azure node). The
endpoints are the account's own unless ``SKYTRAIN_AZURE_ENDPOINT`` (``http://127.0.0.1:10000`` for
Azurite, a private endpoint) and ``SKYTRAIN_AZURE_DFS_ENDPOINT`` (default: the same) say otherwise.
PyArrow finds out per container whether the account has a hierarchical namespace (ADLS Gen2: real
folders, atomic renames) or a flat one (Blob Storage, Azurite: folders are name prefixes); both work.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

S3 = "s3://"
AZURE = "abfss://"  # how an Azure location is written once normalized
AZURE_SCHEMES = ("abfss://", "abfs://")
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")  # a URI's scheme, e.g. ftp in ftp://host/x
# abfs[s]://<container>@<account><suffix>[/<path>], the suffix naming the service, e.g. .dfs.core.windows.net
AZURE_URI = re.compile(r"^abfss?://(?P<container>[^@/]+)@(?P<account>[a-z0-9]+)(?P<suffix>\.[^/]+)(?:/(?P<path>.*))?$")
AZURE_SUFFIXES = (".dfs.core.windows.net", ".blob.core.windows.net")  # PyArrow's defaults: Azure's public cloud
AZURE_ENDPOINT_VARIABLE = "SKYTRAIN_AZURE_ENDPOINT"
AZURE_DFS_ENDPOINT_VARIABLE = "SKYTRAIN_AZURE_DFS_ENDPOINT"
AZURE_KEY_VARIABLES = ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_KEY")
# A service principal: PyArrow's option of each part, read from AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_CLIENT_SECRET.
AZURE_PRINCIPAL_VARIABLES = {
    option: f"AZURE_{option.upper()}" for option in ("client_id", "tenant_id", "client_secret")
}


def is_s3(location: str | Path) -> bool:
    return str(location).startswith(S3)


def is_azure(location: str | Path) -> bool:
    return str(location).startswith(AZURE_SCHEMES)


def is_remote(location: str | Path) -> bool:
    """An object store (S3 or Azure): no local path, and no folder rename in one step to publish with."""
    return is_s3(location) or is_azure(location)


def unsupported_scheme(location: str | Path) -> str | None:
    """The scheme of a URI no location here can be (``ftp``, ``gs``, ``file``, ...); None for a
    local path, ``s3://`` or ``abfs(s)://``. Without this check ``ftp://host/x`` reads as a local
    folder named ``ftp:``."""
    match = SCHEME.match(str(location))
    return match.group(1) if match and not is_remote(location) else None


def split_azure(location: str | Path) -> tuple[str, str, str, str]:
    """Container, account, host suffix and path of an ``abfs(s)://`` URI; ``ValueError`` when it is not one."""
    match = AZURE_URI.match(str(location))
    if match is None:
        raise ValueError(
            f"{location}: not an Azure location: write abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/PATH"
        )
    return match["container"], match["account"], match["suffix"], (match["path"] or "").strip("/")


def normalize(location: str | Path) -> str:
    """An absolute local path, or the URI without a trailing slash (Azure's as ``abfss://``);
    ``ValueError`` for another scheme or a malformed Azure URI."""
    if scheme := unsupported_scheme(location):
        raise ValueError(
            f"{location}: unsupported scheme '{scheme}://': use a local path or s3://bucket/key "
            "(or abfss://container@account.dfs.core.windows.net/path)"
        )
    if is_s3(location):
        return str(location).rstrip("/")
    if is_azure(location):
        container, account, suffix, path = split_azure(location)
        return f"{AZURE}{container}@{account}{suffix}/{path}".rstrip("/")
    return str(Path(location).resolve())


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


def _azure_endpoint(variable: str, url: str) -> tuple[str, str]:
    """(scheme, host:port) of an endpoint setting such as ``http://127.0.0.1:10000``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{variable}={url!r}: expected http(s)://HOST[:PORT], e.g. http://127.0.0.1:10000 (Azurite)")
    return parts.scheme, parts.netloc


def azure_endpoints(suffix: str = AZURE_SUFFIXES[0]) -> dict[str, str]:
    """PyArrow's endpoint options: the settings' endpoints, else the account's own in the cloud its
    URI names (nothing to set for Azure's public cloud, PyArrow's default)."""
    if blob := os.environ.get(AZURE_ENDPOINT_VARIABLE):
        blob_scheme, blob_authority = _azure_endpoint(AZURE_ENDPOINT_VARIABLE, blob)
        dfs = os.environ.get(AZURE_DFS_ENDPOINT_VARIABLE)
        dfs_scheme, dfs_authority = (
            _azure_endpoint(AZURE_DFS_ENDPOINT_VARIABLE, dfs) if dfs else (blob_scheme, blob_authority)
        )
        return {
            "blob_storage_authority": blob_authority,
            "blob_storage_scheme": blob_scheme,
            "dfs_storage_authority": dfs_authority,
            "dfs_storage_scheme": dfs_scheme,
        }
    if suffix in AZURE_SUFFIXES:
        return {}
    # Another cloud (e.g. .dfs.core.chinacloudapi.cn): a leading dot makes PyArrow put the account in front.
    blob_suffix = suffix.replace(".dfs.", ".blob.", 1)
    return {"blob_storage_authority": blob_suffix, "dfs_storage_authority": blob_suffix.replace(".blob.", ".dfs.", 1)}


def azure_credentials(account: str) -> dict[str, str]:
    """The credential options from the environment; none: Azure's default credential chain.

    An account key applies only to its account: with ``AZURE_STORAGE_ACCOUNT`` naming another one
    it is left out. Explicit credentials travel with the filesystem into Ray Data's read tasks and
    Ray Train's workers (whose processes may lack this environment); without them every node uses
    its own identity.
    """
    key = next((name for name in AZURE_KEY_VARIABLES if os.environ.get(name)), None)
    if key and os.environ.get("AZURE_STORAGE_ACCOUNT", account) == account:
        try:  # PyArrow 25 aborts the whole process on a key that is not base64 (an uncaught C++ exception)
            base64.b64decode(os.environ[key], validate=True)
        except binascii.Error:
            raise ValueError(f"{key} is not an Azure storage account key (base64): check its value") from None
        return {"account_key": os.environ[key]}
    if sas := os.environ.get("AZURE_STORAGE_SAS_TOKEN"):
        return {"sas_token": sas.lstrip("?")}
    principal = {option: os.environ.get(variable) for option, variable in AZURE_PRINCIPAL_VARIABLES.items()}
    return principal if all(principal.values()) else {}


def azure_filesystem(account: str, suffix: str = AZURE_SUFFIXES[0]) -> pafs.AzureFileSystem:
    return pafs.AzureFileSystem(account, **azure_endpoints(suffix), **azure_credentials(account))


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``location`` and the path within it (a bucket's or container's name first)."""
    if is_s3(location):
        return s3_filesystem(), normalize(location).removeprefix(S3)
    if is_azure(location):
        container, account, suffix, path = split_azure(location)
        return azure_filesystem(account, suffix), f"{container}/{path}".rstrip("/")
    return pafs.LocalFileSystem(), normalize(location)


def uri(location: str | Path, path: str) -> str:
    """The location of ``path``, a path of ``location``'s filesystem (as ``resolve`` gives them)."""
    if is_s3(location):
        return S3 + path
    if is_azure(location):
        _, account, suffix, _ = split_azure(location)
        container, _, inside = path.partition("/")
        return f"{AZURE}{container}@{account}{suffix}/{inside}".rstrip("/")
    return path


def ray_storage(location: str | Path) -> tuple[str, pafs.FileSystem | None]:
    """Ray Train's ``storage_path`` and ``storage_filesystem`` for ``location``.

    Azure needs the filesystem given: Ray would resolve an ``abfss://`` URI itself with Azure's
    default credential only, blind to the key and endpoint settings above. Local paths and S3
    (whose endpoint and keys PyArrow reads from the same environment) Ray resolves itself.
    """
    if is_azure(location):
        filesystem, path = resolve(location)
        return path, filesystem
    return str(location), None


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
    """A file's modification time (seconds since the epoch; S3, Azure: when the object was written)."""
    filesystem, path = resolve(location)
    return filesystem.get_file_info(path).mtime.timestamp()


def subfolders(location: str | Path) -> list[str]:
    """The folders (S3, Azure: common prefixes) directly inside ``location``; none when it does not exist."""
    filesystem, path = resolve(location)
    found = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return [uri(location, info.path) for info in found if info.type == pafs.FileType.Directory]


def delete_folder(location: str | Path) -> None:
    filesystem, path = resolve(location)
    filesystem.delete_dir(path)


def join(location: str | Path, name: str) -> str:
    return f"{normalize(location)}/{name}"


@contextlib.contextmanager
def parquet_read(block_bytes: int | None = None) -> Iterator[None]:
    """Ray Data's settings for the ``read_parquet`` calls in the block; the dataset keeps them (it
    copies the context it was created under).

    Ray Data's first Parquet reader (V1): the default (DataSourceV2) lists files in a task that
    starts 32 footer-reading actors per read (``RAY_DATA_PARQUET_FOOTER_NUM_ACTORS``), new processes
    every run: on this project's 2-core machine a one-file read took 3 to 7 s that way, and 0.2 s
    with V1, which reads the footers in the driver.

    ``block_bytes``: the read hands on a block each time it has read about that many bytes (Ray
    Data's ``target_max_block_size``, 128 MiB by default, which also sets how many rows the reader
    decodes at a time). A read asked for more blocks than it has files otherwise reads a whole
    file's 128 MiB blocks and cuts each into pieces only then.
    """
    import ray.data  # here: the rest of this module serves processes that never start Ray

    context = ray.data.DataContext.get_current()
    previous = context.use_datasource_v2, context.target_max_block_size
    context.use_datasource_v2 = False
    if block_bytes is not None:
        context.target_max_block_size = block_bytes
    try:
        yield
    finally:
        context.use_datasource_v2, context.target_max_block_size = previous
