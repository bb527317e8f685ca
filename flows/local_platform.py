"""The local platform behind ``make up``, ``make down`` and ``make status``.

``up`` starts, on 127.0.0.1, each as a process of its own recorded in
``<state_dir>/platform/pids/<name>.json`` and logging to ``<state_dir>/platform/logs/<name>.log``:

- ``postgres``: with ``SKYTRAIN_DB=postgres`` and no ``SKYTRAIN_POSTGRES_URL``, a PostgreSQL
  cluster in ``<state_dir>/platform/postgres`` (``initdb`` on first use) holding the databases
  ``prefect`` and ``mlflow``;
- ``prefect``: the Prefect server and UI (port 4200), its SQLite database in
  ``<state_dir>/prefect`` (the one the embedded default uses) or PostgreSQL;
- ``mlflow``: the MLflow tracking server and UI (port 5000, one worker) on the embedded default's
  store (``<state_dir>/mlflow.db`` and ``<state_dir>/mlartifacts``) or PostgreSQL;
- ``worker``: a Prefect worker on the ``skytrain-local`` process work pool.

It then creates the work pool, deploys ``prefect.yaml``, writes ``<state_dir>/platform/env``
(what flows started from this checkout read to report to these servers, ``flows/platform_state.py``)
and prints the URLs. A service already running is left as it is, so ``up`` twice is safe.
``down`` stops exactly the processes ``up`` recorded, by PID, the worker first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.platform_state import Layout, cmdline, running
from ray_jobs.settings import Settings

PROJECT_DIR = Path(__file__).resolve().parents[1]
WORK_POOL = "skytrain-local"
POSTGRES_DATABASES = ("prefect", "mlflow")


class PlatformSettings(BaseSettings):
    """Where and how ``make up`` runs the servers; every field from ``SKYTRAIN_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="SKYTRAIN_", extra="ignore")

    db: Literal["sqlite", "postgres"] = "sqlite"
    """Database of both servers: SQLite files in the state directory, or PostgreSQL."""

    postgres_url: str | None = None
    """An existing PostgreSQL server, ``postgresql://user:password@host:port``; the databases
    ``prefect`` and ``mlflow`` are created there when missing. Empty: a local cluster is started."""

    host: str = "127.0.0.1"
    prefect_port: int = Field(default=4200, ge=1, le=65535)
    mlflow_port: int = Field(default=5000, ge=1, le=65535)
    postgres_port: int = Field(default=5433, ge=1, le=65535)
    startup_timeout: float = Field(default=180.0, gt=0)
    """Seconds a server may take to answer its health check (a new Prefect database migrates first)."""


class PlatformError(RuntimeError):
    """A server could not start or stop; the message names it and where its log is."""


