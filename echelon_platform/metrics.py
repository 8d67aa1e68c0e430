"""Prometheus metrics, held by an object (its own registry) rather than module globals."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_latency = Histogram(
            "echelon_http_request_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.events_published = Counter("echelon_events_published_total", "Events published", ["topic"], registry=r)
        self.events_appended = Counter(
            "echelon_coordinator_events_appended_total", "Events newly appended to the log", registry=r
        )
        self.events_duplicate = Counter(
            "echelon_coordinator_events_duplicate_total", "Events already in the log (redelivery)", registry=r
        )
        self.events_projected = Counter(
            "echelon_coordinator_events_projected_total", "Events projected into Redis", registry=r
        )
        self.events_parked = Counter("echelon_coordinator_events_parked_total", "Poison messages parked", registry=r)
        self.read_model_rebuilds = Counter(
            "echelon_coordinator_read_model_rebuilds_total", "Read models rebuilt from the log", registry=r
        )
        self.writer_stalls = Counter(
            "echelon_coordinator_stalls_total",
            "Writer steps that took longer than the stall threshold",
            ["step"],
            registry=r,
        )
        self.coordinator_lag = Gauge(
            "echelon_coordinator_lag_events", "Stream messages not yet applied by the coordinator", registry=r
        )
        self.batch_seconds = Histogram(
            "echelon_coordinator_batch_seconds", "Time to append+project+ack one batch", registry=r
        )
        self.stage_processed = Counter(
            "echelon_stage_processed_total", "Messages handled by a stage", ["stage", "outcome"], registry=r
        )
        self.stage_seconds = Histogram("echelon_stage_seconds", "Stage handling time", ["stage"], registry=r)
        self.judge_tokens = Counter("echelon_judge_tokens_total", "Judge tokens", ["model", "direction"], registry=r)
        self.judge_cost = Counter("echelon_judge_cost_usd_total", "Judge cost in USD", ["model"], registry=r)
        self.ws_clients = Gauge("echelon_ws_clients", "Connected WebSocket clients", registry=r)
        self.ws_dropped = Counter("echelon_ws_dropped_total", "WebSocket messages dropped", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
