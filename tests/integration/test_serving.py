"""Online serving on a real Ray Serve (the session's local Ray), MLflow store and Prefect API.

The CNN is served by PyTorch, the regressor by its ONNX export on onnxruntime. The regressor has no
champion when its application starts; the tests run in file order: the first promotes one through
the real gate, the last promotes a better one while requests keep coming.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
import torch
from ray import serve

from flows.promote import promote
from flows.registry import CHAMPION
from ray_jobs import serving
from ray_jobs.dataset import load_split
from ray_jobs.models import MnistCNN, spec_for
from ray_jobs.settings import Settings
from tests.registered import least_squares, register, small_diamonds, small_mnist
from tests.security.listening import exposed, listeners, with_descendants
from tests.servers import free_ports

REGRESSOR, CNN = spec_for("diamonds-regressor"), spec_for("mnist-cnn")
POLL = 0.5  # seconds between a replica's champion lookups


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def service(tmp_path_factory, prefect_api, local_ray):
    """Both applications on a free port; the CNN's champion set, the regressor's not yet."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SKYTRAIN_STATE_DIR", str(tmp_path_factory.mktemp("serving") / "state"))
        (port,) = free_ports()
        settings = Settings(
            serve_port=port,
            serve_poll_seconds=POLL,
            serve_replica_cpus=0.25,
            serve_min_replicas=1,
            serve_max_replicas=1,
            inference_runtime="torch",
        )
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        gems, (digits, _) = small_diamonds(settings), small_mnist(settings, test_images=40)
        torch.manual_seed(0)
        cnn = register(MnistCNN(width=8, depth=1).eval(), CNN, digits, {"width": 8, "depth": 1})
        mlflow.MlflowClient().set_registered_model_alias(CNN.registered_name, CHAMPION, cnn)
        serving.start(settings)
        try:
            urls = {
                "mnist-cnn": serving.run("mnist-cnn", settings),
                "diamonds-regressor": serving.run(
                    "diamonds-regressor", settings.model_copy(update={"inference_runtime": "onnx"})
                ),
            }
            with httpx.Client(timeout=30) as http:
                yield {"urls": urls, "http": http, "diamonds": gems, "mnist": digits, "cnn": cnn}
        finally:
            serve.shutdown()  # frees the replicas' CPUs for the rest of the session


def pyfunc(spec, version: str, rows: np.ndarray) -> np.ndarray:
    return np.asarray(mlflow.pyfunc.load_model(f"models:/{spec.registered_name}/{version}").predict(rows))


def served_version(service, model: str) -> str | None:
    answer = service["http"].get(f"{service['urls'][model]}/version")
    return answer.json()["version"] if answer.status_code == 200 else None


def test_before_any_promotion_the_service_says_so_then_serves_the_first_champion(service):
    http, url = service["http"], service["urls"]["diamonds-regressor"]
    for answer in (http.get(f"{url}/health"), http.post(f"{url}/predict", json={"inputs": [[0.0] * 26]})):
        assert answer.status_code == 503 and "has no 'champion' yet" in answer.json()["error"]
    first = register(
        least_squares(service["diamonds"], offset=0.3), REGRESSOR, service["diamonds"], {"arch": "linear", "hidden": 0}
    )
    assert promote(model="diamonds-regressor", version=first)["promote"]
    wait_for(lambda: served_version(service, "diamonds-regressor") == first, what=f"v{first} to be served")
    assert http.get(f"{url}/health").json() == {"status": "ok", "model": REGRESSOR.registered_name, "version": first}


def test_predictions_match_pyfunc_on_the_same_rows_for_both_models(service):
    http = service["http"]
    rows, _ = load_split(service["diamonds"], "test")
    rows = rows[:50]
    answer = http.post(f"{service['urls']['diamonds-regressor']}/predict", json={"inputs": rows.tolist()})
    assert answer.status_code == 200, answer.text
    served = answer.json()
    version = served_version(service, "diamonds-regressor")
    assert (served["model"], served["version"], served["runtime"]) == (REGRESSOR.registered_name, version, "onnx")
    log_price = np.array([p["log_price"] for p in served["predictions"]])
    np.testing.assert_allclose(log_price, pyfunc(REGRESSOR, version, rows), rtol=1e-5)
    np.testing.assert_allclose([p["price"] for p in served["predictions"]], np.exp(log_price), rtol=1e-6)

    images, _ = load_split(service["mnist"], "test")
    images = images[:16]
    nested = http.post(f"{service['urls']['mnist-cnn']}/predict", json={"inputs": images.tolist()})
    flat = http.post(f"{service['urls']['mnist-cnn']}/predict", json={"instances": images.reshape(16, -1).tolist()})
    assert nested.status_code == flat.status_code == 200, nested.text
    assert nested.json() == flat.json()
    served = nested.json()
    assert (served["version"], served["runtime"]) == (service["cnn"], "torch")
    logits = pyfunc(CNN, service["cnn"], images)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    probabilities = np.array([p["probabilities"] for p in served["predictions"]])
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert [p["predicted"] for p in served["predictions"]] == expected.argmax(axis=1).tolist()
    described = http.get(f"{service['urls']['mnist-cnn']}/version").json()
    assert described["input_shape"] == [-1, 1, 28, 28] and described["model_uri"].endswith(f"/{service['cnn']}")


