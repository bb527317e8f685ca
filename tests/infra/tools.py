"""Helpers of the infra checks: where things are, and the external tools they need (or why not)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
RAY_CONFIGS = {cloud: INFRA / "ray" / f"{cloud}.yaml" for cloud in ("aws", "gcp", "azure")}
TERRAFORM = INFRA / "terraform"
MIRROR_ENV = "SKYTRAIN_TF_PROVIDER_MIRROR"


def project_requirements() -> dict[str, Requirement]:
    """pyproject.toml's runtime dependencies by normalized name."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {canonical(r.name): r for r in map(Requirement, project["dependencies"])}


def requires_python() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def terraform_binary() -> str | None:
    return shutil.which("terraform")


def provider_mirror() -> Path | None:
    """The folder holding registry.terraform.io/hashicorp/aws: $SKYTRAIN_TF_PROVIDER_MIRROR, else found."""
    configured = os.environ.get(MIRROR_ENV)
    candidates = [Path(configured)] if configured else []
    if not configured:
        for root in (Path("/opt"), Path("/usr/local/share"), Path("/usr/share"), Path.home()):
            if root.is_dir():
                candidates += [p.parent for p in root.glob("*/registry.terraform.io")]
                candidates += [p.parent for p in root.glob("registry.terraform.io")]
    for candidate in candidates:
        if (candidate / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
            return candidate
    return None


def terraform_env(tmp: Path, mirror: Path | None) -> dict[str, str]:
    """An environment where terraform keeps its data under ``tmp`` and installs only from ``mirror``."""
    cli_config = tmp / "terraform.rc"
    installation = (
        f'provider_installation {{\n  filesystem_mirror {{\n    path    = "{mirror}"\n'
        '    include = ["registry.terraform.io/hashicorp/*"]\n  }\n}\n'
        if mirror
        else ""
    )
    cli_config.write_text(installation)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "AWS_"))}
    return env | {
        "TF_CLI_CONFIG_FILE": str(cli_config),
        "TF_DATA_DIR": str(tmp / "tf-data"),
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "CHECKPOINT_DISABLE": "1",  # no version check over the network
    }


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def explain(result: subprocess.CompletedProcess) -> str:
    return f"{' '.join(result.args)} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
