"""The ``rollback`` flow: move ``champion`` back to the champion before it, and record that.

"The champion before it" is the version the current champion replaced when the gate promoted it
(its ``skytrain.gate.replaced_version`` tag; for versions promoted before that tag existed, or
marked by hand, ``skytrain.gate.champion_version``), so repeated rollbacks walk back through the
promotions. ``to_version`` picks a version instead. The target must still load through
``mlflow.pyfunc``. Tags and descriptions on both versions and a ``rollback-<model>`` Prefect
artifact record who was demoted, when and why; the promotion lock keeps it from racing a gate.
"""

from __future__ import annotations

import time
from typing import Annotated

import mlflow
from mlflow.exceptions import MlflowException
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from flows.operations import io_task
from flows.parameters import ModelName, RegisteredVersion, described
from flows.registry import (
    REGISTRY_TIMEOUT_SECONDS,
    REPLACED_TAG,
    move_champion_task,
    promotion_lock,
    read_champion,
    read_version,
    tag_version,
)
from ray_jobs.models import spec_for
from ray_jobs.settings import Settings

ModelToRollBack = Annotated[ModelName, Field(description="The model whose champion is rolled back.")]
TargetVersion = Annotated[
    RegisteredVersion | None,
    Field(description="The version to make champion again; empty: the champion the current one replaced."),
]
Reason = Annotated[str, Field(max_length=1000, description="Why: recorded on both versions and in the artifact.")]


@io_task("load-model-version", timeout_seconds=REGISTRY_TIMEOUT_SECONDS)
def load_check(tracking_uri: str, name: str, version: str) -> None:
    """The version exists and loads through ``mlflow.pyfunc`` (as inference loads it)."""
    mlflow.MlflowClient(tracking_uri).get_model_version(name, version)
    mlflow.pyfunc.load_model(f"models:/{name}/{version}")


def previous_champion(tracking_uri: str, name: str, champion: str) -> str:
    """The version ``champion`` replaced when it was promoted; refused where there was none."""
    tags = read_version(tracking_uri, name, champion).tags
    before = tags.get(REPLACED_TAG, tags.get("skytrain.gate.champion_version"))
    if not before:
        raise ValueError(
            f"{name}: champion v{champion} was its first champion (no '{REPLACED_TAG}' tag): "
            "nothing to roll back to; pass to_version to choose one"
        )
    return before


@flow(name="rollback", log_prints=True)
@described
def rollback(model: ModelToRollBack, to_version: TargetVersion = None, reason: Reason = "") -> dict:
    """Move ``champion`` of ``model`` back to the previous champion (or to ``to_version``)."""
    settings, logger = Settings(), get_run_logger()
    name = spec_for(model).registered_name
    uri = settings.mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    with promotion_lock(model, settings):
        champion = read_champion(uri, name)
        if champion is None:
            raise ValueError(f"{name} has no champion: nothing to roll back")
        target = str(to_version) if to_version else previous_champion(uri, name, champion)
        if target == champion:
            raise ValueError(f"{name}: v{target} already is the champion")
        try:
            load_check(uri, name, target)
        except MlflowException as error:
            raise ValueError(f"{name}: cannot roll back to v{target}: {error}") from None
        except Exception as error:
            raise ValueError(f"{name}: v{target} no longer loads through mlflow.pyfunc: {error}") from None
        move_champion_task(uri, name, champion, target)

    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    why = reason or "no reason given"
    target_tags = {
        "skytrain.rollback.from_version": champion,
        "skytrain.rollback.at": at,
        "skytrain.rollback.reason": why,
    }
    for version, tags, line in (
        (target, target_tags, f"Rollback {at}: champion again, replacing v{champion}. {why}"),
        (
            champion,
            {"skytrain.rollback.demoted": f"to v{target} at {at}: {why}"},
            f"Rollback {at}: demoted, champion is v{target} again. {why}",
        ),
    ):
        description = read_version(uri, name, version).description or ""
        tag_version(uri, name, version, tags, description=f"{description}\n{line}".strip())
    record = {"model": name, "from_version": champion, "to_version": target, "at": at, "reason": why}
    create_markdown_artifact(
        key=f"rollback-{model}",
        markdown=f"# Rollback: {name}\n\n`champion` moved from v{champion} back to v{target} at {at}.\n\nReason: {why}",
        description=f"Rollback of {name} from v{champion} to v{target}",
    )
    logger.info("%s: champion rolled back from v%s to v%s (%s)", name, champion, target, why)
    return record
