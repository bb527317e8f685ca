"""Each ``node_config`` of the Ray cluster configs against the cloud API call it ends up in, offline.

Ray's validator checks a config's structure, not ``node_config``, which Ray's node providers pass
on to the cloud: a misspelled or mistyped key there fails only at launch, in the cloud. Here AWS's
go through Ray's own AWS node provider into a stand-in for EC2 and are validated against EC2's
``RunInstances`` input shape (botocore's service model, as boto3 would before sending); Azure's
``azure_arm_parameters`` are checked against the parameters of the ARM template Ray deploys.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config
from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    STATUS_UNINITIALIZED,
    TAG_RAY_LAUNCH_CONFIG,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from tests.infra.tools import RAY_CONFIGS

botocore_session = pytest.importorskip(
    "botocore.session", reason="botocore is not installed: the EC2 RunInstances check needs its service model"
)
from botocore.validate import ParamValidator  # noqa: E402  (after the skip)

RAY_AZURE = Path(ray.autoscaler.__file__).parent / "_private" / "_azure"


def prepared(cloud: str) -> dict:
    return prepare_config(yaml.safe_load(RAY_CONFIGS[cloud].read_text()))


# --- AWS: RunInstances ---------------------------------------------------------------------------


class CapturingEC2:
    """Stands in for the boto3 EC2 resource of Ray's AWS node provider: keeps each create_instances
    (RunInstances) request, launches nothing."""

    def __init__(self):
        self.requests: list[dict] = []
        self.instances = SimpleNamespace(filter=lambda **_: [])  # no stopped nodes to reuse

    def create_instances(self, **request):
        self.requests.append(request)
        return []


def run_instances_request(config: dict, node_type: str) -> dict:
    """What Ray's AWS node provider sends to EC2 to launch two nodes of ``node_type``."""
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider

    node_config = copy.deepcopy(config["available_node_types"][node_type]["node_config"])
    # What `ray up` (bootstrap_aws) adds to every node_config, asking AWS, before any launch.
    node_config.setdefault("KeyName", f"ray-autoscaler_{config['provider']['region']}")
    node_config.setdefault("SubnetIds", ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"])
    node_config.setdefault("SecurityGroupIds", ["sg-0123456789abcdef0"])
    provider = AWSNodeProvider(config["provider"], config["cluster_name"])
    provider.ec2 = provider.ec2_fail_fast = ec2 = CapturingEC2()
    head = node_type == config["head_node_type"]
    tags = {  # the tags Ray's autoscaler launches a node with
        TAG_RAY_NODE_KIND: NODE_KIND_HEAD if head else NODE_KIND_WORKER,
        TAG_RAY_NODE_NAME: f"ray-{config['cluster_name']}-{'head' if head else 'worker'}",
        TAG_RAY_NODE_STATUS: STATUS_UNINITIALIZED,
        TAG_RAY_LAUNCH_CONFIG: "0" * 40,
        TAG_RAY_USER_NODE_TYPE: node_type,
    }
    provider.create_node(node_config, tags, 2)
    [request] = ec2.requests
    return request


def run_instances_errors(request: dict) -> str | None:
    """botocore's report on ``request`` as EC2 RunInstances input; None when it is valid."""
    model = botocore_session.get_session().get_service_model("ec2")
    report = ParamValidator().validate(request, model.operation_model("RunInstances").input_shape)
    return report.generate_report() if report.has_errors() else None


@pytest.fixture
def aws(monkeypatch) -> dict:
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)  # boto3 must not look for a profile of this machine
    return prepared("aws")


@pytest.mark.parametrize("node_type", sorted(yaml.safe_load(RAY_CONFIGS["aws"].read_text())["available_node_types"]))
def test_aws_node_config_is_valid_run_instances_input(aws, node_type):
    request = run_instances_request(aws, node_type)
    # Ray's own additions are there, so the check covers the whole request.
    assert request["MinCount"] == 1 and request["MaxCount"] == 2 and request["SubnetId"].startswith("subnet-")
    assert request["TagSpecifications"][0]["ResourceType"] == "instance"
    assert run_instances_errors(request) is None, run_instances_errors(request)


