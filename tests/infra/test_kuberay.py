"""KubeRay manifests (infra/kuberay/): the project's schemas, and Ray's own RayCluster → autoscaler conversion."""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.util import validate_config

from tests.infra.tools import INFRA, project_requirements

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed: the KubeRay schema checks need it")

KUBERAY = INFRA / "kuberay"


def manifest(name: str) -> dict:
    return yaml.safe_load((KUBERAY / f"{name}.yaml").read_text())


def schema_errors(name: str, document: dict, definition: str | None = None) -> list[str]:
    """What the project's schema (or only its ``$defs/<definition>``) finds wrong with ``document``."""
    schema = json.loads((KUBERAY / "schema" / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    if definition is not None:
        schema = {"$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    validator = jsonschema.Draft202012Validator(schema)
    errors = []
    for e in validator.iter_errors(document):
        rule = rule_of(schema, e)
        errors.append(f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" + (f" [{rule}]" if rule else ""))
    return errors


def rule_of(schema: dict, error) -> str | None:
    """The description nearest to the failing keyword: for $defs/kuberay's rules, KubeRay's own message."""
    node, found = schema, None
    for key in error.absolute_schema_path:  # the path leaves out the $refs it went through
        while isinstance(node, dict) and key not in node and "$ref" in node:
            node = schema["$defs"][node["$ref"].removeprefix("#/$defs/")]
        node = node[key]
        if isinstance(node, dict) and isinstance(node.get("description"), str):
            found = node["description"]
    return found


@pytest.mark.parametrize("name", ["raycluster", "rayjob"])
def test_manifest_matches_the_project_schema(name):
    assert schema_errors(name, manifest(name)) == []


def without_gpu(cluster: dict) -> dict:
    cluster = copy.deepcopy(cluster)
    for group in cluster["spec"]["workerGroupSpecs"]:
        for container in group["template"]["spec"]["containers"]:
            for kind in ("limits", "requests"):
                container["resources"][kind].pop("nvidia.com/gpu", None)
    return cluster


def test_schema_rejects_what_it_must():
    cluster = manifest("raycluster")
    assert schema_errors("raycluster", without_gpu(cluster)), "a cluster without a GPU group must fail"
    broken = copy.deepcopy(cluster)
    broken["spec"]["enableInTreeAutoscaling"] = False
    assert schema_errors("raycluster", broken)
    broken = copy.deepcopy(cluster)
    broken["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3  # a typo KubeRay would silently ignore
    assert schema_errors("raycluster", broken)
    broken = copy.deepcopy(cluster)
    broken["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"}
    ]
    assert schema_errors("raycluster", broken), "a literal credential must fail"
    job = manifest("rayjob")
    job["spec"]["shutdownAfterJobFinishes"] = True
    assert schema_errors("rayjob", job)


# KubeRay's ValidateRayJobSpec / ValidateRayJobMetadata (ray-operator/controllers/ray/utils/validation.go),
# case by case: the schema's $defs/kuberay must accept what KubeRay runs and reject what it refuses.
SELECTED = {"clusterSelector": {"ray.io/cluster": "skytrain"}}
OWN_CLUSTER = {"rayClusterSpec": {"headGroupSpec": {}}}
KUBERAY_ACCEPTS = {
    "selected cluster": SELECTED,
    "own cluster, deleted an hour after the job": {
        **OWN_CLUSTER,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": 3600,
    },
    "TTL 0 without shutdown": {**SELECTED, "ttlSecondsAfterFinished": 0},
    "own cluster, suspended (Kueue)": {**OWN_CLUSTER, "suspend": True, "shutdownAfterJobFinishes": True},
    "interactive, no retries": {**SELECTED, "submissionMode": "InteractiveMode", "backoffLimit": 0},
    "sidecar on its own cluster": {**OWN_CLUSTER, "submissionMode": "SidecarMode"},
    "selected cluster, the RayJob deletes itself": {
        **SELECTED,
        "deletionStrategy": {"deletionRules": [{"policy": "DeleteSelf", "condition": {"jobStatus": "SUCCEEDED"}}]},
    },
}
KUBERAY_REJECTS = {  # each named by KubeRay's error message
    "shutdownAfterJobFinishes false cannot have TTLSecondsAfterFinished": {**SELECTED, "ttlSecondsAfterFinished": 3600},
    "cannot have TTLSecondsAfterFinished (explicit false)": {
        **OWN_CLUSTER,
        "shutdownAfterJobFinishes": False,
        "ttlSecondsAfterFinished": 60,
    },
    "TTLSecondsAfterFinished must be a non-negative integer": {
        **OWN_CLUSTER,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": -1,
    },
    "shutdownAfterJobFinishes false is not allowed to be suspended": {**OWN_CLUSTER, "suspend": True},
    "the ClusterSelector mode doesn't support the suspend operation": {
        **SELECTED,
        "suspend": True,
        "shutdownAfterJobFinishes": True,
    },
    "one of RayClusterSpec or ClusterSelector must be set": {},
    "an empty clusterSelector is no selector": {"clusterSelector": {}},
    "both: KubeRay would silently ignore rayClusterSpec (skytrain's rule)": {**SELECTED, **OWN_CLUSTER},
    "cluster name in ClusterSelector should not be empty": {"clusterSelector": {"ray.io/cluster": ""}},
    "cluster name in ClusterSelector missing": {"clusterSelector": {"app": "skytrain"}},
    "ClusterSelector is not supported in SidecarMode": {**SELECTED, "submissionMode": "SidecarMode"},
    "BackoffLimit is incompatible with InteractiveMode": {
        **SELECTED,
        "submissionMode": "InteractiveMode",
        "backoffLimit": 1,
    },
    "SidecarMode doesn't support SubmitterPodTemplate": {
        **OWN_CLUSTER,
        "submissionMode": "SidecarMode",
        "submitterPodTemplate": {"spec": {}},
    },
    "activeDeadlineSeconds must be a positive integer": {**SELECTED, "activeDeadlineSeconds": 0},
    "backoffLimit must be a positive integer": {**SELECTED, "backoffLimit": -1},
    "shutdownAfterJobFinishes and deletionRules are mutually exclusive": {
        **OWN_CLUSTER,
        "shutdownAfterJobFinishes": True,
        "deletionStrategy": {"deletionRules": []},
    },
    "the ClusterSelector mode doesn't support DeletionStrategy=DeleteCluster": {
        **SELECTED,
        "deletionStrategy": {"onSuccess": {"policy": "DeleteCluster"}, "onFailure": {"policy": "DeleteNone"}},
    },
    "DeletionPolicyType 'DeleteWorkers' not supported when ClusterSelector is set": {
        **SELECTED,
        "deletionStrategy": {"deletionRules": [{"policy": "DeleteWorkers", "condition": {"jobStatus": "FAILED"}}]},
    },
}


def rayjob(spec: dict, name: str = "skytrain-train") -> dict:
    return {"metadata": {"name": name}, "spec": {"entrypoint": "python -m ray_jobs.train", **spec}}


@pytest.mark.parametrize("spec", KUBERAY_ACCEPTS.values(), ids=KUBERAY_ACCEPTS.keys())
def test_kuberay_rules_accept_what_kuberay_runs(spec):
    assert schema_errors("rayjob", rayjob(spec), definition="kuberay") == []


@pytest.mark.parametrize("spec", KUBERAY_REJECTS.values(), ids=KUBERAY_REJECTS.keys())
def test_kuberay_rules_reject_what_kuberay_refuses(spec):
    assert schema_errors("rayjob", rayjob(spec), definition="kuberay")


@pytest.mark.parametrize("name", ["9-train", "Skytrain", "skytrain-", "a" * 48])
def test_kuberay_rules_reject_a_name_kuberay_refuses(name):
    """A DNS-1035 label of at most 47 characters (KubeRay appends 6 to name the RayJob's cluster)."""
    assert schema_errors("rayjob", rayjob(SELECTED, name=name), definition="kuberay")


def test_rayjob_passes_kuberays_own_checks():
    """The committed RayJob, against KubeRay's rules alone (the project schema includes them too)."""
    job = manifest("rayjob")
    assert schema_errors("rayjob", job, definition="kuberay") == []
    runtime_env = job["spec"].get("runtimeEnvYAML")
    if runtime_env is not None:  # KubeRay parses it before it runs the job
        assert isinstance(yaml.safe_load(runtime_env), dict)
    # A TTL on the shared cluster: KubeRay refuses it, and so does the project schema.
    job["spec"]["ttlSecondsAfterFinished"] = 3600
    assert schema_errors("rayjob", job, definition="kuberay")
    assert schema_errors("rayjob", job)
    job["spec"]["ttlSecondsAfterFinished"] = 0
    job["metadata"]["name"] = "9-skytrain"  # the project's schema applies KubeRay's name rule
    assert schema_errors("rayjob", job)


def test_ray_converts_the_raycluster_to_a_valid_autoscaling_config():
    cluster = manifest("raycluster")
    config = _derive_autoscaling_config_from_ray_cr(cluster)  # calls validate_config itself
    validate_config(config)
    types = config["available_node_types"]
    head = types.pop(config["head_node_type"])
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    cpu = [t for t in types.values() if t["resources"].get("GPU", 0) == 0 and t["resources"]["CPU"] > 0]
    assert gpu and cpu
    for node_type in types.values():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"]
    assert sum(t["min_workers"] for t in types.values()) == 0
    assert 1 <= config["idle_timeout_minutes"] <= 60
    # The GPU count Ray sees comes from the pods' limits: without them the group has no GPU.
    converted = _derive_autoscaling_config_from_ray_cr(without_gpu(cluster))
    assert not any(t["resources"].get("GPU") for t in converted["available_node_types"].values())


def test_image_carries_the_project_pins():
    """The pods' image is Ray's image of the pinned version, with this checkout installed by pip."""
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:(\S+)-py(\d)(\d+)\S*$", dockerfile, re.M)
    assert base, "FROM rayproject/ray:<version>-py<XY>..."
    ray_pin = project_requirements()["ray"]
    assert str(ray_pin.specifier) == f"=={base.group(1)}", f"image Ray {base.group(1)} vs pyproject {ray_pin}"
    assert f"{base.group(2)}.{base.group(3)}" == "3.11"
    assert re.search(r"^COPY .*pyproject\.toml", dockerfile, re.M)
    assert re.search(r"^RUN pip install --no-cache-dir \. ", dockerfile, re.M), "installs the project itself"
    cluster = manifest("raycluster")
    assert cluster["spec"]["rayVersion"] == base.group(1)


def test_rayjob_runs_skytrain_training_on_the_cluster():
    job, cluster = manifest("rayjob"), manifest("raycluster")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    assert job["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    entrypoint = job["spec"]["entrypoint"]
    assert entrypoint.startswith("python -m ray_jobs.train ") and "--use-gpu" in entrypoint
    from ray_jobs.models import SPECS

    model = re.search(r"--model (\S+)", entrypoint).group(1)
    assert model in SPECS
