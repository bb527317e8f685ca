"""A search's trial runs end as the search saw them: those ASHA stopped KILLED, whatever their process
left (``ray_jobs.tune._close_stopped_children``), on a real MLflow store."""

from __future__ import annotations

import mlflow

from ray_jobs.settings import Settings
from ray_jobs.tune import _close_stopped_children


def _child(client: mlflow.MlflowClient, experiment_id: str, parent_id: str, trial: str, status: str | None) -> str:
    run = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent_id, "skytrain.tune.trial_id": trial})
    if status:
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_the_runs_of_stopped_trials_end_killed_whatever_their_process_left(state_dir):
    uri = Settings().mlflow_tracking_uri
    client = mlflow.MlflowClient(uri)
    mlflow.set_tracking_uri(uri)  # the search's own client is the default one
    experiment_id = client.create_experiment("tune")
    parent = client.create_run(experiment_id).info.run_id
    runs = {
        "done": _child(client, experiment_id, parent, "done", "FINISHED"),  # ran every epoch
        "failed": _child(client, experiment_id, parent, "failed", "FAILED"),  # its own error
        "cut": _child(client, experiment_id, parent, "cut", None),  # killed mid-epoch: left RUNNING
        "ran-on": _child(client, experiment_id, parent, "ran-on", "FINISHED"),  # finished before Tune ended it
        "broke": _child(client, experiment_id, parent, "broke", "FAILED"),  # failed as Tune stopped it
    }
    other = client.create_run(experiment_id).info.run_id
    stranger = _child(client, experiment_id, other, "ran-on", "FINISHED")  # another search's run
    trials = [
        {"trial": "done", "status": "completed"},
        {"trial": "failed", "status": "error"},
        *({"trial": name, "status": "stopped by ASHA"} for name in ("cut", "ran-on", "broke")),
    ]

    _close_stopped_children(experiment_id, parent, trials)

    expected = {"done": "FINISHED", "failed": "FAILED", "cut": "KILLED", "ran-on": "KILLED", "broke": "KILLED"}
    for name, run_id in runs.items():
        run = client.get_run(run_id)
        assert run.info.status == expected[name], name
        assert ("skytrain.tune.stopped_early" in run.data.tags) == (expected[name] == "KILLED"), name
    assert client.get_run(stranger).info.status == "FINISHED"
