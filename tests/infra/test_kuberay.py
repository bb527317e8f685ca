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


def schema_errors(name: str, document: dict) -> list[str]:
    schema = json.loads((KUBERAY / "schema" / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


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
