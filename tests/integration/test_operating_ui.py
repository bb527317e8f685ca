"""The two UIs in a real browser (Debian's Chromium, headless, driven by Playwright; no browser is
downloaded): what an operator of ``make up`` looks at after a ``retrain`` run triggered as the
Prefect UI triggers it. Screenshots are kept as test output (``SKYTRAIN_SCREENSHOTS``, default
``test-output/screenshots``); the README's "Operating skytrain" shows them."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import mlflow
import pytest

from ray_jobs.models import spec_for
from tests.running_platform import PROJECT_DIR

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(os.environ.get("SKYTRAIN_SCREENSHOTS", PROJECT_DIR / "test-output" / "screenshots"))
MODEL = spec_for("diamonds-regressor").registered_name
TIMEOUT_MS = 60_000  # a first page load compiles a large bundle on two cores

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (`apt-get install -y chromium`; .ci/run installs it)"
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    return path


@pytest.fixture(scope="module")
def champion(platform, finished_retrain):
    """The champion version the retrain run registered, read from the platform's MLflow."""
    assert finished_retrain["state"]["type"] == "COMPLETED", finished_retrain["state"]["message"]
    client = mlflow.MlflowClient(tracking_uri=platform.mlflow_url)
    version = client.get_model_version_by_alias(MODEL, "champion")
    return version, client.get_run(version.run_id)


def test_prefect_ui_lists_the_retrain_deployment_with_its_schedule(platform, page):
    from playwright.sync_api import expect

    page.goto(f"{platform.prefect_url}/deployments")
    row = page.get_by_role("row").filter(has_text=re.compile(r"^\s*retrain")).first
    expect(row).to_be_visible()
    expect(row.get_by_text("At 03:00 AM every day")).to_be_visible()
    screenshot(page, "prefect-deployments")


def test_prefect_ui_renders_the_retrain_run_form_from_the_typed_parameters(platform, page):
    from playwright.sync_api import expect

    deployment = platform.deployment("retrain", "retrain")
    page.goto(f"{platform.prefect_url}/deployments/deployment/{deployment['id']}/run")
    for field, description in deployment["parameter_openapi_schema"]["properties"].items():
        expect(page.get_by_text(f"{field} (Optional)", exact=True)).to_be_visible()
        expect(page.get_by_text(description["description"], exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Submit")).to_be_visible()
    screenshot(page, "prefect-retrain-run-form")


def test_prefect_ui_shows_the_finished_run_and_its_artifacts(platform, finished_retrain, page):
    from playwright.sync_api import expect

    page.goto(f"{platform.prefect_url}/runs/flow-run/{finished_retrain['id']}")
    expect(page.get_by_text(finished_retrain["name"]).first).to_be_visible()
    expect(page.get_by_text("Completed").first).to_be_visible()
    page.get_by_role("listitem").filter(has_text=re.compile(r"^Artifacts$")).click()
    expect(page.get_by_text("retrain-summary").first).to_be_visible()
    screenshot(page, "prefect-flow-run-artifacts")


def test_mlflow_ui_shows_the_experiment_and_its_runs(platform, champion, page):
    from playwright.sync_api import expect

    _, run = champion
    page.goto(f"{platform.mlflow_url}/#/experiments/{run.info.experiment_id}/runs")
    expect(page.get_by_text(run.info.run_name).first).to_be_visible()
    screenshot(page, "mlflow-experiment-runs")


def test_mlflow_ui_charts_the_runs_metrics(platform, champion, page):
    from playwright.sync_api import expect

    _, run = champion
    page.goto(f"{platform.mlflow_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/model-metrics")
    page.get_by_placeholder("Search metric charts").fill("loss")  # charts below the fold are not drawn
    for metric in ("train_loss", "val_loss"):
        expect(page.get_by_text(metric, exact=True).first).to_be_visible()
    expect(page.get_by_text("Step").first).to_be_visible()  # a line chart over epochs is drawn
    screenshot(page, "mlflow-run-metrics")


def test_mlflow_ui_shows_the_registered_model_with_its_champion_alias(platform, champion, page):
    from playwright.sync_api import expect

    version, _ = champion
    page.goto(f"{platform.mlflow_url}/#/models/{MODEL}")
    expect(page.get_by_text(f"Version {version.version}").first).to_be_visible()
    expect(page.get_by_text("champion").first).to_be_visible()
    screenshot(page, "mlflow-registered-model")


def test_a_rollback_run_puts_the_previous_champion_back_and_both_uis_show_it(platform, champion, page):
    from playwright.sync_api import expect

    version, _ = champion
    client = mlflow.MlflowClient(tracking_uri=platform.mlflow_url)
    # A newer version that replaced it as champion, recorded as the gate records a promotion.
    newer = client.create_model_version(
        MODEL, version.source, run_id=version.run_id, model_id=version.source.removeprefix("models:/")
    )
    client.set_model_version_tag(MODEL, newer.version, "skytrain.gate.champion_version", version.version)
    client.set_registered_model_alias(MODEL, "champion", newer.version)

    parameters = {"model": "diamonds-regressor", "reason": "drift seen in production"}
    response = platform.create_run("rollback", "rollback", parameters)
    assert response.status_code == 201, response.text
    run = platform.wait_for_run(response.json()["id"], timeout=300)
    assert run["state"]["type"] == "COMPLETED", run["state"]["message"]
    assert client.get_model_version_by_alias(MODEL, "champion").version == version.version

    page.goto(f"{platform.prefect_url}/runs/flow-run/{run['id']}")
    page.get_by_role("listitem").filter(has_text=re.compile(r"^Artifacts$")).click()
    expect(page.get_by_text("rollback-diamonds-regressor").first).to_be_visible()
    screenshot(page, "prefect-rollback-run")
    page.goto(f"{platform.mlflow_url}/#/models/{MODEL}")
    expect(page.get_by_text(f"Version {newer.version}").first).to_be_visible()
    expect(page.get_by_text("champion").first).to_be_visible()
    screenshot(page, "mlflow-after-rollback")
