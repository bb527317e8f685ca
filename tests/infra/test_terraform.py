"""Terraform of infra/terraform/: formatting (all clouds), HCL (GCP, Azure), and for AWS validate,
``terraform test`` on a mocked provider, and apply → plan (no changes) → destroy against moto.

Nothing is written into the repository: each check works on a copy in a temporary folder, with
TF_DATA_DIR and a CLI config there; providers come only from a local mirror (offline), found in
$SKYTRAIN_TF_PROVIDER_MIRROR or under /opt. Without terraform or the mirror the checks skip, saying why.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path

import pytest
import yaml

from tests.infra.tools import (
    MIRROR_ENV,
    RAY_CONFIGS,
    TERRAFORM,
    explain,
    provider_mirror,
    run,
    terraform_binary,
    terraform_env,
)

CLOUDS = ("aws", "gcp", "azure")


@pytest.fixture(scope="module")
def terraform() -> str:
    binary = terraform_binary()
    if binary is None:
        pytest.skip("terraform is not on the PATH: the Terraform checks need it (1.9 or newer)")
    return binary


@pytest.fixture(scope="module")
def mirror() -> Path:
    found = provider_mirror()
    if found is None:
        pytest.skip(
            f"no local provider mirror with hashicorp/aws ({MIRROR_ENV} unset and none under /opt): "
            "terraform init cannot run offline"
        )
    return found


def copy_module(cloud: str, destination: Path) -> Path:
    ignore = shutil.ignore_patterns(".terraform", "*.tfstate*", ".terraform.lock.hcl")
    return Path(shutil.copytree(TERRAFORM / cloud, destination / cloud, ignore=ignore))


def init(terraform: str, module: Path, env: dict) -> None:
    result = run([terraform, "init", "-backend=false", "-no-color"], module, env, timeout=180)
    assert result.returncode == 0, explain(result)


@pytest.fixture(scope="module")
def aws_module(terraform, mirror, tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("tf-aws")
    env = terraform_env(tmp, mirror)
    module = copy_module("aws", tmp)
    init(terraform, module, env)
    return module, env


def test_fmt_all_clouds(terraform, tmp_path):
    before = {p: p.read_bytes() for p in TERRAFORM.rglob("*") if p.is_file()}
    result = run(
        [terraform, "fmt", "-check", "-recursive", "-diff", "-no-color"], TERRAFORM, terraform_env(tmp_path, None)
    )
    assert result.returncode == 0, f"run `terraform fmt -recursive infra/terraform`:\n{explain(result)}"
    assert {p: p.read_bytes() for p in TERRAFORM.rglob("*") if p.is_file()} == before
    for cloud in CLOUDS:
        assert list((TERRAFORM / cloud).glob("*.tf")), f"no Terraform for {cloud}"


def test_fmt_check_can_fail(terraform, tmp_path):
    module = copy_module("gcp", tmp_path)
    (module / "main.tf").write_text((module / "main.tf").read_text().replace("  name ", "      name ", 1))
    result = run([terraform, "fmt", "-check", "-recursive"], module, terraform_env(tmp_path, None))
    assert result.returncode != 0


def test_aws_validate(terraform, aws_module):
    module, env = aws_module
    result = run([terraform, "validate", "-json", "-no-color"], module, env)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["valid"], explain(result)
    assert report["warning_count"] == 0, report["diagnostics"]


def test_aws_terraform_test_with_mocked_provider(terraform, aws_module):
    module, env = aws_module
    result = run([terraform, "test", "-no-color"], module, env)
    assert result.returncode == 0, explain(result)
    assert "0 failed" in result.stdout and " passed" in result.stdout, result.stdout
    runs = result.stdout.count("... pass")
    assert runs >= 6, f"expected every run block to pass, saw {runs}:\n{result.stdout}"


MOTO_OVERRIDE = """
provider "aws" {{
  region                      = "{region}"
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_requesting_account_id  = true
  s3_use_path_style           = true

  endpoints {{
    s3  = "{endpoint}"
    iam = "{endpoint}"
    sts = "{endpoint}"
  }}
}}

# The provider waits for 10 consistent reads, 5 s apart, after writing a lifecycle configuration
# (S3's eventual consistency): 55 s against moto. The rule itself is checked by `terraform test`.
resource "aws_s3_bucket_lifecycle_configuration" "skytrain" {{
  count = 0
}}
"""


@pytest.fixture
def moto_endpoint():
    """moto's server on 127.0.0.1 with AWS's managed IAM policies loaded, stopped by its PID."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    from tests.servers import moto_server

    with moto_server(MOTO_IAM_LOAD_MANAGED_POLICIES="true") as endpoint:
        yield endpoint


def aws_clients(endpoint: str, region: str):
    import boto3

    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region)
    return session.client("s3", endpoint_url=endpoint), session.client("iam", endpoint_url=endpoint)


