"""bandit, the static security check for Python, over the project's code: no HIGH-severity finding.

Lower severities are reviewed, not gated: most are ``assert`` in tests and ``subprocess`` calls with
fixed argument lists. A planted weak hash proves the check reports HIGH findings at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCANNED = ["flows", "ray_jobs", "benchmarks", "tests", "infra"]


def bandit(paths: list[str], root: Path) -> dict:
    """bandit's JSON report over the Python files under ``paths``."""
    result = subprocess.run(
        [sys.executable, "-m", "bandit", "--recursive", "--format", "json", "--quiet", *paths],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode in (0, 1), f"bandit failed to run ({result.returncode}):\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    assert not report["errors"], f"files bandit could not check: {report['errors']}"
    return report


def high(report: dict) -> list[str]:
    return [
        f"{r['filename']}:{r['line_number']}: {r['test_id']} {r['issue_text']}"
        for r in report["results"]
        if r["issue_severity"] == "HIGH"
    ]


def test_no_high_severity_finding_in_the_project():
    report = bandit(SCANNED, REPO)
    checked = {name for name in report["metrics"] if name != "_totals"}
    for folder in ("flows", "ray_jobs", "benchmarks", "tests"):
        assert any(name.startswith(f"{folder}/") for name in checked), f"bandit checked nothing in {folder}/"
    found = high(report)
    assert not found, "bandit's HIGH-severity findings (fix them):\n" + "\n".join(found)


def test_a_planted_high_severity_finding_is_reported(tmp_path):
    (tmp_path / "tokens.py").write_text("import hashlib\n\n\ndef token(data):\n    return hashlib.md5(data).digest()\n")
    assert high(bandit(["."], tmp_path)) == [
        "./tokens.py:5: B324 Use of weak MD5 hash for security. Consider usedforsecurity=False"
    ]