@pytest.mark.parametrize("model", ["mnist-cnn", "diamonds-regressor"])
def test_single_rows_scored_on_the_event_loop_match_pyfunc(service, model):
    """Requests of one row, which the replica scores on its event loop (up to ``serve_inline_rows``
    rows, 4 by default; more go to a thread), answer as ``mlflow.pyfunc`` does. Which path ran is not
    observable from outside: this checks the answers, not the path."""
    spec = spec_for(model)
    rows = load_split(service["mnist" if model == "mnist-cnn" else "diamonds"], "test")[0][:3]
    version = served_version(service, model)
    expected = pyfunc(spec, version, rows)
    for k in range(len(rows)):
        answer = service["http"].post(f"{service['urls'][model]}/predict", json={"inputs": rows[k : k + 1].tolist()})
        assert answer.status_code == 200, answer.text
        (prediction,) = answer.json()["predictions"]
        if model == "mnist-cnn":
            assert prediction["predicted"] == int(expected[k].argmax())
        else:
            np.testing.assert_allclose(prediction["log_price"], expected[k].item(), rtol=1e-5)


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b'{"inputs": [[1, 2', 400, "field 'body' breaks rule 'valid JSON'"),
        (b'{"inputs": [[' + b"0," * 26 + b"0]]}", 422, "each row of shape 26.*got rows of shape 27"),
        (b'{"inputs": [["carat"' + b",0" * 25 + b"]]}", 422, "field 'inputs\\[0\\]\\[0\\]' breaks rule 'a number'"),
        (b'{"inputs": [' + b",".join([b"[" + b",".join([b"0"] * 26) + b"]"] * 257) + b"]}", 413, "at most 256 rows"),
        (b'{"inputs": [[' + b"0," * 600_000 + b"0]]}", 413, "field 'body' breaks rule 'at most 1048576 bytes'"),
    ],
    ids=["malformed", "wrong-shape", "wrong-type", "too-many-rows", "oversized"],
)
def test_bad_payloads_get_a_4xx_with_the_reason(service, content, status, message):
    url = service["urls"]["diamonds-regressor"]
    before = served_version(service, "diamonds-regressor")
    answer = service["http"].post(f"{url}/predict", content=content, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    assert re.search(message, answer.json()["error"]), answer.json()
    assert served_version(service, "diamonds-regressor") == before


def test_a_promotion_moves_the_served_version_without_dropping_requests(service):
    url, rows = service["urls"]["diamonds-regressor"], load_split(service["diamonds"], "test")[0][:8].tolist()
    before = served_version(service, "diamonds-regressor")
    answers, stop = [], threading.Event()

    def keep_asking():
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                answer = http.post(f"{url}/predict", json={"inputs": rows})
                answers.append((answer.status_code, answer.json().get("version")))

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        better = register(
            least_squares(service["diamonds"]), REGRESSOR, service["diamonds"], {"arch": "linear", "hidden": 0}
        )
        assert promote(model="diamonds-regressor", version=better)["promote"]
        wait_for(lambda: answers and answers[-1][1] == better, what=f"answers from v{better}")
        time.sleep(2 * POLL)
    finally:
        stop.set()
        asker.join(timeout=60)
    assert answers and all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    versions = [version for _, version in answers]
    switch = versions.index(better)
    assert set(versions[:switch]) == {before} and set(versions[switch:]) == {better}, "versions went back and forth"
    assert served_version(service, "diamonds-regressor") == better


def test_unknown_routes_and_wrong_methods_are_refused(service):
    http, url = service["http"], service["urls"]["mnist-cnn"]
    assert http.get(f"{url}/predict").status_code == 405
    assert http.post(f"{url}/health").status_code == 405
    missing = http.get(f"{url}/metrics")
    assert missing.status_code == 404 and "use POST /predict" in missing.json()["error"]


def is_haproxy(listener) -> bool:
    return Path(listener.process.split()[0]).name == "haproxy"


def test_serve_listens_on_loopback_only(service):
    """``serve_host`` defaults to 127.0.0.1: HAProxy holds the serving port there (the session's Ray
    starts with ``serve_ingress`` at its default), each replica serves HTTP behind it, and no Serve
    process (HAProxy with its stats page and metrics exporter, Serve's proxy and controller, the
    replicas' HTTP and gRPC servers) listens anywhere else."""
    port = int(service["urls"]["mnist-cnn"].split(":")[2].split("/")[0])
    found = [
        s
        for s in listeners(with_descendants([os.getpid()]))
        if s.process.startswith(("ray::Serve", "ray::ProxyActor", "ray::HAProxy")) or is_haproxy(s)
    ]
    assert any(s.port == port and is_haproxy(s) for s in found), f"no HAProxy listens on port {port}: {found}"
    # Its stats page and Prometheus exporter, which Ray's template binds to every interface.
    assert len({s.port for s in found if is_haproxy(s)}) >= 3, f"HAProxy's side listeners are missing: {found}"
    replicas = {s.pid for s in found if s.process.startswith("ray::ServeReplica")}
    assert len(replicas) == 2, f"expected a listening replica per model: {found}"
    assert not exposed(found), "Ray Serve listens beyond loopback:\n" + "\n".join(exposed(found))
