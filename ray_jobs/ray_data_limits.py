"""Ray Data's resource limits during an execution's first second (Ray 2.60).

Ray Data sizes each operator's budget from the resources its cluster autoscaler says the
execution may use. In Ray 2.60 both autoscalers (``RATE_BASED``, the default, and ``V2``) ask the
cluster's autoscaling coordinator without waiting, and the first answer is the proxy's empty cache;
the coordinator reserves resources for the execution only once the autoscaler has asked for some.
Ray Data keeps the limits it computed for a second (``ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S``).
So every execution starts with limits of zero, and runs one task per operator at a time until
they are refreshed: on this project's 2-core machine batch inference's 5,394,000 diamonds rows
were scored one chunk at a time for the run's first second, of 2.2 s.

``fall_back_to_cluster_resources`` makes an empty reservation mean what it meant before the
coordinator existed: the cluster's resources (``ray.cluster_resources()``). A reservation the
coordinator did make is used as it is. It patches the process it runs in, where Ray Data's
executor runs: the driver, for a dataset the driver iterates.
"""

from __future__ import annotations

import functools
import logging

import ray

logger = logging.getLogger(__name__)

MARK = "_skytrain_cluster_fallback"


def autoscaler_classes() -> list[type]:
    """Ray Data's cluster autoscalers whose ``get_total_resources`` reports the coordinator's reservation."""
    try:
        from ray.data._internal.cluster_autoscaler import DefaultClusterAutoscalerV2, RateBasedClusterAutoscaler
    except ImportError:  # another Ray: its autoscalers are not these
        return []
    return [RateBasedClusterAutoscaler, DefaultClusterAutoscalerV2]


def fall_back_to_cluster_resources() -> None:
    """An execution's limits are the cluster's resources while the coordinator has reserved none."""
    from ray.data._internal.execution.interfaces import ExecutionResources

    for autoscaler in autoscaler_classes():
        reserved_resources = getattr(autoscaler, "get_total_resources", None)
        if reserved_resources is None or getattr(reserved_resources, MARK, False):
            continue

        @functools.wraps(reserved_resources)
        def total_resources(self, _reserved=reserved_resources) -> ExecutionResources:
            reserved = _reserved(self)
            if reserved.cpu or reserved.gpu:
                return reserved
            return ExecutionResources.from_resource_dict(ray.cluster_resources())

        setattr(total_resources, MARK, True)
        autoscaler.get_total_resources = total_resources
        logger.debug("Ray Data's %s: the cluster's resources until the coordinator reserves some", autoscaler.__name__)
