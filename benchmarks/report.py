"""What every benchmark writes: one JSON report per run under ``benchmarks/results/``."""

from __future__ import annotations

import json
import platform
from datetime import date
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write(name: str, quick: bool, cpus: int, targets: dict, results: list, output: Path | None) -> Path:
    """The report of benchmark ``name`` (machine, versions, targets, results) at ``output``, or at
    ``benchmarks/results/<date>-<name>[-quick].json``."""
    import mlflow
    import ray
    import torch

    report: dict[str, Any] = {
        "benchmark": name.replace("-", "_"),
        "quick": quick,
        "date": date.today().isoformat(),
        "machine": {"cpus": cpus, "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "ray": ray.__version__, "mlflow": mlflow.__version__},
        "targets": targets,
        "results": results,
    }
    output = output or RESULTS / f"{date.today().isoformat()}-{name}{'-quick' if quick else ''}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
    return output
