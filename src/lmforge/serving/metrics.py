"""Prometheus metrics of one server, in a registry of its own (so that several apps in one
process, as in the tests, do not share or clash).

    lmforge_requests_total{endpoint, status}         requests answered
    lmforge_prompt_tokens_total{model}               prompt tokens read
    lmforge_generation_tokens_total{model}           tokens generated
    lmforge_time_to_first_token_seconds{model}       histogram: request received → first token
    lmforge_inter_token_latency_seconds{model}       histogram: between tokens of one sequence
    lmforge_active_sequences{model}                  gauge: sequences in the engine's batch
    lmforge_queued_sequences{model}                  gauge: sequences waiting for a slot
    lmforge_engine_steps_total{model}                decode steps run by the engine
    lmforge_engine_seconds_total{model, phase}       engine time reading prompts and slid
                                                     windows, decoding, sampling
    lmforge_engine_read_tokens_total{model}          tokens read by prompt and window reads

The gauges and the step counter are read from the engines when scraped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    """The metrics of one app; ``engines`` maps model id → engine (read at scrape time)."""

    def __init__(self, engines: Mapping[str, Any]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lmforge_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "lmforge_prompt_tokens", "Prompt tokens read", ["model"], registry=self.registry
        )
        self.generation_tokens = Counter(
            "lmforge_generation_tokens", "Tokens generated", ["model"], registry=self.registry
        )
        self.time_to_first_token = Histogram(
            "lmforge_time_to_first_token_seconds",
            "Seconds from receiving a completion request to its first generated token",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.inter_token_latency = Histogram(
            "lmforge_inter_token_latency_seconds",
            "Seconds between consecutive generated tokens of one sequence",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(engines))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    """Gauges and counters read from the engines when scraped."""

    def __init__(self, engines: Mapping[str, Any]) -> None:
        self.engines = engines

    def collect(self) -> Iterator[Metric]:
        active = GaugeMetricFamily(
            "lmforge_active_sequences", "Sequences in the engine's batch now", labels=["model"]
        )
        queued = GaugeMetricFamily(
            "lmforge_queued_sequences", "Sequences waiting for a batch slot", labels=["model"]
        )
        steps = CounterMetricFamily(
            "lmforge_engine_steps", "Decode steps run by the engine", labels=["model"]
        )
        seconds = CounterMetricFamily(
            "lmforge_engine_seconds",
            "Engine seconds by phase: read (prompts and slid windows), decode, sample",
            labels=["model", "phase"],
        )
        read_tokens = CounterMetricFamily(
            "lmforge_engine_read_tokens",
            "Tokens read by prompt and window reads (a slid window's again at each re-read)",
            labels=["model"],
        )
        for name, engine in self.engines.items():
            active.add_metric([name], engine.active)
            queued.add_metric([name], engine.queued)
            steps.add_metric([name], engine.steps)
            for phase, value in engine.seconds.items():
                seconds.add_metric([name, phase], value)
            read_tokens.add_metric([name], engine.read_tokens)
        yield from (active, queued, steps, seconds, read_tokens)