@pytest.mark.parametrize(
    "path, value",
    [
        (["InstanceTypes"], "g5.xlarge"),  # misspelled key
        (["InstanceMarketOptions", "SpotOptions", "MaxPrices"], "1.0"),  # misspelled nested key
        (["BlockDeviceMappings", 0, "Ebs", "VolumeSize"], "150"),  # a string where EC2 wants an integer
        (["MetadataOptions", "HttpTokens"], True),  # a YAML boolean where EC2 wants a string
    ],
    ids=["misspelled key", "misspelled nested key", "string for an integer", "boolean for a string"],
)
def test_run_instances_check_can_fail(aws, path, value):
    config = copy.deepcopy(aws)
    node = config["available_node_types"]["gpu_worker_spot"]["node_config"]
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[path[-1]] = value
    assert run_instances_errors(run_instances_request(config, "gpu_worker_spot"))


# --- Azure: Ray's ARM template --------------------------------------------------------------------

ARM_TYPES = {"string": str, "securestring": str, "int": int, "bool": bool, "object": dict, "array": list}


def ray_azure_source(name: str) -> str:
    # Read, not imported: Ray's Azure modules import the Azure SDK, which skytrain does not install.
    return (RAY_AZURE / name).read_text()


def arm_parameter_errors(arm_parameters: dict) -> list[str]:
    """What ARM (or Ray) would do wrong with a node_config's ``azure_arm_parameters``.

    Ray's Azure node provider deploys azure-vm-template.json with these parameters, less the ones it
    removes (``availability_zone``) and with the ones it sets itself (vmName, vmCount, msi, ... and
    adminUsername, publicKey from the auth section); ARM refuses a parameter the template does not
    declare, or one of another type.
    """
    template = json.loads((RAY_AZURE / "azure-vm-template.json").read_text())["parameters"]
    provider, config = ray_azure_source("node_provider.py"), ray_azure_source("config.py")
    set_by_ray = set(re.findall(r'template_params\["(\w+)"\]\s*=', provider))
    set_by_ray |= set(re.findall(r'azure_arm_parameters\["(\w+)"\]\s*=', config))
    removed_by_ray = set(re.findall(r'template_params\.pop\("(\w+)"', provider))
    assert {"vmName", "vmCount", "msi", "adminUsername"} <= set_by_ray and "availability_zone" in removed_by_ray, (
        "Ray's Azure provider changed: re-read node_provider.py's _create_node"
    )
    errors = []
    for key, value in arm_parameters.items():
        if key in removed_by_ray:
            continue
        if key not in template:
            errors.append(f"{key}: not a parameter of Ray's ARM template ({', '.join(sorted(template))})")
        elif key in set_by_ray:
            errors.append(f"{key}: Ray sets it itself and replaces this value")
        elif not isinstance(value, ARM_TYPES[template[key]["type"].lower()]) or (
            template[key]["type"] == "int" and isinstance(value, bool)
        ):
            errors.append(f"{key}: {value!r} is not of the template's type {template[key]['type']}")
        elif value not in template[key].get("allowedValues", [value]):
            errors.append(f"{key}: {value!r} is not one of {template[key]['allowedValues']}")
    required = {name for name, parameter in template.items() if "defaultValue" not in parameter}
    errors += [
        f"{name}: required by the template, set by nobody" for name in required - set_by_ray - set(arm_parameters)
    ]
    return errors


@pytest.mark.parametrize("node_type", sorted(yaml.safe_load(RAY_CONFIGS["azure"].read_text())["available_node_types"]))
def test_azure_arm_parameters_are_parameters_of_rays_template(node_type):
    node_config = prepared("azure")["available_node_types"][node_type]["node_config"]
    assert arm_parameter_errors(node_config["azure_arm_parameters"]) == []


@pytest.mark.parametrize(
    "key, value",
    [
        ("vmSku", "Standard_NC4as_T4_v3"),  # misspelled vmSize
        ("osDiskSizeGB", 150),  # the VM API's name, not the template's
        ("osDiskSize", "150"),  # a string where the template wants an int
        ("vmName", "gpu"),  # Ray names the VMs itself
    ],
    ids=["misspelled key", "the VM API's name", "string for an int", "set by Ray"],
)
def test_arm_parameter_check_can_fail(key, value):
    node_config = prepared("azure")["available_node_types"]["gpu_worker_spot"]["node_config"]
    assert arm_parameter_errors(node_config["azure_arm_parameters"] | {key: value})
    without_size = {k: v for k, v in node_config["azure_arm_parameters"].items() if k != "vmSize"}
    assert arm_parameter_errors(without_size), "vmSize has no default in the template"
