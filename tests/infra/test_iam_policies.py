"""Least privilege of the Ray head's cloud identity, checked against what Ray itself does.

AWS: the head's policy is rendered by Terraform (against moto, in test_terraform.py, which calls
``head_policy_problems``); here are the evaluator's own checks, the instance types, and the proof
that the check refuses the policy this module had before (RunInstances on any resource).
GCP: the provider is not available offline, so the HCL is parsed and the IAM condition (CEL) is
evaluated on the names Ray's GCP node provider gives instances and disks.
"""

from __future__ import annotations

import ast
import re
import uuid
from pathlib import Path

import pytest
import ray.autoscaler
import yaml

from tests.infra import iam_policy
from tests.infra.test_terraform import aws_ray_config, hcl, resources, unquote, variable_defaults
from tests.infra.tools import RAY_CONFIGS, TERRAFORM

RAY_AUTOSCALER = Path(ray.autoscaler.__file__).parent

# --- AWS --------------------------------------------------------------------------------------------


def head_policy_problems(policy: dict, config: dict, worker_role_arn: str, head_role_arn: str) -> list[str]:
    """What is wrong with the head's autoscaler ``policy`` for the Ray cluster ``config`` (prepared):
    a call Ray's AWS node provider makes that it refuses, or one outside the cluster that it allows."""
    from tests.infra.test_node_configs_api import run_instances_request

    region, cluster = config["provider"]["region"], config["cluster_name"]
    problems = []

    def expect(allowed: bool, what: str, action: str, resource: str, context: dict | None = None):
        if iam_policy.allowed(policy, action, resource, context) != allowed:
            problems.append(f"{'refused' if allowed else 'allowed'}: {what} ({action} on {resource})")

    workers = [name for name in config["available_node_types"] if name != config["head_node_type"]]
    for node_type in workers:
        request = run_instances_request(config, node_type)
        # Each authorization of Ray's own launch request must pass...
        for action, arn in iam_policy.refused(policy, iam_policy.run_instances_checks(request, region)):
            problems.append(f"refused: Ray's launch of {node_type} ({action} on {arn})")
        # ...and the same request must not, without the cluster's tag, with another cluster's, or
        # for an instance type that no worker type uses.
        for label, change in (
            ("without the cluster tag", lambda r: r["TagSpecifications"][0].update(Tags=untagged(r))),
            ("tagged for another cluster", lambda r: retag(r, f"{cluster}-other")),
            ("of another instance type", lambda r: r.update(InstanceType="p4d.24xlarge")),
        ):
            changed = run_instances_request(config, node_type)
            change(changed)
            if not iam_policy.refused(policy, iam_policy.run_instances_checks(changed, region)):
                problems.append(f"allowed: a launch of {node_type} {label}")

    own = {"aws:ResourceTag/ray-cluster-name": cluster}
    other = {"aws:ResourceTag/ray-cluster-name": f"{cluster}-other"}
    instance = iam_policy.instance_arn(region)
    for action in ("ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances"):
        expect(True, "the cluster's own node", action, instance, own)
        expect(False, "another cluster's node", action, instance, other)
        expect(False, "an untagged instance", action, instance, {})
    # set_node_tags: one tag per call, the node name as "Name".
    for key in ("ray-node-status", "ray-launch-config", "Name"):
        expect(True, f"Ray's tag {key} on its node", "ec2:CreateTags", instance, own | {"aws:TagKeys": [key]})
        expect(
            False, f"tag {key} on another cluster's node", "ec2:CreateTags", instance, other | {"aws:TagKeys": [key]}
        )
    expect(
        False,
        "moving a node out of the cluster",
        "ec2:CreateTags",
        instance,
        own | {"aws:TagKeys": ["ray-cluster-name"]},
    )
    pass_role = {"iam:PassedToService": "ec2.amazonaws.com"}
    expect(True, "the worker role to EC2", "iam:PassRole", worker_role_arn, pass_role)
    expect(False, "the head role", "iam:PassRole", head_role_arn, pass_role)
    expect(
        False,
        "the worker role to another service",
        "iam:PassRole",
        worker_role_arn,
        {"iam:PassedToService": "lambda.amazonaws.com"},
    )
    for action in ("ec2:DescribeInstances", "ec2:DescribeInstanceTypes", "ec2:DescribeImages"):
        expect(True, "Ray's read-only calls", action, "*")
    image = next(iter(config["available_node_types"].values()))["node_config"]["ImageId"]
    if image.startswith("resolve:ssm:"):
        parameter = image.removeprefix("resolve:ssm:")
        expect(True, "resolving the AMI at launch", "ssm:GetParameters", f"arn:aws:ssm:{region}::parameter{parameter}")
    return problems


