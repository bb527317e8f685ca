"""The HAProxy wrapper of ``ray_jobs/serve_ingress.py``, run by a real shell on a configuration shaped
like Ray Serve's (``haproxy_templates.py``), with a stand-in binary that shows what it was given.
The real HAProxy started by Serve is checked on its sockets by tests/integration/test_serving.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ray_jobs import processes, serve_ingress

STAND_IN = """#!/bin/sh
# args, then the configuration it was given (the argument after -f)
printf 'arg %s\\n' "$@"
previous=
for arg; do
  if [ "$previous" = "-f" ]; then cat "$arg"; fi
  previous=$arg
done
"""


def configuration(stats: str, metrics: str) -> str:
    return f"""global
    stats socket /x/admin.sock mode 666 level admin expose-fd listeners
frontend prometheus
    bind :{metrics}
frontend http_frontend
    bind *:8000
frontend http_loopback
    bind 127.0.0.1:8001
listen stats
  bind *:{stats}
  stats enable
backend b
    server r1 127.0.0.1:30000 check
"""


@pytest.fixture
def wrapped(tmp_path: Path) -> tuple[dict[str, str], Path]:
    stand_in = tmp_path / "stand-in"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o700)
    folder = tmp_path / "haproxy files"  # a space: the wrapper quotes what it is given
    folder.mkdir()
    return serve_ingress.haproxy_environment(folder, binary=str(stand_in)), folder


def test_the_side_listeners_move_to_loopback_and_nothing_else_changes(wrapped):
    env, folder = wrapped
    stats, metrics = env["RAY_SERVE_HAPROXY_STATS_PORT"], env["RAY_SERVE_HAPROXY_METRICS_PORT"]
    config = folder / "haproxy.cfg"
    original = configuration(stats, metrics)
    config.write_text(original)

    wrapper = env["RAY_SERVE_HAPROXY_BINARY_PATH"]
    result = subprocess.run([wrapper, "-db", "-f", str(config), "-sf", "123"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()

    assert lines[:5] == ["arg -db", "arg -f", f"arg {config}.loopback", "arg -sf", "arg 123"]
    given = "\n".join(lines[5:]) + "\n"
    assert f"    bind 127.0.0.1:{metrics}\n" in given
    assert f"  bind 127.0.0.1:{stats}\n" in given
    # The serving port keeps serve_host (here every interface, as SKYTRAIN_SERVE_HOST=0.0.0.0 asks).
    assert "    bind *:8000\n" in given and "    bind 127.0.0.1:8001\n" in given
    assert given == original.replace(f"bind :{metrics}", f"bind 127.0.0.1:{metrics}").replace(
        f"bind *:{stats}", f"bind 127.0.0.1:{stats}"
    )
    assert config.read_text() == original, "Serve's own file must stay as Serve wrote it"
    assert not list(folder.glob("*.loopback.*")), "the copy is written under a temporary name, then renamed"


def test_a_missing_configuration_fails_before_haproxy_starts(wrapped):
    env, folder = wrapped
    wrapper = env["RAY_SERVE_HAPROXY_BINARY_PATH"]
    result = subprocess.run([wrapper, "-db", "-f", str(folder / "absent.cfg")], capture_output=True, text=True)
    assert result.returncode != 0 and "arg" not in result.stdout


def test_every_file_of_haproxy_stays_in_the_private_folder(wrapped):
    env, folder = wrapped
    paths = [value for name, value in env.items() if name.endswith(("_PATH", "_LOC", "_BASE", "_FILE"))]
    assert len(paths) == 6
    assert all(folder in (Path(path), Path(path).parent) for path in paths), paths
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] != env["RAY_SERVE_HAPROXY_METRICS_PORT"]


def test_a_local_ray_folder_is_private_and_short_enough_for_haproxy_sockets():
    env = serve_ingress.local_ray_environment("haproxy")
    folder = Path(env["RAY_SERVE_HAPROXY_SOCKET_PATH"]).parent
    assert folder.stat().st_mode & 0o777 == 0o700
    # Serve adds a 56-character node ID folder; HAProxy refuses socket paths over 97 characters.
    longest = max(len(env[name]) for name in ("RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"))
    assert longest + 57 <= 97


def test_serve_s_own_proxy_needs_nothing_and_an_unknown_mode_is_refused():
    assert serve_ingress.local_ray_environment("proxy") == {}
    with pytest.raises(ValueError, match="serve ingress must be one of"):
        serve_ingress.local_ray_environment("nginx")


def test_without_an_haproxy_binary_serve_keeps_its_own_proxy(monkeypatch, caplog):
    def missing() -> str:
        raise FileNotFoundError("no HAProxy binary")

    monkeypatch.setattr(serve_ingress, "haproxy_binary", missing)
    assert serve_ingress.local_ray_environment("haproxy") == {}
    assert "Ray Serve's own proxy takes HTTP instead" in caplog.text


def test_where_the_wrapper_cannot_run_serve_keeps_its_own_proxy(monkeypatch, caplog):
    real_access = serve_ingress.os.access

    def noexec(path, mode):  # as access(2) answers on a filesystem mounted noexec
        return False if mode == serve_ingress.os.X_OK and "skyhap-" in str(path) else real_access(path, mode)

    monkeypatch.setattr(serve_ingress.os, "access", noexec)
    assert serve_ingress.local_ray_environment("haproxy") == {}
    assert "cannot run programs" in caplog.text


def test_folders_whose_owner_is_gone_are_removed_and_no_other(tmp_path):
    """A process killed by a signal never runs its exit handler: its folder is removed by the next
    local Ray, once no process has its PID; a live owner's folder and one without an owner stay."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    folders = {}
    for name, owner in (("dead", ended.pid), ("alive", os.getpid()), ("unowned", None)):
        folders[name] = tmp_path / f"{serve_ingress.FOLDER_PREFIX}{name}"
        folders[name].mkdir()
        (folders[name] / "haproxy.cfg").write_text("global\n")
        if owner is not None:
            (folders[name] / serve_ingress.OWNER_FILE).write_text(str(owner))
    (tmp_path / "other-dead").mkdir()  # not ours by name
    (tmp_path / "other-dead" / serve_ingress.OWNER_FILE).write_text(str(ended.pid))
    new = processes.private_folder(serve_ingress.FOLDER_PREFIX, serve_ingress.OWNER_FILE, tmp_path)
    assert not folders["dead"].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["other-dead", f"{serve_ingress.FOLDER_PREFIX}alive", f"{serve_ingress.FOLDER_PREFIX}unowned", new.name]
    )
    assert (new / serve_ingress.OWNER_FILE).read_text() == str(os.getpid())


def test_a_local_ray_folder_records_its_owner():
    env = serve_ingress.local_ray_environment("haproxy")
    folder = Path(env["RAY_SERVE_HAPROXY_SOCKET_PATH"]).parent
    assert (folder / serve_ingress.OWNER_FILE).read_text() == str(os.getpid())
