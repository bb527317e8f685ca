"""The ``rollback`` flow: move ``champion`` back to the champion before it, and record that.

"The champion before it" is the version the current champion replaced when the gate promoted it
(its ``skytrain.gate.champion_version`` tag), so repeated rollbacks walk back through the
promotions. ``to_version`` picks a version instead. The target must still load through
``mlflow.pyfunc``. Tags and descriptions on both versions and a ``rollback-<model>`` Prefect
artifact record who was demoted, when and why; the promotion lock keeps it from racing a gate.
"""

from __future__ import annotations

import time

import mlflow
from mlflow.exceptions import MlflowException
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.registry import current_champion, move_champion, promotion_lock
from flows.train import ModelName
from ray_jobs.models import spec_for
from ray_jobs.settings import Settings


def previous_champion(client: mlflow.MlflowClient, name: str, champion: str) -> str:
    """The version ``champion`` replaced when it was promoted; refused where there was none."""
    before = client.get_model_version(name, champion).tags.get("skytrain.gate.champion_version")
    if not before:
        raise ValueError(
            f"{name}: champion v{champion} was its first champion (no 'skytrain.gate.champion_version' tag): "
            "nothing to roll back to; pass to_version to choose one"
        )
    return before


@flow(name="rollback", log_prints=True)
def rollback(model: ModelName, to_version: str | None = None, reason: str = "") -> dict:
    """Move ``champion`` of ``model`` back to the previous champion (or to ``to_version``)."""
    settings, logger = Settings(), get_run_logger()
    name = spec_for(model).registered_name
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = mlflow.MlflowClient()
    with promotion_lock(model, settings):
        champion = current_champion(client, name)
        if champion is None:
            raise ValueError(f"{name} has no champion: nothing to roll back")
        target = str(to_version) if to_version else previous_champion(client, name, champion)
        if target == champion:
            raise ValueError(f"{name}: v{target} already is the champion")
        try:
            client.get_model_version(name, target)
            mlflow.pyfunc.load_model(f"models:/{name}/{target}")
        except MlflowException as error:
            raise ValueError(f"{name}: cannot roll back to v{target}: {error}") from None
        except Exception as error:
            raise ValueError(f"{name}: v{target} no longer loads through mlflow.pyfunc: {error}") from None
        move_champion(client, name, champion, target)

    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    why = reason or "no reason given"
    for key, value in {"skytrain.rollback.from_version": champion, "skytrain.rollback.at": at}.items():
        client.set_model_version_tag(name, target, key, value)
    client.set_model_version_tag(name, target, "skytrain.rollback.reason", why)
    client.set_model_version_tag(name, champion, "skytrain.rollback.demoted", f"to v{target} at {at}: {why}")
    for version, line in (
        (target, f"Rollback {at}: champion again, replacing v{champion}. {why}"),
        (champion, f"Rollback {at}: demoted, champion is v{target} again. {why}"),
    ):
        description = client.get_model_version(name, version).description or ""
        client.update_model_version(name, version, description=f"{description}\n{line}".strip())
    record = {"model": name, "from_version": champion, "to_version": target, "at": at, "reason": why}
    create_markdown_artifact(
        key=f"rollback-{model}",
        markdown=f"# Rollback: {name}\n\n`champion` moved from v{champion} back to v{target} at {at}.\n\nReason: {why}",
        description=f"Rollback of {name} from v{champion} to v{target}",
    )
    logger.info("%s: champion rolled back from v%s to v%s (%s)", name, champion, target, why)
    return record