def untagged(request: dict) -> list[dict]:
    return [t for t in request["TagSpecifications"][0]["Tags"] if t["Key"] != iam_policy.CLUSTER_TAG]


def retag(request: dict, cluster: str) -> None:
    for tag in request["TagSpecifications"][0]["Tags"]:
        if tag["Key"] == iam_policy.CLUSTER_TAG:
            tag["Value"] = cluster


@pytest.fixture
def aws_config(monkeypatch) -> dict:
    return aws_ray_config(monkeypatch)


WORKER_ROLE = f"arn:aws:iam::{iam_policy.ACCOUNT}:role/skytrain-ray-worker"
HEAD_ROLE = f"arn:aws:iam::{iam_policy.ACCOUNT}:role/skytrain-ray-head"


def previous_policy(region: str, cluster: str) -> dict:
    """The head's autoscaler statements before issue 7, as Terraform rendered them."""
    instances = f"arn:aws:ec2:{region}:*:instance/*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["ec2:DescribeInstances", "ec2:DescribeInstanceTypes", "ec2:DescribeImages"],
                "Resource": "*",
            },
            {
                "Effect": "Allow",
                "Action": "ec2:RunInstances",
                "Resource": "*",
                "Condition": {"StringEquals": {"aws:RequestedRegion": region}},
            },
            {
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": "*",
                "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}},
            },
            {
                "Effect": "Allow",
                "Action": ["ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances", "ec2:CreateTags"],
                "Resource": instances,
                "Condition": {"StringEquals": {"aws:ResourceTag/ray-cluster-name": cluster}},
            },
            {
                "Effect": "Allow",
                "Action": "iam:PassRole",
                "Resource": WORKER_ROLE,
                "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
            },
            {
                "Effect": "Allow",
                "Action": "ssm:GetParameters",
                "Resource": f"arn:aws:ssm:{region}::parameter/aws/service/deeplearning/*",
            },
        ],
    }


def test_head_policy_check_refuses_the_previous_policy(aws_config):
    problems = head_policy_problems(
        previous_policy(aws_config["provider"]["region"], aws_config["cluster_name"]),
        aws_config,
        WORKER_ROLE,
        HEAD_ROLE,
    )
    # It let Ray launch, but also launch anything else and re-label a node out of the cluster.
    assert not [p for p in problems if p.startswith("refused")], problems
    assert any("without the cluster tag" in p for p in problems), problems
    assert any("another instance type" in p for p in problems), problems
    assert any("moving a node out of the cluster" in p for p in problems), problems


def test_ray_tags_only_the_instance_at_launch(aws_config):
    """Why the policy requires the cluster tag on the instance only: Ray's request tags nothing else
    (requiring it on volumes would refuse every launch until infra/ray/aws.yaml tags them too)."""
    from tests.infra.test_node_configs_api import run_instances_request

    for node_type in aws_config["available_node_types"]:
        request = run_instances_request(aws_config, node_type)
        specs = request["TagSpecifications"]
        assert [s["ResourceType"] for s in specs] == ["instance"], specs
        assert {"Key": iam_policy.CLUSTER_TAG, "Value": aws_config["cluster_name"]} in specs[0]["Tags"]


