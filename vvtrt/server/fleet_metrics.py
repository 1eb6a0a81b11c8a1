"""`vvtrt serve --ray` metrics: one Prometheus exposition over the fleet, every series labelled `replica`:
`replica="front"` is the front process's own view (what clients saw: TTFA, outcomes, truncations, the
fleet's summed engine counters, the GPUs of the front's host) and `replica="r0"`, `"r1"`, ... each
replica's own series (its engine's counters and the requests it ran). The dashboard data adds each
replica's recent points and where it runs."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from vvtrt.server.metrics import ServerMetrics

FRONT = "front"


def merge_expositions(texts: dict[str, str]) -> bytes:
    """The Prometheus texts of several processes as one exposition, each sample labelled replica=NAME."""
    families: dict[str, Metric] = {}
    for replica, text in texts.items():
        for fam in text_string_to_metric_families(text):
            into = families.get(fam.name)
            if into is None:
                into = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            into.samples.extend(s._replace(labels={**s.labels, "replica": replica}) for s in fam.samples)

    class _Merged:
        def collect(self):
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)


class FleetMetrics(ServerMetrics):
    def __init__(self, fleet, gpu_monitor=None):
        super().__init__(gpu_monitor)
        self.fleet = fleet

    def exposition(self) -> bytes:
        own = generate_latest(self.registry).decode()
        return merge_expositions({FRONT: own, **self.fleet.expositions()})

    def dashboard_extra(self, seconds: float) -> dict:
        """Per replica: where it runs, its state and its recent points (active streams, queue, frames/s...)."""
        series = self.fleet.histories(time.time() - seconds)
        return {"replicas": [{**v, "series": series.get(v["name"], [])} for v in self.fleet.views()]}
