"""checkov over all of infra/terraform/: every finding must be one infra/terraform/.checkov.yaml accepts,
with its reason, and every accepted finding must still occur (a fixed one leaves the list).

checkov cannot share the project's virtualenv (it pins boto3==1.35.49): it is found at
$SKYTRAIN_CHECKOV, in .venv/checkov/ (a venv of its own that `make test` creates there, inside the
project venv's folder so that git and Ray job uploads skip it), or on the PATH; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.infra.tools import REPO, TERRAFORM

CONFIG = TERRAFORM / ".checkov.yaml"
# Scan the optional database too: checkov evaluates `count`, and create_database is off by default.
WITH_DATABASE = 'create_database = true\ndatabase_vpc_id = "vpc-0"\ndatabase_subnet_ids = ["subnet-a", "subnet-b"]\n'


def checkov_executable() -> str | None:
    configured = os.environ.get("SKYTRAIN_CHECKOV")
    for candidate in (configured, REPO / ".venv" / "checkov" / "bin" / "checkov", shutil.which("checkov")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def accepted_with_reasons() -> dict[str, str]:
    """skip-check entries of the config and the comment block above each (its reason)."""
    reasons, comment, in_list = {}, [], False
    for line in CONFIG.read_text().splitlines():
        stripped = line.strip()
        if re.match(r"^[a-z-]+:", line):
            in_list, comment = line.startswith("skip-check:"), []
        elif stripped.startswith("#"):
            comment.append(stripped.lstrip("# "))
        elif in_list and stripped.startswith("- "):
            reasons[stripped[2:].strip()] = " ".join(comment)
        elif not stripped:
            comment = []
    return reasons


def test_every_accepted_finding_has_a_reason():
    reasons = accepted_with_reasons()
    assert reasons == {k: v for k, v in reasons.items() if re.fullmatch(r"CKV2?_[A-Z]+_\d+", k)}
    missing = [check for check, reason in reasons.items() if len(reason) < 20]
    assert not missing, f"accepted without a reason comment above: {missing}"
    assert reasons.keys() == set(yaml.safe_load(CONFIG.read_text())["skip-check"])


def test_checkov_finds_nothing_beyond_the_accepted_list(tmp_path):
    checkov = checkov_executable()
    if checkov is None:
        pytest.skip(
            "checkov is not installed (SKYTRAIN_CHECKOV, .venv/checkov/ or PATH): `make test` creates .venv/checkov"
        )
    config = yaml.safe_load(CONFIG.read_text())
    var_file = tmp_path / "with-database.tfvars"
    var_file.write_text(WITH_DATABASE)
    # checkov applies a .checkov.yaml found in the scanned folder: scan a copy without it, so that
    # the accepted findings show up and can be compared with the list.
    scanned_copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, scanned_copy, ignore=shutil.ignore_patterns(CONFIG.name, ".terraform"))
    args = [
        checkov,
        "--directory",
        str(scanned_copy),
        "--framework",
        "terraform",
        "--skip-download",
        "--output",
        "json",
    ]
    args += ["--var-file", str(var_file)]
    for path in config["skip-path"]:
        args += ["--skip-path", path]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_OUTPUT_COLOR": "1", "HOME": str(tmp_path)}
    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode in (0, 1), f"checkov failed to run ({result.returncode}):\n{result.stderr[-3000:]}"
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    summary = reports[0]["summary"]
    assert summary["parsing_errors"] == 0, "a file checkov cannot parse is a file it did not check"
    assert summary["resource_count"] >= 25, summary
    failed = {(c["check_id"], c["resource"], c["file_path"]) for r in reports for c in r["results"]["failed_checks"]}
    scanned = {
        c["resource"] for r in reports for kind in ("passed_checks", "failed_checks") for c in r["results"][kind]
    }
    assert any(r.startswith("aws_db_instance.") for r in scanned), "the optional database was not scanned"
    accepted = set(accepted_with_reasons())
    new = sorted(f for f in failed if f[0] not in accepted)
    assert not new, (
        "checkov findings not in infra/terraform/.checkov.yaml (fix them, or accept with a reason):\n"
        + "\n".join(map(str, new))
    )
    stale = sorted(accepted - {f[0] for f in failed})
    assert not stale, f"accepted findings that no longer occur (remove them from .checkov.yaml): {stale}"
