"""The Ray cluster launcher configs (infra/ray/*.yaml): Ray's own validator, then skytrain's rules."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.infra.tools import INFRA, RAY_CONFIGS, REPO, canonical, project_requirements, requires_python

INSTALL_SCRIPT = REPO / "infra" / "ray" / "install_node.sh"
PROJECT_MOUNT = "~/skytrain"
INSTALL_COMMAND = f"bash {PROJECT_MOUNT}/infra/ray/install_node.sh"
CLOUDS = sorted(RAY_CONFIGS)


def load(cloud: str) -> dict:
    return yaml.safe_load(RAY_CONFIGS[cloud].read_text())


def prepared(cloud: str) -> dict:
    config = prepare_config(load(cloud))
    validate_config(config)
    return config


def worker_types(config: dict) -> dict[str, dict]:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def has_gpu(cloud: str, node_type: dict) -> bool:
    """The GPU the cloud attaches to this node type (not only what Ray is told)."""
    node = node_type["node_config"]
    if cloud == "aws":
        return re.match(r"(g[4-6]|g6e|p[3-5])[a-z]*\.", node["InstanceType"]) is not None
    if cloud == "gcp":
        return sum(a["acceleratorCount"] for a in node.get("guestAccelerators", [])) > 0
    return re.match(r"Standard_N[CDV]", node["azure_arm_parameters"]["vmSize"]) is not None


def is_spot(cloud: str, node_type: dict) -> bool:
    node = node_type["node_config"]
    if cloud == "aws":
        return node.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    if cloud == "gcp":
        scheduling = node.get("scheduling", {})
        return scheduling.get("provisioningModel") == "SPOT" or scheduling.get("preemptible") is True
    return node["azure_arm_parameters"].get("priority") == "Spot"


def choose_nodes(config: dict, demands: list[dict]) -> dict[str, int]:
    """The worker types Ray's autoscaler would launch for ``demands`` on an empty cluster."""

    def scorer(node_resources, resources, node_type):
        return _default_utilization_scorer(node_resources, resources, node_type, node_availability_summary=None)

    head = config["head_node_type"]
    to_add, unfulfilled = get_nodes_for(
        config["available_node_types"], {head: 1}, head, config["max_workers"], demands, scorer
    )
    assert not unfulfilled, f"no node type fits {unfulfilled}"
    return dict(to_add)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_ray_validates_the_config(cloud):
    config = prepared(cloud)
    assert config["provider"]["type"] == cloud


def test_ray_validator_rejects_a_broken_config():
    """The validator is live: an unknown top-level field and a min above the global max both fail."""
    config = load("aws")
    config["max_worker"] = 3
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config(config))
    config = load("aws")
    config["available_node_types"]["gpu_worker"]["min_workers"] = config["max_workers"] + 1
    with pytest.raises(ValueError, match="min_workers"):
        validate_config(prepare_config(config))


@pytest.mark.parametrize("cloud", CLOUDS)
def test_head_trains_nothing_and_has_no_gpu(cloud):
    config = prepared(cloud)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    assert not has_gpu(cloud, head), "the head is a CPU machine"


