"""Prometheus metrics: one registry per app, so several apps (tests) never collide."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _LiveGauges(Collector):
    """Values read at scrape time from the running service."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        values = self._read()
        for name, help_text in (
            ("loomd_runs_active", "Runs executing in this process"),
            ("loomd_runs_queued", "Runs waiting for an execution slot in this process"),
            ("loomd_sse_clients", "Open event-stream subscriptions"),
        ):
            yield GaugeMetricFamily(name, help_text, value=values.get(name, 0))
        # Exposed as `loomd_events_persisted_total`: the client adds the suffix to counters.
        yield CounterMetricFamily("loomd_events_persisted", "Events written since start",
                                  value=values.get("loomd_events_persisted", 0))


class Metrics:
    """The service's metrics; `bind` connects the live gauges once the manager exists."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.runs_finished = Counter(
            "loomd_runs_finished", "Runs that reached a terminal status", ["status"],
            registry=self.registry)
        self.run_seconds = Histogram(
            "loomd_run_duration_seconds", "Wall time of runs from start to end",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.llm_seconds = Histogram(
            "loomd_llm_call_duration_seconds", "Duration of LLM calls (each attempt)",
            ["provider", "outcome"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tool_seconds = Histogram(
            "loomd_tool_call_duration_seconds", "Duration of tool calls", ["tool", "is_error"],
            buckets=LATENCY_BUCKETS, registry=self.registry)

        self.hook_deliveries = Counter(
            "loomd_hook_deliveries", "Requests to hooks, by phase and result",
            ["phase", "result"], registry=self.registry)
        self.hook_seconds = Histogram(
            "loomd_hook_call_duration_seconds", "Duration of gating hook calls", ["phase"],
            buckets=(0.001, 0.0025, *LATENCY_BUCKETS), registry=self.registry)

    def bind(self, read: Callable[[], dict[str, float]]) -> None:
        self.registry.register(_LiveGauges(read))
