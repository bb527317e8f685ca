"""Prefect flows: data prep, training, promotion and the retrain pipeline, one flow per file.

Importing the package points Prefect's home at skytrain's state directory (unless PREFECT_HOME
is set), so the embedded default keeps Prefect's SQLite database under ``.skytrain/prefect``, and
keeps a locally started Ray on the loopback interface. While the servers of ``make up`` run for
this state directory, it points Prefect and MLflow at them (``flows/platform_state.py``).
"""

import os

from flows.platform_state import use_running_servers
from ray_jobs.settings import Settings

_settings = Settings()
use_running_servers(_settings)  # before Prefect is imported: it reads PREFECT_API_URL once
if "PREFECT_HOME" not in os.environ:
    _home = _settings.prefect_home
    _home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last path component
    os.environ["PREFECT_HOME"] = str(_home)
# Analytics off: offline it only fails, and it causes "database is locked" tracebacks.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The temporary server migrates a new database first: ~20 s on two cores, Prefect's default limit.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# A local Ray (no address configured) binds 127.0.0.1 only; Ray reads this when it is imported.
if not (_settings.ray_address or os.environ.get("RAY_ADDRESS")):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from flows import heartbeats  # noqa: E402  (after PREFECT_HOME: it imports Prefect)

heartbeats.install()  # sync flow runs no longer wait up to 1 s for the heartbeat thread