@pytest.mark.parametrize("cloud", CLOUDS)
def test_gpu_and_cpu_worker_types(cloud):
    workers = worker_types(prepared(cloud))
    gpu = {name for name, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    cpu = {
        name for name, t in workers.items() if t["resources"].get("GPU", 0) == 0 and t["resources"].get("CPU", 0) > 0
    }
    assert gpu and cpu, f"{cloud}: GPU types {gpu}, CPU types {cpu}"
    for name in gpu:
        assert has_gpu(cloud, workers[name]), f"{cloud}: {name} claims a GPU its machine type lacks"
    for name in cpu:
        assert not has_gpu(cloud, workers[name]), f"{cloud}: {name} pays for a GPU Ray never uses"
    if cloud == "gcp":  # GPU VMs cannot live-migrate
        for name in gpu:
            assert workers[name]["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE"
            assert re.match(r"(g2|a2|a3)-", workers[name]["node_config"]["machineType"])
    if cloud == "aws":
        assert all(re.match(r"g[56]\.", workers[n]["node_config"]["InstanceType"]) for n in gpu)
    if cloud == "azure":
        assert all(workers[n]["node_config"]["azure_arm_parameters"]["vmSize"].startswith("Standard_NC") for n in gpu)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_bounds_and_idle_timeout(cloud):
    raw, config = load(cloud), prepared(cloud)
    assert 1 <= raw["idle_timeout_minutes"] <= 60, "set explicitly: idle GPUs cost money"
    workers = worker_types(config)
    for name, t in workers.items():
        assert "max_workers" in raw["available_node_types"][name], f"{name}: set max_workers explicitly"
        assert 0 <= t["min_workers"] <= t["max_workers"] <= config["max_workers"], name
    assert sum(t["min_workers"] for t in workers.values()) == 0, "an idle cluster is only its head"
    assert 0 < config["max_workers"] <= 16


@pytest.mark.parametrize("cloud", CLOUDS)
def test_idle_workers_are_deleted_not_stopped(cloud):
    """``cache_stopped_nodes``: Ray's AWS and Azure providers default to stopping an idle node, whose
    disk (and, on Azure, its IP and NIC) keep costing money after it 'left'; GCP's defaults to
    deleting. Every config says so explicitly."""
    assert load(cloud)["provider"].get("cache_stopped_nodes") is False, "set provider.cache_stopped_nodes: false"


@pytest.mark.parametrize("cloud", CLOUDS)
def test_spot_gpu_preferred_with_on_demand_fallback(cloud):
    config = prepared(cloud)
    workers = worker_types(config)
    spot_gpu = [n for n, t in workers.items() if is_spot(cloud, t) and t["resources"].get("GPU")]
    on_demand_gpu = [n for n, t in workers.items() if not is_spot(cloud, t) and t["resources"].get("GPU")]
    assert len(spot_gpu) == 1 and len(on_demand_gpu) == 1, (spot_gpu, on_demand_gpu)
    # Two training workers (skytrain asks 1 CPU + 1 GPU each on a cluster) go to spot nodes...
    assert choose_nodes(config, [{"CPU": 1, "GPU": 1}] * 2) == {spot_gpu[0]: 2}
    # ...on-demand GPUs only once the spot type is full...
    spot_max = workers[spot_gpu[0]]["max_workers"]
    launched = choose_nodes(config, [{"CPU": 1, "GPU": 1}] * (spot_max + 1))
    assert launched == {spot_gpu[0]: spot_max, on_demand_gpu[0]: 1}
    # ...and CPU-only work (data prep) never starts a GPU machine.
    assert set(choose_nodes(config, [{"CPU": 1}] * 8)) <= {
        n for n, t in workers.items() if not t["resources"].get("GPU")
    }


def test_spot_preference_check_can_fail():
    """Without the on-demand type's extra resource Ray could pick either GPU type."""
    config = prepared("aws")
    del config["available_node_types"]["gpu_worker"]["resources"]["on_demand"]
    config["available_node_types"]["gpu_worker"]["resources"]["CPU"] = 2  # now the better fit
    assert "gpu_worker" in choose_nodes(config, [{"CPU": 1, "GPU": 1}] * 2)


def pip_installs(commands: list[str]) -> list[list[str]]:
    """The arguments after ``pip install`` of every pip call in ``commands``."""
    found = []
    for command in commands:
        for part in re.split(r"&&|;|\n", command):
            words = shlex.split(part)
            for i in range(len(words) - 1):
                if words[i].endswith(("pip", "pip3")) or words[i : i + 2] == ["-m", "pip"]:
                    rest = words[i + 1 :] if words[i].endswith(("pip", "pip3")) else words[i + 2 :]
                    if rest[:1] == ["install"]:
                        found.append(rest[1:])
                    break
    return found


def requirements_of(args: list[str]) -> list[str]:
    return [a for a in args if not a.startswith("-")]


@pytest.mark.parametrize("cloud", CLOUDS)
def test_setup_installs_the_mounted_project_and_only_pinned_extras(cloud):
    raw, config = load(cloud), prepared(cloud)
    # The project reaches every node as ~/skytrain, from this checkout (paths relative to the repo root).
    mounts = raw["file_mounts"]
    for remote, local in mounts.items():
        assert remote.startswith(PROJECT_MOUNT + "/") and (REPO / local).exists(), (remote, local)
    assert (REPO / mounts[f"{PROJECT_MOUNT}/pyproject.toml"]).resolve() == (REPO / "pyproject.toml").resolve()
    for package in ("ray_jobs", "flows"):
        assert (REPO / mounts[f"{PROJECT_MOUNT}/{package}"]).resolve() == (REPO / package).resolve()
    # Every node runs the install script first; Ray's provider defaults (nightly Ray, conda envs) never run.
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert config[key][0] == INSTALL_COMMAND, f"{key} must start with {INSTALL_COMMAND}"
    everything = "\n".join(str(c) for key in config if key.endswith("_commands") for c in config[key])
    for default in ("ray-wheels", "ray-3.0.0.dev0", "conda create", "pip install -U", "tensorflow"):
        assert default not in everything, f"{cloud}: provider default leaked in: {default}"
    # Anything installed beside the project is exactly pinned and not one of the project's packages.
    pins = project_requirements()
    for args in pip_installs(config["head_setup_commands"] + config["worker_setup_commands"]):
        for requirement in map(Requirement, requirements_of(args)):
            spec = str(requirement.specifier)
            assert spec.startswith("==") and "," not in spec, f"{cloud}: {requirement} is not pinned"
            assert canonical(requirement.name) not in pins, f"{cloud}: {requirement} overrides pyproject.toml"


def readme_pip_installs(markdown: str) -> list[list[str]]:
    """The ``pip install`` calls in the code of a Markdown text: fenced blocks (with ``\\`` line
    continuations joined) and inline code spans, each call with the pip it runs as its first word."""
    fenced = [block.replace("\\\n", " ") for block in re.findall(r"```[a-z]*\n(.*?)```", markdown, re.S)]
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", markdown, flags=re.S))
    lines = [line.split(" #")[0] for code in fenced + inline for line in code.splitlines()]
    calls = []
    for line in lines:
        if re.search(r"\bpip3?\b.*\binstall\b", line):
            words = shlex.split(line)
            pip = next(w for w in words if w.endswith(("pip", "pip3", "python")))
            calls += [[pip, *args] for args in pip_installs([line])]
    return calls


def unpinned_readme_installs(markdown: str) -> list[str]:
    """What a README's pip commands install that is not exactly pinned, or that would override
    pyproject.toml's pins inside the project's .venv."""
    pins, problems = project_requirements(), []
    for pip, *args in readme_pip_installs(markdown):
        for requirement in map(Requirement, requirements_of(args)):
            spec = str(requirement.specifier)
            if not spec.startswith("==") or "," in spec:
                problems.append(f"{pip}: {requirement} is not pinned")
            if pip.startswith(".venv/") and canonical(requirement.name) in pins:
                problems.append(f"{pip}: {requirement} overrides pyproject.toml")
    return problems


def test_infra_readme_installs_only_pinned_packages():
    markdown = (INFRA / "README.md").read_text()
    assert len(readme_pip_installs(markdown)) >= 2, "the GCP and Azure launcher installs"
    assert unpinned_readme_installs(markdown) == []
    # The check can fail: the unpinned install it once had, a pin of its own into the project venv.
    assert unpinned_readme_installs("`.venv/bin/pip install azure-cli-core azure-core==1.35.0`")
    assert unpinned_readme_installs("```bash\n.venv/bin/pip install \\\n  ray==2.59.0\n```\n")


def test_install_script_installs_exactly_the_project():
    script = INSTALL_SCRIPT.read_text()
    subprocess.run(["bash", "-n", str(INSTALL_SCRIPT)], check=True)
    installs = pip_installs([line for line in script.splitlines() if re.search(r"\bpip\b.*\binstall\b", line)])
    assert [requirements_of(args) for args in installs] == [["$PROJECT_DIR"]], installs
    assert 'PROJECT_DIR="${SKYTRAIN_PROJECT_DIR:-$HOME/skytrain}"' in script
    # The venv's Python is the one pyproject.toml allows.
    minimum = re.search(r">=\s*(3\.\d+)", requires_python()).group(1)
    assert f"--python {minimum} " in script
    assert "pip check" in script
    # The project's pins, as pip will read them from the mounted pyproject.toml.
    pins = project_requirements()
    assert str(pins["torch"].specifier) == "==2.13.0" and "default" in pins["ray"].extras


def gpu_check_snippet() -> str:
    script = INSTALL_SCRIPT.read_text()
    return re.search(r"<< 'EOF'\n(.*?)\nEOF", script, re.S).group(1)


@pytest.mark.parametrize(
    ("cuda", "available", "ok"),
    [("12.8", True, True), (None, False, False), ("12.8", False, False)],
    ids=["cuda-build-sees-gpu", "cpu-build", "driver-too-old"],
)
def test_gpu_nodes_refuse_a_torch_that_cannot_use_the_gpu(tmp_path: Path, cuda, available, ok):
    """install_node.sh's check on GPU nodes, run against a stand-in torch module."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(
        "import types\n__version__ = '2.13.0'\n"
        f"version = types.SimpleNamespace(cuda={cuda!r})\n"
        f"cuda = types.SimpleNamespace(is_available=lambda: {available}, get_device_name=lambda i: 'NVIDIA A10G')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", gpu_check_snippet()],
        env={"PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert (result.returncode == 0) == ok, result.stderr
    if not ok:
        assert "install_node.sh" in result.stderr


SECRET_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "credential assignment": r"(?i)(secret|password|passwd|token|access_key|account_key)\s*[:=]\s*\S+",
    "connection string with a password": r"[a-z+]+://[^/\s:@]+:[^/\s@]+@",
    "Azure storage key": r"AccountKey=",
}


@pytest.mark.parametrize(
    "path", [*RAY_CONFIGS.values(), REPO / "infra" / "ray" / "install_node.sh"], ids=lambda p: p.name
)
def test_no_credentials_or_settings_committed(path: Path):
    text = path.read_text()
    for what, pattern in SECRET_PATTERNS.items():
        assert not re.search(pattern, text), f"{path.name}: {what}"
    # Settings reach the jobs from the submitting environment (flows/ray_job.py), not from here.
    assert not re.search(
        r"\b(SKYTRAIN_[A-Z_]+|MLFLOW_[A-Z_]+|PREFECT_[A-Z_]+|AWS_[A-Z_]+)\s*=", text.replace("SKYTRAIN_PROJECT_DIR", "")
    )
    assert not re.search(r"\b(s3|gs|abfss?)://", text), f"{path.name}: names a bucket"


def test_secret_scan_can_fail(tmp_path: Path):
    config = copy.deepcopy(load("aws"))
    config["setup_commands"].append("export AWS_SECRET_ACCESS_KEY=abc123")
    text = yaml.safe_dump(config)
    assert re.search(SECRET_PATTERNS["credential assignment"], text)


def test_every_node_starts_ray_with_serves_throughput_settings():
    """The cluster's nodes and the KubeRay image run Ray Serve as a local Ray does (ray_jobs/cluster.py)."""
    from ray_jobs.cluster import SERVE_THROUGHPUT_SETTINGS

    exports = "export " + " ".join(f"{name}={value}" for name, value in SERVE_THROUGHPUT_SETTINGS.items()) + ";"
    for cloud, path in RAY_CONFIGS.items():
        config = yaml.safe_load(path.read_text())
        for key in ("head_start_ray_commands", "worker_start_ray_commands"):
            starts = [command for command in config[key] if "ray start" in command]
            assert starts and all(exports in command.split("ray start")[0] for command in starts), (cloud, key)
    dockerfile = (INFRA / "kuberay" / "Dockerfile").read_text()
    for name, value in SERVE_THROUGHPUT_SETTINGS.items():
        assert f"{name}={value}" in dockerfile, name