def aws_ray_config(monkeypatch) -> dict:
    """infra/ray/aws.yaml as Ray's launcher prepares it; boto3 must not look for a profile of this machine."""
    from ray.autoscaler._private.util import prepare_config

    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    return prepare_config(yaml.safe_load(RAY_CONFIGS["aws"].read_text()))


def test_aws_apply_plan_destroy_on_moto(terraform, mirror, moto_endpoint, tmp_path, monkeypatch):
    from tests.infra.test_iam_policies import head_policy_problems  # (it imports this module)

    ray_config = yaml.safe_load(RAY_CONFIGS["aws"].read_text())
    region = ray_config["provider"]["region"]
    env = terraform_env(tmp_path, mirror)
    module = copy_module("aws", tmp_path)
    (module / "moto_override.tf").write_text(MOTO_OVERRIDE.format(region=region, endpoint=moto_endpoint))
    init(terraform, module, env)
    bucket = f"skytrain-test-{uuid.uuid4().hex[:12]}"
    variables = ["-var", f"bucket_name={bucket}", "-var", "force_destroy=true"]
    s3, iam = aws_clients(moto_endpoint, region)

    result = run([terraform, "apply", "-auto-approve", "-no-color", *variables], module, env)
    assert result.returncode == 0, explain(result)
    try:
        outputs = {
            k: v["value"] for k, v in json.loads(run([terraform, "output", "-json"], module, env).stdout).items()
        }
        # What infra/ray/aws.yaml and the settings expect is what Terraform made.
        nodes = ray_config["available_node_types"]
        head_type = ray_config["head_node_type"]
        assert nodes[head_type]["node_config"]["IamInstanceProfile"]["Name"] == outputs["head_instance_profile"]
        for name, node in nodes.items():
            if name != head_type:
                assert node["node_config"]["IamInstanceProfile"]["Name"] == outputs["worker_instance_profile"], name
        assert outputs["skytrain_env"]["AWS_REGION"] == region
        assert outputs["skytrain_env"]["SKYTRAIN_DATA_STORE"] == f"s3://{bucket}/datasets"
        assert outputs.get("database_endpoint") is None  # null outputs are left out

        # The bucket as S3 reports it.
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert all(block.values()) and len(block) == 4
        policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
        assert any(
            s["Effect"] == "Deny" and s["Condition"]["Bool"]["aws:SecureTransport"] == "false"
            for s in policy["Statement"]
        )
        # The instance profiles carry their roles; the worker's only policy is the bucket's.
        for profile, role in (
            ("head_instance_profile", "head_role_arn"),
            ("worker_instance_profile", "worker_role_arn"),
        ):
            roles = iam.get_instance_profile(InstanceProfileName=outputs[profile])["InstanceProfile"]["Roles"]
            assert [r["Arn"] for r in roles] == [outputs[role]]
        worker_role = outputs["worker_role_arn"].rsplit("/", 1)[1]
        assert iam.list_role_policies(RoleName=worker_role)["PolicyNames"] == ["skytrain-bucket"]
        assert iam.list_attached_role_policies(RoleName=worker_role)["AttachedPolicies"] == []
        # The head's autoscaler policy as IAM holds it, against the calls Ray's AWS node provider makes
        # for this cluster config, and against the same calls outside the cluster.
        head_role = outputs["head_role_arn"].rsplit("/", 1)[1]
        policy = iam.get_role_policy(RoleName=head_role, PolicyName="ray-autoscaler")["PolicyDocument"]
        assert (
            head_policy_problems(
                policy, aws_ray_config(monkeypatch), outputs["worker_role_arn"], outputs["head_role_arn"]
            )
            == []
        )

        # A second plan finds nothing to change.
        result = run([terraform, "plan", "-detailed-exitcode", "-no-color", *variables], module, env)
        assert result.returncode == 0, f"plan after apply is not empty:\n{explain(result)}"
    finally:
        # The plan just refreshed every resource: no second refresh.
        result = run([terraform, "destroy", "-auto-approve", "-refresh=false", "-no-color", *variables], module, env)
    assert result.returncode == 0, explain(result)
    assert bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert not [r for r in iam.list_roles()["Roles"] if r["RoleName"].startswith("skytrain-ray-")]
    assert not list(Path(TERRAFORM / "aws").glob("*.tfstate*")), "state must stay in the temporary copy"


def hcl(module: Path) -> dict:
    """Every block of the module's .tf files, merged as python-hcl2 reads them."""
    hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is not installed: the HCL checks of GCP and Azure need it")
    merged: dict[str, list] = {}
    for path in sorted(module.glob("*.tf")):
        with path.open() as f:
            for key, blocks in normalized(hcl2.load(f)).items():
                merged.setdefault(key, []).extend(blocks)
    return merged


