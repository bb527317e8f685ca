"""Azure Blob Storage as skytrain's source, dataset store and checkpoint store, against Azurite
(Microsoft's emulator, ``make test`` installs it) on 127.0.0.1.

PyArrow's AzureFileSystem asks the Data Lake (dfs) endpoint whether a container has a hierarchical
namespace (``HEAD <container>/?action=getAccessControl``); Azurite has no dfs API and answers 400,
which PyArrow reads as "flat namespace", and from then on it speaks only the Blob API, which
Azurite serves. So these tests run the flat-namespace (Blob Storage) mode, the mode of the account
``infra/terraform/azure`` makes; an ADLS Gen2 account's hierarchical mode is PyArrow's own code
path and is not exercised here. Azurite serves one account with a key made for the run.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import socket
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest

from flows.data_prep import prepare_diamonds, prepare_mnist, prepare_tabular
from flows.datasets import diamonds, sources, store
from flows.datasets.validation import DataValidationError
from flows.operations import is_transient
from flows.train import train
from ray_jobs import storage
from ray_jobs.dataset import load_split, read_manifest
from ray_jobs.settings import Settings
from tests.integration.test_data_sources import _mnist_idx_files
from tests.servers import Azurite, azurite_server, azurite_unavailable, free_ports


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    """Azurite, started at once and waited for only by the first test that uses it: its start (3 to
    35 s on 2 busy cores) overlaps the Prefect API's and Ray's when a test asks for it before them."""
    if reason := azurite_unavailable():
        pytest.skip(reason)
    with azurite_server(tmp_path_factory.mktemp("azurite")) as server:
        yield server


@dataclass
class Container:
    """A fresh container of the Azurite account, seen directly through PyArrow (not through skytrain's code)."""

    name: str
    account: str
    filesystem: pafs.AzureFileSystem

    def uri(self, path: str, scheme: str = "abfss") -> str:
        return f"{scheme}://{self.name}@{self.account}.dfs.core.windows.net/{path}"

    def put(self, path: str, data: bytes) -> None:
        with self.filesystem.open_output_stream(f"{self.name}/{path}") as stream:
            stream.write(data)

    def blobs(self, prefix: str) -> list[str]:
        """The blobs under ``prefix``, relative to it."""
        selector = pafs.FileSelector(f"{self.name}/{prefix}", recursive=True, allow_not_found=True)
        found = self.filesystem.get_file_info(selector)
        return sorted(
            info.path.removeprefix(f"{self.name}/{prefix}/") for info in found if info.type == pafs.FileType.File
        )


def _filesystem(server: Azurite) -> pafs.AzureFileSystem:
    authority = server.endpoint.removeprefix("http://")
    return pafs.AzureFileSystem(
        server.account,
        account_key=server.key,
        blob_storage_authority=authority,
        blob_storage_scheme="http",
        dfs_storage_authority=authority,
        dfs_storage_scheme="http",
    )


@pytest.fixture
def container(azurite, monkeypatch) -> Container:
    """A new container, with this test's Azure settings pointing at Azurite's account."""
    azurite.wait()
    monkeypatch.setenv("SKYTRAIN_AZURE_ENDPOINT", azurite.endpoint)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", azurite.account)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", azurite.key)
    for name in ("SKYTRAIN_AZURE_DFS_ENDPOINT", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    filesystem = _filesystem(azurite)
    name = f"skytrain-{uuid.uuid4().hex[:12]}"
    filesystem.create_dir(name)  # a top-level folder is a container
    return Container(name, azurite.account, filesystem)


def test_mnist_from_idx_blobs_is_stored_and_trained_on_azure_with_checkpoints_there(
    azurite, prefect_api, local_ray, container, state_dir, monkeypatch
):
    for name, data in _mnist_idx_files(train_rows=1500, test_rows=300).items():
        container.put(f"raw/mnist/{name}", data)
    source = container.uri("raw/mnist", scheme="abfs")  # abfs:// and abfss:// are the same (HTTPS) here
    monkeypatch.setenv("SKYTRAIN_DATA_STORE", container.uri("datasets"))
    monkeypatch.setenv("SKYTRAIN_RAY_STORAGE_PATH", container.uri("ray_results", scheme="abfs"))

    ref = prepare_mnist(source=source, val_size=300)
    assert ref["path"] == container.uri(f"datasets/mnist/{ref['version']}") and ref["reused"] is False
    assert container.blobs("datasets") == [
        f"mnist/{ref['version']}/{name}" for name in ("manifest.json", "test.parquet", "train.parquet", "val.parquet")
    ]
    manifest = read_manifest(ref["path"])
    assert manifest["source"]["path"] == source and manifest["source"]["format"] == "idx"
    assert manifest["splits"] == {"train": {"rows": 1200}, "val": {"rows": 300}, "test": {"rows": 300}}
    assert prepare_mnist(source=source, val_size=300)["reused"] is True  # found in the container

    # The train flow finds the version in the container, Ray Data reads it from there, and Ray Train
    # writes its checkpoints there (and takes the best one back from there to score the test split).
    result = train(model="mnist-cnn", epochs=1, num_workers=1, hparams={"width": 8}, run_name="azure-cnn")
    run = mlflow.MlflowClient(Settings().mlflow_tracking_uri).get_run(result["run_id"])
    assert run.data.tags["skytrain.dataset_path"] == ref["path"]
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [ref["version"]]
    assert result["metrics"]["test_accuracy"] > 0.5  # 1,200 real digits, one epoch: well above chance
    checkpoints = [name for name in container.blobs("ray_results/azure-cnn") if name.endswith("/checkpoint.pt")]
    assert len(checkpoints) == 1 and re.fullmatch(r"checkpoint_[^/]+/checkpoint\.pt", checkpoints[0]), checkpoints
    assert not (state_dir / "ray_results").exists()  # nothing went to the local default


@pytest.fixture
def tables():
    frame = diamonds.read_csv(Settings().diamonds_location()).head(1500)
    return diamonds.transform(frame, seed=0, val_fraction=0.1, test_fraction=0.1)


class CuttingProxy:
    """A TCP port in front of Azurite that drops a connection (both ends, nothing forwarded) at the
    first bytes from the client matching ``pattern``: the request never reaches the store, as when
    the network fails during an upload. Everything else passes."""

    def __init__(self, upstream: str, pattern: bytes) -> None:
        self.upstream = ("127.0.0.1", int(upstream.rsplit(":", 1)[1]))
        self.pattern = re.compile(pattern)
        self.cuts = 0
        self.sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.upstream)
            except OSError:  # closed
                return
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        seen = b""  # the end of what came before: a request line may straddle two reads
        try:
            while data := source.recv(65536):
                if from_client and self.pattern.search(seen + data):
                    self.cuts += 1
                    break
                sink.sendall(data)
                seen = (seen + data)[-512:]
        except OSError:
            pass
        self._drop(source, sink)

    @staticmethod
    def _drop(*sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()
        self._drop(*self.sockets)


def test_a_failed_upload_leaves_no_version_and_no_blobs(azurite, container, tables, monkeypatch):
    root = container.uri("datasets")
    split_tables, manifest = tables
    store.write_version(root, "diamonds", "old", split_tables, manifest)
    container.put("datasets/diamonds/half/train.parquet", b"PAR1")  # a crashed writer's split, no manifest
    assert store.versions(root, "diamonds") == ["old"] and store.latest_version(root, "diamonds") == "old"
    assert store.existing_version(root, "diamonds", "half") is None

    # Every split uploads; the manifest (the version's commit) never reaches the store.
    proxy = CuttingProxy(azurite.endpoint, rb"PUT /[^ ]*/datasets/diamonds/v1/manifest\.json")
    monkeypatch.setenv("SKYTRAIN_AZURE_ENDPOINT", proxy.endpoint)
    try:
        with pytest.raises(OSError, match=r"manifest\.json.*Failure when receiving data from the peer"):
            store.write_version(root, "diamonds", "v1", split_tables, manifest)
    finally:
        proxy.close()
    assert proxy.cuts >= 1
    monkeypatch.setenv("SKYTRAIN_AZURE_ENDPOINT", azurite.endpoint)  # straight to Azurite again
    assert store.existing_version(root, "diamonds", "v1") is None
    assert store.versions(root, "diamonds") == ["old"] and store.latest_version(root, "diamonds") == "old"
    assert container.blobs("datasets/diamonds/v1") == []  # the splits it had uploaded were removed
    assert container.blobs("datasets/diamonds/old") == [
        "manifest.json",
        "test.parquet",
        "train.parquet",
        "val.parquet",
    ]


def test_a_parquet_blob_is_a_source_and_a_missing_blob_a_denied_key_a_refused_connection_are_told_apart(
    azurite, prefect_api, container, tmp_path, monkeypatch
):
    rng = np.random.default_rng(0)
    rows = 1200
    frame = pd.DataFrame({"rooms": rng.integers(1, 8, rows), "area": rng.uniform(20, 250, rows).round(1)})
    frame["rent"] = (frame["area"] * 12 + frame["rooms"] * 40 + rng.normal(0, 50, rows)).round(2)
    frame.to_parquet(local := tmp_path / "rents.parquet", index=False)
    container.put("raw/rents.parquet", local.read_bytes())
    monkeypatch.setenv("SKYTRAIN_DATA_STORE", container.uri("store"))

    ref = prepare_tabular(source=container.uri("raw/rents.parquet"), target="rent", dataset="rents")
    assert ref["path"].startswith(container.uri("store/rents/"))
    manifest = read_manifest(ref["path"])
    assert manifest["source"]["format"] == "parquet"
    assert manifest["source"]["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
    features, target = load_split(ref["path"], "train", manifest)
    assert features.shape == (manifest["splits"]["train"]["rows"], 2) and np.isfinite(target).all()

    # A missing blob is bad input: the flow fails at once with the file named, never retried.
    missing = container.uri("raw/diamonds.csv")
    with pytest.raises(DataValidationError) as err:
        prepare_diamonds(source=missing)
    assert (err.value.file, err.value.field, err.value.rule) == (missing, "file", "exists")
    assert not is_transient(err.value)
    with pytest.raises(DataValidationError, match="no such blob"):  # no such container either
        sources.read_bytes(missing.replace(container.name, "no-such-container"))

    # A key Azure refuses: no second try can pass. One that is not even base64 is refused before use
    # (PyArrow 25 would abort the process on it).
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", azurite.key[::-1])
    with pytest.raises(ValueError, match="AZURE_STORAGE_ACCOUNT_KEY is not an Azure storage account key"):
        sources.read_bytes(container.uri("raw/rents.parquet"))
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", base64.b64encode(b"another account's key").decode())
    with pytest.raises(PermissionError, match="refused the credential") as denied:
        sources.sha256(container.uri("raw/rents.parquet"))
    assert not is_transient(denied.value)

    # A refused connection (nothing listens there): transient, the I/O tasks retry it.
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", azurite.key)
    monkeypatch.setenv("SKYTRAIN_AZURE_ENDPOINT", f"http://127.0.0.1:{free_ports()[0]}")
    with pytest.raises(OSError, match="Could not connect") as refused:
        sources.read_bytes(container.uri("raw/rents.parquet"))
    assert not isinstance(refused.value, (FileNotFoundError, PermissionError)) and is_transient(refused.value)


def test_azure_locations_are_parsed_and_resolved(monkeypatch):
    """Pure logic: URI forms, endpoints and credentials from the environment (no server)."""
    for name in ("SKYTRAIN_AZURE_ENDPOINT", "SKYTRAIN_AZURE_DFS_ENDPOINT", "AZURE_STORAGE_ACCOUNT"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    assert (
        storage.normalize("abfs://data@acct.dfs.core.windows.net/sets/")
        == "abfss://data@acct.dfs.core.windows.net/sets"
    )
    assert storage.join("abfss://data@acct.dfs.core.windows.net", "v1") == "abfss://data@acct.dfs.core.windows.net/v1"
    for bad in ("abfss://acct.dfs.core.windows.net/data/x", "abfss://data@/x", "abfss://data@acct/x"):
        with pytest.raises(ValueError, match="CONTAINER@ACCOUNT"):
            storage.normalize(bad)
    with pytest.raises(ValueError, match="unsupported scheme 'wasbs://'"):
        storage.normalize("wasbs://data@acct.blob.core.windows.net/x")

    filesystem, path = storage.resolve("abfss://data@acct.dfs.core.windows.net/sets/mnist")
    assert isinstance(filesystem, pafs.AzureFileSystem) and path == "data/sets/mnist"
    assert storage.uri("abfss://data@acct.dfs.core.windows.net/sets", "data/sets/v1") == (
        "abfss://data@acct.dfs.core.windows.net/sets/v1"
    )
    assert storage.ray_storage("abfs://data@acct.dfs.core.windows.net/ray_results/")[0] == "data/ray_results"
    assert storage.ray_storage("s3://bucket/ray_results") == ("s3://bucket/ray_results", None)

    # Azure's public cloud is PyArrow's default; another cloud's hosts come from the URI.
    assert storage.azure_endpoints(".dfs.core.windows.net") == {}
    assert storage.azure_endpoints(".dfs.core.chinacloudapi.cn") == {
        "blob_storage_authority": ".blob.core.chinacloudapi.cn",
        "dfs_storage_authority": ".dfs.core.chinacloudapi.cn",
    }
    monkeypatch.setenv("SKYTRAIN_AZURE_ENDPOINT", "http://127.0.0.1:10000")
    assert storage.azure_endpoints(".dfs.core.windows.net")["dfs_storage_authority"] == "127.0.0.1:10000"
    monkeypatch.setenv("SKYTRAIN_AZURE_ENDPOINT", "127.0.0.1:10000")
    with pytest.raises(ValueError, match="SKYTRAIN_AZURE_ENDPOINT"):
        storage.azure_endpoints()

    # Credentials: the account's key, else a SAS token, else a whole service principal, else the default chain.
    monkeypatch.setenv("AZURE_CLIENT_ID", "app")
    monkeypatch.setenv("AZURE_TENANT_ID", "tenant")
    assert storage.azure_credentials("acct") == {}  # no secret: the default chain (e.g. a managed identity)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", made_up := uuid.uuid4().hex)
    assert storage.azure_credentials("acct") == {"client_id": "app", "tenant_id": "tenant", "client_secret": made_up}
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "?sv=1&sig=x")
    assert storage.azure_credentials("acct") == {"sas_token": "sv=1&sig=x"}
    monkeypatch.setenv("AZURE_STORAGE_KEY", made_up := base64.b64encode(uuid.uuid4().bytes).decode())
    assert storage.azure_credentials("acct") == {"account_key": made_up}
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "other")  # the key is another account's
    assert storage.azure_credentials("acct") == {"sas_token": "sv=1&sig=x"}


def test_an_abfs_uri_without_container_is_refused_as_a_source(tmp_path):
    with pytest.raises(DataValidationError, match="field 'source'"):
        sources.read_bytes("abfss://acct.dfs.core.windows.net/data/x.csv")
    assert sources.join("abfs://data@acct.dfs.core.windows.net/raw/", "a.gz") == (
        "abfs://data@acct.dfs.core.windows.net/raw/a.gz"
    )
    assert Path(sources.join(str(tmp_path), "a.gz")) == tmp_path / "a.gz"