def test_worker_instance_types_are_the_ray_configs_worker_types():
    """The head may launch only worker_instance_types: exactly the worker types' InstanceType."""
    config = yaml.safe_load(RAY_CONFIGS["aws"].read_text())
    defaults = variable_defaults(hcl(TERRAFORM / "aws"))
    workers = {
        node["node_config"]["InstanceType"]
        for name, node in config["available_node_types"].items()
        if name != config["head_node_type"]
    }
    assert set(defaults["worker_instance_types"]) == workers
    assert defaults["cluster_name"] == config["cluster_name"]


@pytest.mark.parametrize(
    "statement, action, resource, context, expected",
    [
        (
            {"Action": "ec2:Run*", "Resource": "arn:aws:ec2:*:*:instance/*"},
            "ec2:RunInstances",
            "arn:aws:ec2:r:1:instance/i-1",
            {},
            True,
        ),
        (
            {"Action": "ec2:RunInstances", "Resource": "arn:aws:ec2:*:*:instance/*"},
            "ec2:RunInstances",
            "arn:aws:ec2:r:1:volume/v-1",
            {},
            False,
        ),
        (
            {"Action": "ec2:RunInstances", "Resource": "*", "Condition": {"StringEquals": {"k": "v"}}},
            "ec2:RunInstances",
            "x",
            {},
            False,
        ),
        (
            {"Action": "ec2:RunInstances", "Resource": "*", "Condition": {"StringEquals": {"k": ["a", "v"]}}},
            "ec2:RunInstances",
            "x",
            {"k": "v"},
            True,
        ),
        (
            {"Action": "ec2:CreateTags", "Resource": "*", "Condition": {"ForAllValues:StringNotEquals": {"k": ["c"]}}},
            "ec2:CreateTags",
            "x",
            {"k": ["a", "c"]},
            False,
        ),
        (
            {"Action": "ec2:CreateTags", "Resource": "*", "Condition": {"ForAllValues:StringNotEquals": {"k": ["c"]}}},
            "ec2:CreateTags",
            "x",
            {"k": ["a"]},
            True,
        ),
    ],
)
def test_policy_evaluator(statement, action, resource, context, expected):
    assert iam_policy.allowed({"Statement": [{"Effect": "Allow", **statement}]}, action, resource, context) is expected


def test_policy_evaluator_refuses_what_it_does_not_know():
    with pytest.raises(ValueError):
        policy = {
            "Statement": {
                "Effect": "Allow",
                "Action": "*",
                "Resource": "*",
                "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}},
            }
        }
        iam_policy.allowed(policy, "ec2:RunInstances", "x", {"aws:SourceIp": "10.0.0.1"})


# --- GCP --------------------------------------------------------------------------------------------


def cel(expression: str, resource_type: str, resource_name: str) -> bool:
    """The IAM condition ``expression`` for one resource: the small part of CEL it uses (==, &&, ||,
    parentheses, string literals, resource.type, resource.name.extract(...).startsWith(...))."""
    allowed_tokens = (
        r'\s+|\(|\)|&&|\|\||==|"[^"\\]*"|resource\.type|resource\.name\.extract\("[^"]*"\)\.startsWith\("[^"]*"\)'
    )
    if re.sub(allowed_tokens, "", expression):
        raise ValueError(f"not the CEL subset this check evaluates: {re.sub(allowed_tokens, ' ', expression)!r}")

    def extract(template: str) -> str:  # CEL's extract: the text after the template's prefix, "" if none
        prefix = template.split("{", 1)[0]
        index = resource_name.find(prefix)
        return "" if index < 0 else resource_name[index + len(prefix) :].split("/", 1)[0]

    python = re.sub(
        r'resource\.name\.extract\("([^"]*)"\)\.startsWith\("([^"]*)"\)',
        lambda m: repr(extract(m.group(1)).startswith(m.group(2))),
        expression,
    )
    python = python.replace("resource.type", repr(resource_type)).replace("&&", " and ").replace("||", " or ")
    return bool(eval(python, {"__builtins__": {}}, {}))  # only literals, comparisons and and/or remain


