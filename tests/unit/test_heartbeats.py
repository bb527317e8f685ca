"""Sync flow runs keep their heartbeats but do not wait for the heartbeat thread on exit."""

from __future__ import annotations

import logging
import threading

from prefect import flow_engine

import flows  # noqa: F401  (installs the heartbeat context)
from flows.heartbeats import _prefect_send_heartbeats, send_heartbeats_without_join


class _Engine:
    """What Prefect's heartbeat context uses of a flow run engine; its emit blocks until released."""

    heartbeat_seconds = 30
    flow_run = None
    logger = logging.getLogger(__name__)

    def __init__(self) -> None:
        self.emitted, self.release = threading.Event(), threading.Event()

    def _build_heartbeat_event_template(self):
        return {"prefect.resource.id": "test"}, []

    def _emit_flow_run_heartbeat(self, resource, related) -> None:
        self.thread = threading.current_thread()  # the heartbeat thread
        self.emitted.set()
        self.release.wait(10)


def test_the_flow_engine_uses_the_unjoined_heartbeat_context():
    assert flow_engine._send_heartbeats is send_heartbeats_without_join


def _record_joins(monkeypatch) -> list[threading.Thread]:
    joined: list[threading.Thread] = []
    original_join = threading.Thread.join

    def recording_join(thread, timeout=None):
        joined.append(thread)
        return original_join(thread, timeout)

    monkeypatch.setattr(threading.Thread, "join", recording_join)
    return joined


def test_prefects_own_heartbeat_context_still_joins_its_thread(monkeypatch):
    """A canary: Prefect's context, called as its sync engine calls it, waits for the heartbeat
    thread on exit. When this fails, Prefect no longer joins it and flows/heartbeats.py can go."""
    joined, engine = _record_joins(monkeypatch), _Engine()
    with _prefect_send_heartbeats(engine):
        assert engine.emitted.wait(10), "no heartbeat was emitted"
        threading.Timer(0.2, engine.release.set).start()  # lets the thread see its stop event
    assert engine.thread in joined and not engine.thread.is_alive()


def test_the_heartbeat_is_sent_and_its_thread_never_joined(monkeypatch):
    original_join = threading.Thread.join
    joined, engine = _record_joins(monkeypatch), _Engine()
    with flow_engine._send_heartbeats(engine):  # the sync engine's call: join_on_exit left at True
        assert engine.emitted.wait(10), "no heartbeat was emitted"
    heartbeat = engine.thread
    assert heartbeat is not threading.current_thread()
    assert heartbeat.is_alive() and heartbeat not in joined  # still in its emit: nothing waited for it
    engine.release.set()
    original_join(heartbeat, 5)  # it returns within a second of the stop event
    assert not heartbeat.is_alive()