# --- process records ------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _start(layout: Layout, name: str, cmd: list[str], env: dict[str, str], marker: str, **record) -> dict:
    """Start ``cmd`` in a session of its own (so ``down`` can stop it and its children) and record it."""
    log = layout.log_file(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            cmd, env=env, cwd=PROJECT_DIR, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    entry = {"pid": process.pid, "marker": marker, "log": str(log), "started": time.time(), **record}
    _write_json(layout.pid_file(name), entry)
    entry["process"] = process
    return entry


def _stop(pid: int, first: signal.Signals, grace: float, group: bool = True) -> None:
    """Signal ``pid`` (the process group it leads, or only itself), wait up to ``grace`` seconds
    for it to be gone, then SIGKILL it."""
    send = os.killpg if group else os.kill

    def alive() -> bool:
        if not group:
            return cmdline(pid) is not None  # a zombie counts as gone
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return False
        return True

    for sig, wait in ((first, grace), (signal.SIGKILL, 5.0)):
        try:
            send(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not alive():
                return
            time.sleep(0.2)


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status when it is our child (``up`` and ``down`` in one process, as in tests)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except OSError:
        return False


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _wait_healthy(layout: Layout, name: str, url: str, timeout: float, process=None) -> None:
    """Until ``url`` answers 200; fails when the server exits (``process``: the one just started)."""
    deadline = time.monotonic() + timeout
    while not _http_ok(url):
        if (process.poll() is not None) if process else running(layout, name) is None:
            raise PlatformError(f"{name} exited while starting: see {layout.log_file(name)}")
        if time.monotonic() > deadline:
            raise PlatformError(f"{name} did not answer {url} within {timeout:.0f} s: see {layout.log_file(name)}")
        time.sleep(0.5)


# --- environment ------------------------------------------------------------------------------


def _base_env(settings: Settings) -> dict[str, str]:
    """The servers' environment: this virtualenv first on PATH, so what they or their flow runs start by
    name is this virtualenv's (MLflow 3.17's server itself starts uvicorn as ``sys.executable -m``)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["SKYTRAIN_STATE_DIR"] = str(settings.state_dir.resolve())
    env["PREFECT_HOME"] = str(settings.prefect_home.resolve())
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network at run time
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def client_env(config: PlatformSettings) -> dict[str, str]:
    """What a flow needs to report to the servers (written to the platform's env file)."""
    mlflow_url = f"http://{config.host}:{config.mlflow_port}"
    return {
        "PREFECT_API_URL": f"http://{config.host}:{config.prefect_port}/api",
        "SKYTRAIN_MLFLOW_TRACKING_URI": mlflow_url,
        "SKYTRAIN_MLFLOW_UI_URL": mlflow_url,
    }


# --- PostgreSQL -------------------------------------------------------------------------------


def _pg_binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if not found:
        raise PlatformError(f"SKYTRAIN_DB=postgres needs PostgreSQL's {name}: apt-get install -y postgresql")
    return str(found)


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


def _start_local_postgres(layout: Layout, config: PlatformSettings) -> str:
    """Start (after ``initdb`` on first use) the cluster in the state directory; its base URL."""
    url = f"postgresql://skytrain@{config.host}:{config.postgres_port}"
    if running(layout, "postgres"):
        return url
    data, log = layout.postgres_dir / "data", layout.log_file("postgres")
    layout.postgres_dir.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    if os.geteuid() == 0:  # the cluster's files belong to the user that runs it
        subprocess.run(["chown", "-R", "postgres:postgres", str(layout.postgres_dir), str(log)], check=True)
        if subprocess.run(_as_postgres_user(["test", "-w", str(layout.postgres_dir)])).returncode != 0:
            raise PlatformError(
                f"PostgreSQL runs as the postgres user here (initdb refuses root), who cannot reach "
                f"{layout.postgres_dir}: make its parent folders traversable (chmod o+x), or set "
                "SKYTRAIN_POSTGRES_URL to a server of your own"
            )
    if not (data / "PG_VERSION").is_file():
        cmd = [_pg_binary("initdb"), "-D", str(data), "-U", "skytrain", "-A", "trust", "-E", "UTF8"]
        _run(_as_postgres_user(cmd), "initdb", log)
    if not _port_free(config.host, config.postgres_port):
        raise PlatformError(
            f"port {config.postgres_port} on {config.host} is taken by a process make up did not start: "
            "set SKYTRAIN_POSTGRES_PORT, or SKYTRAIN_POSTGRES_URL to use that server"
        )
    options = f"-c listen_addresses={config.host} -p {config.postgres_port} -k {layout.postgres_dir}"
    cmd = [_pg_binary("pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"]
    _run(_as_postgres_user(cmd), "pg_ctl start", log)
    pid = int((data / "postmaster.pid").read_text().split()[0])
    _write_json(layout.pid_file("postgres"), {"pid": pid, "marker": "postgres", "log": str(log), "url": url})
    return url


def _run(cmd: list[str], what: str, log: Path) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise PlatformError(f"{what} failed ({result.returncode}): {result.stderr.strip()[-500:]} (log: {log})")


def _ensure_databases(base_url: str) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(f"{base_url}/postgres")
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cursor:
            for name in POSTGRES_DATABASES:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()


def _database_urls(layout: Layout, config: PlatformSettings, settings: Settings) -> tuple[str | None, str]:
    """The Prefect database URL (None: its SQLite default) and the MLflow backend store URI."""
    if config.db == "sqlite":
        return None, f"sqlite:///{(settings.state_dir / 'mlflow.db').resolve()}"
    base = config.postgres_url or _start_local_postgres(layout, config)
    base = base.rstrip("/").replace("postgresql://", "", 1).replace("postgres://", "", 1)
    _ensure_databases(f"postgresql://{base}")
    return f"postgresql+asyncpg://{base}/prefect", f"postgresql+psycopg2://{base}/mlflow"


# --- up / down / status -----------------------------------------------------------------------


def _ensure_server(
    layout: Layout, name: str, cmd: list[str], env: dict, health: str, config: PlatformSettings, marker: str
) -> tuple[str, subprocess.Popen | None]:
    """Start server ``name`` unless it already runs (the caller waits for ``health``): what it did, and
    the process it started."""
    port = int(health.split(":")[2].split("/")[0])
    if record := running(layout, name):
        return f"{name}: already running (pid {record['pid']})", None
    if not _port_free(config.host, port):
        raise PlatformError(
            f"{name}: port {port} on {config.host} is taken by a process make up did not start "
            f"(set SKYTRAIN_{name.upper()}_PORT to use another)"
        )
    url = health.removesuffix("/health").removesuffix("/api")
    record = _start(layout, name, cmd, env, marker=marker, url=url)
    return f"{name}: started (pid {record['pid']})", record["process"]


def _deployed_fingerprint(api_url: str) -> str:
    """What the deployments were made from: prefect.yaml and the flows' code (their parameter schemas)."""
    digest = hashlib.sha256(api_url.encode())
    for path in [PROJECT_DIR / "prefect.yaml", *sorted((PROJECT_DIR / "flows").rglob("*.py"))]:
        digest.update(str(path.relative_to(PROJECT_DIR)).encode() + path.read_bytes())
    return digest.hexdigest()


def _prefect(env: dict[str, str], *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "prefect", *args], env=env, cwd=PROJECT_DIR, capture_output=True, text=True
    )
    if result.returncode != 0:
        out = (result.stdout + result.stderr).strip()[-2000:]
        raise PlatformError(f"prefect {' '.join(args)} failed ({result.returncode}):\n{out}")


def up(config: PlatformSettings | None = None, settings: Settings | None = None, say=print) -> dict[str, str]:
    """Start what is not running, deploy, start the worker; returns the client environment."""
    config, settings = config or PlatformSettings(), settings or Settings()
    layout = Layout(settings.state_dir)
    env = _base_env(settings)
    prefect_db, mlflow_store = _database_urls(layout, config, settings)
    if prefect_db:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = prefect_db
    clients = client_env(config)
    # The UI calls the API at the address these say (default port 4200, whatever --port is), unless
    # PREFECT_UI_API_URL is exported: the public address of a reverse proxy in front of the server.
    env["PREFECT_SERVER_API_HOST"], env["PREFECT_SERVER_API_PORT"] = config.host, str(config.prefect_port)
    env.setdefault("PREFECT_UI_API_URL", clients["PREFECT_API_URL"])
    python, host = sys.executable, config.host
    prefect_cmd = [python, "-m", "prefect", "server", "start", "--host", host, "--port", str(config.prefect_port)]
    servers = [
        _ensure_server(
            layout, "prefect", prefect_cmd, env, f"{clients['PREFECT_API_URL']}/health", config, "prefect server start"
        )
    ]
    artifacts = (settings.state_dir / "mlartifacts").resolve()
    artifacts.mkdir(parents=True, exist_ok=True)
    mlflow_cmd = [python, "-m", "mlflow", "server", "--host", host, "--port", str(config.mlflow_port)]
    mlflow_cmd += ["--workers", "1", "--backend-store-uri", mlflow_store, "--default-artifact-root", str(artifacts)]
    mlflow_url = clients["SKYTRAIN_MLFLOW_TRACKING_URI"]
    # MLflow's job runner (8 processes, for GenAI features skytrain does not use) stays off.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    servers.append(_ensure_server(layout, "mlflow", mlflow_cmd, env, f"{mlflow_url}/health", config, "mlflow server"))
    # Both start at once; then each must answer.
    for (said, process), name, health in zip(
        servers, ("prefect", "mlflow"), (f"{clients['PREFECT_API_URL']}/health", f"{mlflow_url}/health")
    ):
        _wait_healthy(layout, name, health, config.startup_timeout, process)
        say(said)

    worker_env = {**env, **clients}
    worker_env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)  # a client: it talks to the API
    fingerprint, deployed = _deployed_fingerprint(clients["PREFECT_API_URL"]), layout.root / "deployed.sha256"
    prefect_started = servers[0][1] is not None
    if prefect_started or not deployed.is_file() or deployed.read_text() != fingerprint:
        _prefect(worker_env, "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite")
        _prefect(worker_env, "--no-prompt", "deploy", "--all")
        deployed.write_text(fingerprint)
        say(f"deployments: prefect.yaml deployed to work pool {WORK_POOL}")
    else:
        say("deployments: up to date (prefect.yaml and flows/ unchanged since the last deploy)")
    if record := running(layout, "worker"):
        say(f"worker: already running (pid {record['pid']})")
    else:
        cmd = [python, "-m", "prefect", "worker", "start", "--pool", WORK_POOL, "--type", "process"]
        record = _start(layout, "worker", cmd, worker_env, marker="worker", pool=WORK_POOL)
        say(f"worker: started (pid {record['pid']}) on work pool {WORK_POOL}")
    layout.env_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = layout.env_file.with_suffix(".tmp")
    tmp.write_text("".join(f"{k}={v}\n" for k, v in clients.items()))
    os.replace(tmp, layout.env_file)
    return clients


SERVICES = ("postgres", "prefect", "mlflow", "worker")
STOP_SIGNALS = {"worker": signal.SIGINT, "postgres": signal.SIGINT}  # postgres: SIGINT is a fast shutdown


def down(settings: Settings | None = None, say=print) -> list[str]:
    """Stop what ``up`` started, by the PIDs it recorded: the worker first; returns their names."""
    layout = Layout((settings or Settings()).state_dir)
    layout.env_file.unlink(missing_ok=True)  # flows stop reporting to the servers first
    stopped = []
    for name in reversed(SERVICES):
        record = running(layout, name)
        if record is not None:
            if name == "postgres":  # the postmaster is not a session leader: signal the PID itself
                _stop(record["pid"], STOP_SIGNALS[name], grace=30.0, group=False)
            else:
                _stop(record["pid"], STOP_SIGNALS.get(name, signal.SIGTERM), grace=20.0)
            say(f"{name}: stopped (pid {record['pid']})")
            stopped.append(name)
        layout.pid_file(name).unlink(missing_ok=True)
    if not stopped:
        say("nothing was running")
    return stopped


def status(settings: Settings | None = None, say=print) -> dict[str, dict | None]:
    """What runs: each service's record (pid, URL, log) or None."""
    layout = Layout((settings or Settings()).state_dir)
    found = {name: running(layout, name) for name in SERVICES}
    for name, record in found.items():
        if record is None:
            say(f"{name:<9} stopped")
        else:
            where = record.get("url") or (f"work pool {record['pool']}" if "pool" in record else "")
            say(f"{name:<9} running  pid {record['pid']:<7} {where}  log {record['log']}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.local_platform", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    command = parser.parse_args(argv).command
    try:
        if command == "up":
            clients = up()
            config = PlatformSettings()
            print(f"\nPrefect UI   http://{config.host}:{config.prefect_port}")
            print(f"MLflow UI    {clients['SKYTRAIN_MLFLOW_TRACKING_URI']}")
            print(f"Flows started from this checkout now report to them ({Layout(Settings().state_dir).env_file}).")
        elif command == "down":
            down()
        else:
            status()
    except PlatformError as error:
        print(f"make {command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
