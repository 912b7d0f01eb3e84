"""GET /metrics in the Prometheus text format, with prometheus_client: one registry per service
(no module globals), a histogram of queue waits observed by the worker, and everything else read
from the worker and the engine when scraped."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

QUEUE_WAIT_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, service: Any):
        self.registry = CollectorRegistry(auto_describe=True)
        self.queue_wait = Histogram("phi4mm_queue_wait_seconds", "Time requests waited for a runner",
                                    buckets=QUEUE_WAIT_BUCKETS_S, registry=self.registry)
        self.registry.register(_Collector(service))

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Collector:
    def __init__(self, service: Any):
        self.service = service

    def describe(self) -> list:
        return []  # only known once scraped (the engine may be a stand-in without a scheduler)

    def collect(self):
        worker = self.service.worker
        yield _gauge("phi4mm_requests_running", "Requests being served", worker.in_flight)
        yield _gauge("phi4mm_requests_queued", "Requests waiting for a runner", worker.queued)
        yield _gauge("phi4mm_queued_media_bytes", "Decoded media held by waiting requests",
                     worker.queued_media_bytes)
        yield _counter("phi4mm_requests_rejected", "Requests refused because the queue was full",
                       worker.n_rejected)
        yield _counter("phi4mm_requests_cancelled", "Requests dropped from the queue or stopped mid-way",
                       worker.n_cancelled)
        engine = getattr(self.service.engine, "engine", None)
        if engine is not None and hasattr(engine, "scheduler"):
            yield from _engine_metrics(engine)


def _engine_metrics(engine: Any):
    stats, contexts = engine.scheduler.stats, engine.contexts
    yield _gauge("phi4mm_sequences_running", "Sequences holding a KV slot", len(engine.scheduler.running))
    yield _gauge("phi4mm_sequences_waiting", "Sequences waiting for a KV slot", len(engine.scheduler.waiting))
    yield _gauge("phi4mm_kv_slots", "KV slots per context", contexts.n_slots)
    yield _gauge("phi4mm_kv_contexts", "Open llama.cpp contexts (one per adapter set and LongRoPE factor set)",
                 len(contexts.contexts))
    yield _gauge("phi4mm_kv_cells_allocated", "KV cells of every open context", contexts.cells_allocated())
    yield _gauge("phi4mm_kv_budget_cells", "KV cells the open contexts may hold together (--kv-budget-mb)",
                 contexts.budget_cells or 0)
    yield _gauge("phi4mm_kv_slots_busy", "KV slots held by running sequences", contexts.busy())
    yield _gauge("phi4mm_kv_cells_used", "KV cells holding rows (running and cached prefixes)",
                 contexts.cells_cached() + sum(seq.pos for seq in list(engine.scheduler.running)))
    yield _gauge("phi4mm_tokens_per_second", "Tokens generated per second over the last 10 s",
                 stats.tokens_per_second(time.perf_counter()))
    yield _counter("phi4mm_completion_tokens", "Tokens generated", stats.completion_tokens)
    yield _counter("phi4mm_prompt_rows", "Prompt rows decoded (not reused from a cached prefix)",
                   stats.prompt_rows)
    yield _counter("phi4mm_decode_steps", "Batches decoded", stats.steps)
    yield _counter("phi4mm_sequences_finished", "Sequences that ran to their end", stats.finished)
    yield _counter("phi4mm_sequences_cancelled", "Sequences cancelled", stats.cancelled)
    yield _counter("phi4mm_sequences_failed", "Sequences ended by an engine error", stats.failed)
    prefix = contexts.stats
    yield _counter("phi4mm_prefix_cache_hits", "Requests that reused a cached KV prefix", prefix.hits)
    yield _counter("phi4mm_prefix_cache_rows_reused", "Prompt rows reused from cached KV prefixes",
                   prefix.rows_reused)
    media = engine.encoders.cache.stats
    yield _counter("phi4mm_media_cache_hits", "Images and clips whose rows came from the cache", media.hits)
    yield _counter("phi4mm_media_cache_misses", "Images and clips encoded", media.misses)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def merge_expositions(by_replica: dict[str, str]) -> tuple[bytes, str]:
    """One exposition holding every replica's series, each sample labelled `replica="<id>"`: what a
    single scrape of a deployment of several engine replicas returns."""
    from prometheus_client.parser import text_string_to_metric_families

    merged: dict[str, Any] = {}
    for replica, text in sorted(by_replica.items()):
        for family in text_string_to_metric_families(text):
            into = merged.setdefault(family.name, _empty_like(family))
            for sample in family.samples:
                into.samples.append(sample._replace(labels={**sample.labels, "replica": replica}))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(merged.values())))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _empty_like(family: Any) -> Any:
    from prometheus_client.metrics_core import Metric

    return Metric(family.name, family.documentation, family.type, family.unit)


class _Families:
    def __init__(self, families: list):
        self.families = families

    def collect(self):
        yield from self.families