def heredoc(value: str) -> str:
    text = unquote(value)
    if text.startswith("<<"):
        text = text.split("\n", 1)[1].rsplit("\n", 1)[0]
    return text.strip()


@pytest.fixture(scope="module")
def gcp():
    parsed = hcl(TERRAFORM / "gcp")
    config = yaml.safe_load(RAY_CONFIGS["gcp"].read_text())
    defaults = variable_defaults(parsed)
    assert defaults["cluster_name"] == config["cluster_name"], "cluster_name must be infra/ray/gcp.yaml's"
    members = resources(parsed, "google_project_iam_member")
    return parsed, config, defaults, members


def ray_gcp_node_name(name_label: str) -> str:
    """An instance name as Ray's GCP node provider makes it (``_generate_node_name`` of its node.py,
    run from Ray's source: importing the module needs Google's API client, which skytrain does not
    install)."""
    from ray.autoscaler.tags import TAG_RAY_NODE_NAME

    source = (RAY_AUTOSCALER / "_private" / "gcp" / "node.py").read_text()
    assert re.search(r'COMPUTE = "compute"', source), "Ray's GCP node type suffix changed"
    wanted = {"_generate_node_name", "INSTANCE_NAME_MAX_LEN", "INSTANCE_NAME_UUID_LEN"}
    body = [
        node
        for node in ast.parse(source).body
        if (isinstance(node, ast.FunctionDef) and node.name in wanted)
        or (isinstance(node, ast.Assign) and {getattr(t, "id", None) for t in node.targets} & wanted)
    ]
    assert len(body) == len(wanted), "Ray's GCP node naming moved"
    namespace = {"uuid4": uuid.uuid4, "TAG_RAY_NODE_NAME": TAG_RAY_NODE_NAME}
    exec(compile(ast.Module(body=body, type_ignores=[]), "ray/autoscaler/_private/gcp/node.py", "exec"), namespace)
    return namespace["_generate_node_name"]({TAG_RAY_NODE_NAME: name_label}, "compute")


def ray_gcp_names(cluster: str, zone: str, project: str) -> dict[str, str]:
    """Resource names of a head and a worker instance, and of their boot disks (which take the
    instance's name), with the ray-node-name labels Ray's launchers set."""
    names = {}
    for kind in ("head", "worker"):
        name = ray_gcp_node_name(f"ray-{cluster}-{kind}")
        names[f"{kind} instance"] = f"projects/{project}/zones/{zone}/instances/{name}"
        names[f"{kind} disk"] = f"projects/{project}/zones/{zone}/disks/{name}"
    return names


def test_gcp_head_manages_only_its_clusters_instances_and_disks(gcp):
    parsed, config, defaults, members = gcp
    binding = members["head_instances"]
    assert unquote(binding["role"]) == "roles/compute.instanceAdmin.v1"
    [condition] = binding.get("condition", [None])
    assert condition, "instanceAdmin.v1 on the whole project: it needs a condition"
    expression = heredoc(condition["expression"]).replace("${var.cluster_name}", defaults["cluster_name"])
    zone, project = config["provider"]["availability_zone"], "my-project"
    types = {"instance": "compute.googleapis.com/Instance", "disk": "compute.googleapis.com/Disk"}
    for what, name in ray_gcp_names(config["cluster_name"], zone, project).items():
        assert cel(expression, types[what.split()[1]], name), f"Ray's {what} {name} is not covered"
    outside = {
        "another VM": ("instance", f"projects/{project}/zones/{zone}/instances/database-1"),
        "another cluster's VM": (
            "instance",
            ray_gcp_names(f"{config['cluster_name']}-dev", zone, project)["worker instance"],
        ),
        "another disk": ("disk", f"projects/{project}/zones/{zone}/disks/database-1"),
        "a disk named like a worker VM, as a VM": (
            "instance",
            ray_gcp_names(config["cluster_name"], zone, project)["worker disk"],
        ),
        "an image": (
            "compute.googleapis.com/Image",
            f"projects/{project}/global/images/ray-{config['cluster_name']}-worker-1",
        ),
        "a snapshot": ("compute.googleapis.com/Snapshot", f"projects/{project}/global/snapshots/x"),
        "an instance template": (
            "compute.googleapis.com/InstanceTemplate",
            f"projects/{project}/global/instanceTemplates/x",
        ),
    }
    for what, (kind, name) in outside.items():
        assert not cel(expression, types.get(kind, kind), name), f"the condition grants {what}: {name}"


