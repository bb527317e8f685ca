"""Ray's session folders of the local Rays skytrain started: the newest kept, ended older ones removed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ray_jobs import ray_sessions


def _ended_pid() -> int:
    ended = subprocess.Popen(["true"])
    ended.wait()
    return ended.pid


def _session(root: Path, when: str, owner: int | None) -> Path:
    folder = root / f"session_2026-12-05_{when}_000000_1"
    (folder / "logs").mkdir(parents=True)
    (folder / "logs" / "raylet.out").write_text("log\n")
    if owner is not None:
        (folder / ray_sessions.MARK).write_text(str(owner))
    return folder


def test_ended_marked_sessions_beyond_the_newest_kept_are_removed_and_nothing_else(tmp_path):
    dead, me = _ended_pid(), os.getpid()
    oldest_dead = _session(tmp_path, "01-00-00", dead)
    old_alive = _session(tmp_path, "02-00-00", me)  # a Ray still in use keeps its folder, however old
    old_dead = _session(tmp_path, "03-00-00", dead)
    unmarked = _session(tmp_path, "04-00-00", None)  # another tool's Ray: never ours to remove
    kept = [_session(tmp_path, f"1{n}-00-00", dead) for n in range(2)]  # the newest two, ended
    (tmp_path / "session_latest").symlink_to(kept[-1])
    (tmp_path / "not_a_session").mkdir()

    assert ray_sessions.prune(tmp_path, keep=2) == [oldest_dead, old_dead]

    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([old_alive.name, unmarked.name, *(k.name for k in kept), "session_latest", "not_a_session"])
    assert (tmp_path / "session_latest").resolve() == kept[-1]


def test_keeping_none_removes_every_ended_one_and_a_garbled_mark_is_not_ours(tmp_path):
    dead = _ended_pid()
    ended = [_session(tmp_path, f"0{n}-00-00", dead) for n in range(3)]
    garbled = _session(tmp_path, "05-00-00", None)
    (garbled / ray_sessions.MARK).write_text("not a pid")
    assert ray_sessions.prune(tmp_path, keep=0) == ended
    assert [p.name for p in tmp_path.iterdir()] == [garbled.name]
    assert ray_sessions.prune(tmp_path / "missing", keep=0) == []


def test_a_marked_folder_names_this_process_and_an_unmarked_one_no_owner(tmp_path):
    folder = _session(tmp_path, "01-00-00", None)
    assert ray_sessions.owner(folder) is None
    ray_sessions.mark(folder)
    assert ray_sessions.owner(folder) == os.getpid()
    assert ray_sessions.prune(tmp_path, keep=0) == []  # its owner, this process, is alive


def test_a_folder_that_cannot_be_marked_is_reported_not_raised(tmp_path, caplog):
    ray_sessions.keep_newest(tmp_path, "session_that_does_not_exist", keep=10)
    assert "left as they are" in caplog.text
