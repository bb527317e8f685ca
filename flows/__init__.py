"""Prefect flows: data prep, training, promotion and the retrain pipeline, one flow per file.

Importing the package points Prefect's home at skytrain's state directory (unless PREFECT_HOME
is set), so the embedded default keeps Prefect's SQLite database under ``.skytrain/prefect``.
"""

import os

from ray_jobs.settings import Settings

if "PREFECT_HOME" not in os.environ:
    _home = Settings().prefect_home
    _home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last path component
    os.environ["PREFECT_HOME"] = str(_home)
# Analytics off: offline it only fails, and it causes "database is locked" tracebacks.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The temporary server migrates a new database first: ~20 s on two cores, Prefect's default limit.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
