"""Ray Data's resource limits before the autoscaling coordinator answers (``ray_jobs/ray_data_limits.py``).

On a real local Ray: the autoscaler's coordinator proxy as an execution holds it at its start,
before any answer came back, and once the cluster's coordinator actor has reserved a CPU.
"""

from __future__ import annotations

import time
import uuid

import pytest
import ray
from ray.data._internal.cluster_autoscaler import DefaultAutoscalingCoordinator

from ray_jobs.ray_data_limits import MARK, autoscaler_classes, fall_back_to_cluster_resources


def at_start(autoscaler_class: type, coordinator=None):
    """An autoscaler whose coordinator proxy has not been answered yet (or ``coordinator``)."""
    autoscaler = object.__new__(autoscaler_class)  # only its coordinator is used to report resources
    autoscaler._autoscaling_coordinator = coordinator or DefaultAutoscalingCoordinator(f"skytrain-{uuid.uuid4().hex}")
    return autoscaler


def test_both_autoscalers_are_covered():
    names = {cls.__name__ for cls in autoscaler_classes()}
    assert names == {"RateBasedClusterAutoscaler", "DefaultClusterAutoscalerV2"}


@pytest.mark.parametrize("autoscaler_class", autoscaler_classes(), ids=lambda cls: cls.__name__)
def test_an_execution_starts_with_the_cluster_until_the_coordinator_reserves(local_ray, autoscaler_class):
    fall_back_to_cluster_resources()
    fall_back_to_cluster_resources()  # idempotent: wrapped once
    wrapped = autoscaler_class.get_total_resources
    ray_own = wrapped.__wrapped__
    assert getattr(wrapped, MARK) and not getattr(ray_own, MARK, False)

    # Ray's own answer at an execution's start: no resources at all. If a Ray release answers
    # otherwise, the module has done its work: remove it.
    assert ray_own(at_start(autoscaler_class)).cpu == 0

    limits = wrapped(at_start(autoscaler_class))
    assert limits.cpu == ray.cluster_resources()["CPU"] == 2
    assert limits.object_store_memory == ray.cluster_resources()["object_store_memory"]

    # Once the coordinator has reserved resources, they are the limits, as Ray has them: a real
    # request for one CPU, to the cluster's own coordinator actor.
    coordinator = DefaultAutoscalingCoordinator(f"skytrain-{uuid.uuid4().hex}")
    coordinator.request_resources([{"CPU": 1}], expire_after_s=120)
    try:
        autoscaler, deadline = at_start(autoscaler_class, coordinator), time.monotonic() + 60
        while (ray_view := ray_own(autoscaler)).cpu == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # the proxy answers from a cache its previous call refreshed
        assert ray_view.cpu == 1.0, "the coordinator reserved nothing in 60 s"
        reserved = wrapped(autoscaler)
        assert (reserved.cpu, reserved.object_store_memory) == (1.0, ray_view.object_store_memory)
        assert reserved.cpu < limits.cpu  # the reservation, not the cluster
    finally:
        coordinator.cancel_request()