def test_gcp_head_gets_only_listing_operations_and_subnetwork_use_project_wide(gcp):
    """What a name condition cannot cover (the list call, the operations, the subnetwork a new VM
    joins) comes from a custom role with exactly those permissions, not from a broad role."""
    parsed, config, defaults, members = gcp
    head = "${google_service_account.head.member}"
    unconditional = {name: m for name, m in members.items() if m["member"] == head and not m.get("condition")}
    assert set(unconditional) == {"head_launcher"}, unconditional
    assert "ray_launcher" in unconditional["head_launcher"]["role"]
    role = resources(parsed, "google_project_iam_custom_role")["ray_launcher"]
    assert {unquote(p) for p in role["permissions"]} == {
        "compute.instances.list",  # non_terminated_nodes: instances().list with a label filter
        "compute.zoneOperations.get",  # wait_for_operation after insert, delete, stop, start, setLabels
        "compute.subnetworks.use",  # insert: the networkInterfaces `ray up` filled in
        "compute.subnetworks.useExternalIp",  # ...with an ONE_TO_ONE_NAT access config
    }
    # The only other grants of the head: the bucket's objects, and acting as the worker account.
    assert unquote(resources(parsed, "google_storage_bucket_iam_member")["nodes"]["role"]) == "roles/storage.objectUser"
    acting = resources(parsed, "google_service_account_iam_member")
    assert {n: unquote(b["role"]) for n, b in acting.items()} == {
        "head_launches_workers": "roles/iam.serviceAccountUser"
    }
    assert acting["head_launches_workers"]["service_account_id"] == "${google_service_account.worker.name}"


def test_gcp_ray_names_nodes_as_the_condition_expects():
    """The condition relies on Ray's names: a change in Ray's naming shows up here first."""
    assert re.fullmatch(r"ray-skytrain-worker-[0-9a-f]{8}-compute", ray_gcp_node_name("ray-skytrain-worker"))
    # The ray-node-name labels: the head's from `ray up` (commands.py), the workers' from the
    # autoscaler's launcher (node_launcher.py, and v2's instance manager).
    private = RAY_AUTOSCALER / "_private"
    assert '"ray-{}-head".format(' in (private / "commands.py").read_text()
    assert 'TAG_RAY_NODE_NAME: "ray-{}-worker".format(' in (private / "node_launcher.py").read_text()
    v2 = (RAY_AUTOSCALER / "v2" / "instance_manager" / "node_provider.py").read_text()
    assert 'TAG_RAY_NODE_NAME: "ray-{}-worker".format(' in v2


@pytest.mark.parametrize(
    "expression, expected",
    [
        ('resource.type == "compute.googleapis.com/Instance"', True),
        ('resource.type == "compute.googleapis.com/Disk"', False),
        ('resource.name.extract("/instances/{name}").startsWith("ray-a-")', True),
        ('resource.name.extract("/disks/{name}").startsWith("ray-a-")', False),
        ('(resource.type == "x" || resource.name.extract("/instances/{name}").startsWith("ray-b-"))', False),
    ],
)
def test_cel_subset(expression, expected):
    name = "projects/p/zones/z/instances/ray-a-worker-0123abcd-compute"
    assert cel(expression, "compute.googleapis.com/Instance", name) is expected


def test_cel_subset_refuses_what_it_does_not_know():
    with pytest.raises(ValueError):
        cel('resource.type != "compute.googleapis.com/Instance"', "x", "y")
