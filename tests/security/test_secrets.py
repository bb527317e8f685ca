"""The secrets scan of ``make test``: detect-secrets over every file of the repository, each finding
either accepted with its reason in ``accepted_secrets.yaml`` or a failure, and every accepted finding
still occurring (a fixed one leaves the list), as tests/infra/test_checkov.py does for checkov.

"Every file" is what git tracks plus the untracked files it does not ignore (what the next commit can
add): a secret is caught before it is committed, not after. A planted AWS key proves the scan finds
what it is meant to find, so the test cannot pass by scanning nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ACCEPTED = Path(__file__).with_name("accepted_secrets.yaml")


@dataclass(frozen=True, order=True)
class Finding:
    file: str
    type: str
    hashed_secret: str

    def entry(self) -> str:
        """The lines to add to accepted_secrets.yaml, when the finding is truly not a secret."""
        return (
            f"- file: {self.file}\n  type: {self.type}\n  hashed_secret: {self.hashed_secret}\n"
            "  reason: <why this is not a secret>"
        )


def repository_files() -> list[str]:
    """Files git tracks, and untracked ones it does not ignore, relative to the repository root."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git work tree (or no git): the scan covers the files git lists ({error})")
    return sorted(name for name in listed.decode().split("\0") if name and (REPO / name).is_file())


def scan(files: list[str], root: Path) -> dict[Finding, list[int]]:
    """detect-secrets (every plugin, its default filters) over ``files``: each finding and its lines."""
    result = subprocess.run(
        [sys.executable, "-m", "detect_secrets", "scan", "--all-files", *files],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"detect-secrets failed ({result.returncode}):\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    found: dict[Finding, list[int]] = {}
    for file, secrets in report["results"].items():
        for secret in secrets:
            found.setdefault(Finding(file, secret["type"], secret["hashed_secret"]), []).append(secret["line_number"])
    return found


def sha1(text: str) -> str:
    """How detect-secrets names a flagged string (an identifier, not a protection)."""
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def accepted() -> dict[Finding, str]:
    """The accepted findings and their reasons."""
    entries = yaml.safe_load(ACCEPTED.read_text())
    return {Finding(e["file"], e["type"], e["hashed_secret"]): e["reason"] for e in entries}


def unaccepted(found: dict[Finding, list[int]], accepted: dict[Finding, str]) -> list[Finding]:
    """Findings not in the list. The list's own hashes look like secrets to the scan (hex strings
    under a key named ``hashed_secret``): a finding in the list file whose string is one of them is
    the list itself; anything else in that file is a finding like any other."""
    list_file = str(ACCEPTED.relative_to(REPO))
    own_hashes = {sha1(f.hashed_secret) for f in accepted}
    return sorted(f for f in found if f not in accepted and not (f.file == list_file and f.hashed_secret in own_hashes))


def test_every_accepted_finding_names_one_string_and_says_why():
    entries = yaml.safe_load(ACCEPTED.read_text())
    assert entries, "the list is empty: the scan found nothing to accept?"
    for entry in entries:
        assert set(entry) == {"file", "type", "hashed_secret", "reason"}, entry
        assert re.fullmatch(r"[0-9a-f]{40}", entry["hashed_secret"]), entry
        assert len(entry["reason"]) >= 20, f"accepted without a reason: {entry}"
        assert (REPO / entry["file"]).is_file(), f"no such file: {entry['file']}"
    assert len(accepted()) == len(entries), "an entry is listed twice"


def test_the_repository_holds_no_secret_beyond_the_accepted_findings():
    files = repository_files()
    assert {"README.md", "pyproject.toml", "ray_jobs/settings.py"} <= set(files), "the file list is incomplete"
    found = scan(files, REPO)
    listed = accepted()
    new = unaccepted(found, listed)
    assert not new, (
        "the secrets scan found these (remove the secret and rotate it; if it truly is none, add the entry "
        f"with its reason to {ACCEPTED.relative_to(REPO)}):\n"
        + "\n".join(f"{f.file}:{','.join(map(str, found[f]))}: {f.type}\n{f.entry()}" for f in new)
    )
    stale = sorted(set(listed) - set(found))
    assert not stale, f"accepted findings that no longer occur (remove them from {ACCEPTED.name}): {stale}"


def test_a_planted_aws_key_is_caught(tmp_path):
    """The scan and the comparison the repository test uses, on a file holding an AWS-key-shaped string
    (built here, so that this file holds none)."""
    key_id = "AKIA" + "J7QW2ZK4N8XR5TLM"
    (tmp_path / "deploy.py").write_text(f'AWS_ACCESS_KEY_ID = "{key_id}"\n')
    found = scan(["deploy.py"], tmp_path)
    new = unaccepted(found, accepted())
    planted = Finding("deploy.py", "AWS Access Key", sha1(key_id))
    assert planted in new, found
    assert found[planted] == [1]