def normalized(value):
    """python-hcl2 8 keeps the quotes of labels and strings, and marks blocks: drop both."""
    if isinstance(value, dict):
        return {unquote(k): normalized(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return unquote(value)


def resources(parsed: dict, kind: str) -> dict[str, dict]:
    return {name: body for block in parsed.get("resource", []) for name, body in block.get(kind, {}).items()}


def variable_defaults(parsed: dict) -> dict:
    return {name: body.get("default") for block in parsed.get("variable", []) for name, body in block.items()}


def unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def test_gcp_hcl_bucket_and_identities_match_the_ray_config():
    parsed = hcl(TERRAFORM / "gcp")
    bucket = resources(parsed, "google_storage_bucket")["skytrain"]
    assert bucket["uniform_bucket_level_access"] is True
    assert unquote(bucket["public_access_prevention"]) == "enforced"
    assert bucket["versioning"][0]["enabled"] is True
    defaults = variable_defaults(parsed)
    accounts = {
        name: unquote(body["account_id"]).replace("${var.name_prefix}", defaults["name_prefix"])
        for name, body in resources(parsed, "google_service_account").items()
    }
    ray_config = yaml.safe_load(RAY_CONFIGS["gcp"].read_text())
    assert ray_config["provider"]["region"] == defaults["region"]
    for name, node in ray_config["available_node_types"].items():
        account = node["node_config"]["serviceAccounts"][0]["email"].split("@")[0]
        expected = accounts["head"] if name == ray_config["head_node_type"] else accounts["worker"]
        assert account == expected, name
    members = resources(parsed, "google_storage_bucket_iam_member")["nodes"]
    assert unquote(members["role"]) == "roles/storage.objectUser"


def test_azure_hcl_storage_and_identity_match_the_ray_config():
    parsed = hcl(TERRAFORM / "azure")
    account = resources(parsed, "azurerm_storage_account")["skytrain"]
    assert unquote(account["min_tls_version"]) == "TLS1_2"
    assert account["https_traffic_only_enabled"] is True
    assert account["allow_nested_items_to_be_public"] is False
    assert account["shared_access_key_enabled"] is False
    assert account["blob_properties"][0]["versioning_enabled"] is True
    container = resources(parsed, "azurerm_storage_container")["skytrain"]
    assert unquote(container["container_access_type"]) == "private"
    assignment = resources(parsed, "azurerm_role_assignment")["ray_blobs"]
    assert unquote(assignment["role_definition_name"]) == "Storage Blob Data Contributor"
    assert "azurerm_storage_container.skytrain" in assignment["scope"]
    defaults = variable_defaults(parsed)
    provider = yaml.safe_load(RAY_CONFIGS["azure"].read_text())["provider"]
    assert provider["msi_name"] == defaults["identity_name"]
    assert provider["msi_resource_group"] == defaults["resource_group_name"]
    assert provider["location"] == defaults["location"]


def skytrain_env(cloud: str) -> dict[str, str]:
    """The ``skytrain_env`` output of a cloud's module, each ``${...}`` interpolation read as "skytrain"."""
    parsed = hcl(TERRAFORM / cloud)
    outputs = {name: body for block in parsed.get("output", []) for name, body in block.items()}
    return {name: re.sub(r"\$\{[^}]+\}", "skytrain", value) for name, value in outputs["skytrain_env"]["value"].items()}


@pytest.mark.parametrize("cloud", CLOUDS)
def test_skytrain_env_names_every_location_the_cluster_writes(cloud):
    """flows/ray_job.py hands each job these settings as resolved on the submitting machine: one left
    out is that machine's local default (``.skytrain/...``), which a node writes on its own disk."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from ray_jobs import storage
    from ray_jobs.settings import Settings

    env = skytrain_env(cloud)
    settings = {name for name in env if name.startswith("SKYTRAIN_")}
    assert settings == {"SKYTRAIN_DATA_STORE", "SKYTRAIN_RAY_STORAGE_PATH", "SKYTRAIN_MLFLOW_ARTIFACT_ROOT"}
    assert all(name.removeprefix("SKYTRAIN_").lower() in Settings.model_fields for name in settings)
    assert storage.is_remote(env["SKYTRAIN_DATA_STORE"]) and storage.is_remote(env["SKYTRAIN_RAY_STORAGE_PATH"])
    # MLflow with the project's pins (the nodes' too) opens the artifact root: not an abfss:// or
    # wasbs:// one, whose clients need Azure SDK packages that skytrain does not install.
    root = env["SKYTRAIN_MLFLOW_ARTIFACT_ROOT"]
    assert not root.startswith(("file:", "/", ".")), root
    get_artifact_repository(root, tracking_uri="http://127.0.0.1:5000")
