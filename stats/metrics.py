"""Prometheus metrics (`GET /metrics`); the health check is stats/healthz.py.

Everything lives in one `CollectorRegistry` per `RelayMetrics` (never prometheus_client's
global registry), so two apps in one process (tests) never share or collide. Metrics are
per process; with `--workers N` each scrape answers for every worker (stats/worker_metrics.py).

Exposed families (labels are fixed words, never an identifier):

- ``pn_relay_pushes_total{provider="apns"|"fcm", outcome="sent"|"failed"}``: from the lifetime
  counters ``ios_pn_number``, ``ios_pn_failed``, ``android_pn_number``, ``android_pn_failed``
  (each provider's `sent_counter` and `failed_counter`, push/providers.py, whose `label` is the
  ``provider`` label everywhere).
- ``pn_relay_events_total{event=<counter name>}``: every other counter of `COUNTER_NAMES`
  (``total_message_number``, ``closed_group_message_number``, ``tokens_pruned``, ...), and
  the events of `METRIC_EVENTS` (``devices_replaced``, ``apns_config_storms``, ...), which have
  no statistics column.
- ``pn_relay_refused_total{reason}``: requests an abuse limit refused (`REFUSAL_REASONS`:
  ``notify_rate``, ``group_members``, ``data_too_large``).
- ``pn_relay_push_latency_seconds{provider}``: histogram, fed by `observe_push_latency` (the
  dispatcher's `observe_latency` hook: notify accepted -> provider accepted).
- ``pn_relay_pushes_in_flight{provider}``: gauge; read at scrape time from the
  `pushes_in_flight` callable if one is given (e.g. the dispatcher lanes' own `in_flight`),
  else kept by `push_started` / `push_finished` (or the `track_push` context manager, which
  also observes the latency).
- ``pn_relay_queue_depth`` and ``pn_relay_queue_oldest_age_seconds``: read at scrape time from
  the `queue_stats` callable, if one is given; omitted from a scrape where it raises.
- ``pn_relay_requests_in_flight``: read from the `requests_in_flight` callable, if given.
- ``pn_relay_push_results_total{provider, result, reason}``: every provider answer (or failure
  to get one), fed by `observe_push_outcome` (push/observed.py): ``result`` is the verdict
  (accepted, transient, dead_token, config_error, rejected), ``reason`` the provider's reason
  word or ours ("InternalServerError", "TooManyRequests", "timeout", "ConnectionClosed",
  "UNAVAILABLE"...), "" when accepted. Reasons are bounded: characters outside
  ``[A-Za-z0-9_]`` become ``_``, at most 48 of them, and past `MAX_REASONS` distinct values
  per provider the rest count as "other".
- ``pn_relay_provider_paused{provider}``: 1 while a configuration error pauses the provider's
  lane, read from the `lanes_paused` callable.
- ``pn_relay_database_errors_total``: writes the database refused or failed (the writer's
  count, from the `database_errors` callable): an outage shows here while /healthz says 503.
- ``process_*``: prometheus_client's process collector (CPU, memory, open files) on Linux;
  with several workers, one series per worker, labelled ``worker``.
- ``pn_relay_workers_reporting``: with several workers only, those whose figures are fresh.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from push.outcome import PushOutcome
from push.outcome import Verdict as PushVerdict
from push.providers import PROVIDERS, ProviderInfo
from stats.auth import StatsAuth, requires_auth
from stats.counters import REFUSAL_REASONS, Counters, counter_names, metric_events, refusal_counter
from stats.worker_metrics import WorkerMetrics
from storage.records import Provider
from web.answers import plain

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, float("inf"))
MAX_REASONS = 64  # distinct reason labels per provider; beyond, "other"
_REASON_CHARS = re.compile(r"[^A-Za-z0-9_]+")

QueueStats = Callable[[], tuple[int, float]]
ProviderKey = str | Provider
# (provider, pushes in flight) pairs, e.g. `[(lane.provider, lane.in_flight) for lane in lanes]`
InFlightPushes = Callable[[], Iterable[tuple[ProviderKey, int]]]
# (provider, paused) pairs, e.g. `[(lane.provider, lane.paused) for lane in lanes]`
PausedLanes = Callable[[], Iterable[tuple[ProviderKey, bool]]]


class ProviderLabels:
    """The providers of the table as label values, and the counters that count their pushes."""

    def __init__(self, providers: Sequence[ProviderInfo[Any]]) -> None:
        self.labels = tuple(info.label for info in providers)
        self._by_provider = {info.provider: info.label for info in providers}
        self.counter_names = counter_names(providers)
        self.metric_events = metric_events(providers)
        self.push_counters: dict[str, tuple[str, str]] = {}
        for info in providers:
            self.push_counters[info.sent_counter] = (info.label, "sent")
            self.push_counters[info.failed_counter] = (info.label, "failed")

    def __call__(self, provider: ProviderKey) -> str:
        """A provider as a label value: its `label`, or "other" (bounded cardinality).

        Takes the `storage.records.Provider` enum (what the dispatcher passes) or a label.
        """
        if isinstance(provider, str):
            return provider if provider in self.labels else "other"
        return self._by_provider.get(provider, "other")


@dataclass(eq=False)  # a registry keys its collectors by identity
class _CountersCollector(Collector):
    counters: Counters
    providers: ProviderLabels

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily, CounterMetricFamily]:
        pushes = CounterMetricFamily(
            "pn_relay_pushes",
            "Pushes handed to a provider since this process started, by outcome.",
            labels=["provider", "outcome"],
        )
        events = CounterMetricFamily(
            "pn_relay_events",
            "Relay events since this process started (statistics counter names, and events"
            " without a statistics column).",
            labels=["event"],
        )
        refused = CounterMetricFamily(
            "pn_relay_refused",
            "Requests refused by an abuse limit since this process started, by reason.",
            labels=["reason"],
        )
        return pushes, events, refused

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        refusal_names = tuple(refusal_counter(reason) for reason in REFUSAL_REASONS)
        names = self.providers.counter_names + self.providers.metric_events
        lifetime = self.counters.lifetime(names + refusal_names)
        pushes, events, refused = self._families()
        push_counters = self.providers.push_counters
        for name in names:
            if name in push_counters:
                pushes.add_metric(list(push_counters[name]), lifetime.get(name, 0))
            else:
                events.add_metric([name], lifetime.get(name, 0))
        for reason, name in zip(REFUSAL_REASONS, refusal_names, strict=True):
            refused.add_metric([reason], lifetime.get(name, 0))
        return [pushes, events, refused]


def _gauge(name: str, documentation: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


@dataclass(eq=False)  # a registry keys its collectors by identity
class _CallbackCollector(Collector):
    """Gauges read from callables at scrape time (never at registration: `describe`)."""

    providers: ProviderLabels
    _requests_in_flight: Callable[[], int] | None
    _pushes_in_flight: InFlightPushes
    _lanes_paused: PausedLanes | None = None
    _database_errors: Callable[[], int] | None = None

    def _families(self) -> dict[str, GaugeMetricFamily]:
        families = {
            "pushes": _gauge(
                "pn_relay_pushes_in_flight",
                "Pushes sent to a provider and not yet answered.",
                ["provider"],
            )
        }
        if self._requests_in_flight is not None:
            families["requests"] = _gauge(
                "pn_relay_requests_in_flight",
                "HTTP requests being answered by the worker threads.",
            )
        if self._lanes_paused is not None:
            families["paused"] = _gauge(
                "pn_relay_provider_paused",
                "1 while a configuration error pauses pushes to the provider.",
                ["provider"],
            )
        return families

    def _counter_families(self) -> dict[str, CounterMetricFamily]:
        if self._database_errors is None:
            return {}
        return {
            "database_errors": CounterMetricFamily(
                "pn_relay_database_errors",
                "Database writes that failed (refused, or the database unreachable).",
            )
        }

    def describe(self) -> Iterable[Metric]:
        return [*self._families().values(), *self._counter_families().values()]

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        found: list[Metric] = []
        if self._lanes_paused is not None:
            paused = dict.fromkeys(self.providers.labels, 0)
            for provider, is_paused in self._lanes_paused():
                paused[self.providers(provider)] = int(is_paused)
            for label, value in paused.items():
                families["paused"].add_metric([label], value)
            found.append(families["paused"])
        if self._database_errors is not None:
            errors = self._counter_families()["database_errors"]
            errors.add_metric([], self._database_errors())
            found.append(errors)
        totals = dict.fromkeys(self.providers.labels, 0)
        try:
            for provider, count in self._pushes_in_flight():
                label = self.providers(provider)
                totals[label] = totals.get(label, 0) + count
        except Exception as exc:  # noqa: BLE001 - the rest of the scrape still answers
            log.warning("in-flight pushes unavailable for /metrics (%s)", type(exc).__name__)
        else:
            for label, count in totals.items():
                families["pushes"].add_metric([label], count)
            found.append(families["pushes"])
        if self._requests_in_flight is not None:
            families["requests"].add_metric([], self._requests_in_flight())
            found.append(families["requests"])
        return found


@dataclass(eq=False)  # a registry keys its collectors by identity
class _QueueCollector(Collector):
    """The queue's depth and oldest age, read from the database at scrape time: the same for
    every process, so never shared between workers (stats/worker_metrics.py)."""

    _queue_stats: QueueStats

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            _gauge("pn_relay_queue_depth", "Deliveries waiting to be pushed."),
            _gauge(
                "pn_relay_queue_oldest_age_seconds",
                "Age of the oldest delivery waiting to be pushed (0 when none).",
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        try:
            depth, oldest_age = self._queue_stats()
        except Exception as exc:  # noqa: BLE001 - the rest of the scrape still answers
            log.warning("queue statistics unavailable for /metrics (%s)", type(exc).__name__)
            return []
        families = self._families()
        families[0].add_metric([], depth)
        families[1].add_metric([], oldest_age)
        return families


class PushObservations:
    """What the dispatcher reports as it pushes: each provider answer (by verdict and reason)
    and each push's latency. Built before the dispatcher, which reports to it; the
    RelayMetrics built after the dispatcher exposes it."""

    def __init__(self, providers: Sequence[ProviderInfo[Any]] = PROVIDERS) -> None:
        self.labels = labels = ProviderLabels(providers)
        self.results = Counter(
            "pn_relay_push_results",
            "Provider answers by provider, verdict and reason (every attempt, retries included).",
            ["provider", "result", "reason"],
            registry=None,
        )
        self._reasons: dict[str, set[str]] = {}
        self._reasons_lock = threading.Lock()
        self.latency = Histogram(
            "pn_relay_push_latency_seconds",
            "Push latency by provider, as the dispatcher observes it (from the notify's"
            " acceptance to the provider accepting the push).",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        for provider in labels.labels:  # show zeros before the first push
            self.latency.labels(provider)

    def observe_push_latency(self, provider: ProviderKey, seconds: float) -> None:
        """Fits `push.dispatcher.LatencyObserver`: pass this method as `observe_latency`."""
        self.latency.labels(self.labels(provider)).observe(max(0.0, seconds))

    def observe_push_outcome(self, provider: ProviderKey, outcome: PushOutcome) -> None:
        """Fits `push.observed.OutcomeObserver`: count one provider answer."""
        label = self.labels(provider)
        accepted = outcome.verdict is PushVerdict.ACCEPTED
        reason = "" if accepted else self._reason(label, outcome.reason)
        self.results.labels(label, outcome.verdict.value, reason).inc()

    def _reason(self, provider: str, reason: str) -> str:
        cleaned = _REASON_CHARS.sub("_", reason)[:48] or "unknown"
        with self._reasons_lock:
            seen = self._reasons.setdefault(provider, set())
            if cleaned not in seen:
                if len(seen) >= MAX_REASONS:
                    return "other"
                seen.add(cleaned)
        return cleaned


class RelayMetrics:
    """One process's metrics, in its own registry: the counters, the gauges read at scrape
    time, and the dispatcher's `pushes` (its own PushObservations when none is given)."""

    def __init__(
        self,
        counters: Counters,
        queue_stats: QueueStats | None = None,
        *,
        requests_in_flight: Callable[[], int] | None = None,
        pushes_in_flight: InFlightPushes | None = None,
        lanes_paused: PausedLanes | None = None,
        database_errors: Callable[[], int] | None = None,
        process_metrics: bool = True,
        providers: Sequence[ProviderInfo[Any]] = PROVIDERS,
        pushes: PushObservations | None = None,
        workers: WorkerMetrics | None = None,
    ) -> None:
        """`workers`: this process is one of several workers, and each scrape answers for all
        (stats/worker_metrics.py); call `start` and `stop`."""
        self.pushes = pushes if pushes is not None else PushObservations(providers)
        self._workers = workers
        self._label = labels = self.pushes.labels
        self._in_flight: dict[str, int] = dict.fromkeys(labels.labels, 0)
        self._in_flight_lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=True)
        own: list[Collector] = [
            _CountersCollector(counters, labels),
            _CallbackCollector(
                labels,
                requests_in_flight,
                pushes_in_flight or self._own_in_flight,
                lanes_paused,
                database_errors,
            ),
            self.pushes.results,
            self.pushes.latency,
        ]
        if process_metrics:
            own.append(ProcessCollector(registry=None))
        self._own = own
        self._queue = _QueueCollector(queue_stats) if queue_stats is not None else None
        for collector in [*own, *([self._queue] if self._queue is not None else [])]:
            self.registry.register(collector)
        if workers is not None:
            workers.attach(self._collect_own)

    def _collect_own(self) -> list[Metric]:
        """This process's own figures, the queue's left out (what a worker shares)."""
        return [metric for collector in self._own for metric in collector.collect()]

    def start(self) -> None:
        """With `workers`: share this process's figures with the other workers from now on."""
        if self._workers is not None:
            self._workers.start()

    def stop(self) -> None:
        if self._workers is not None:
            self._workers.stop()

    # -- hooks for push/ (and tests) ---------------------------------------------------------
    def observe_push_latency(self, provider: ProviderKey, seconds: float) -> None:
        self.pushes.observe_push_latency(provider, seconds)

    def observe_push_outcome(self, provider: ProviderKey, outcome: PushOutcome) -> None:
        self.pushes.observe_push_outcome(provider, outcome)

    def push_started(self, provider: ProviderKey, count: int = 1) -> None:
        label = self._label(provider)
        with self._in_flight_lock:
            self._in_flight[label] = self._in_flight.get(label, 0) + count

    def push_finished(self, provider: ProviderKey, count: int = 1) -> None:
        self.push_started(provider, -count)

    def _own_in_flight(self) -> list[tuple[ProviderKey, int]]:
        with self._in_flight_lock:
            return list(self._in_flight.items())

    @contextmanager
    def track_push(self, provider: ProviderKey) -> Iterator[None]:
        """Count a push in flight for the block's duration and observe its latency."""
        self.push_started(provider)
        started = time.monotonic()
        try:
            yield
        finally:
            self.push_finished(provider)
            self.observe_push_latency(provider, time.monotonic() - started)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric in this registry; with `workers`,
        every worker's, merged (stats/worker_metrics.py)."""
        if self._workers is None:
            return generate_latest(self.registry)
        merged = [*self._workers.gather(), *(self._queue.collect() if self._queue else [])]
        return generate_latest(_Collected(merged))


@dataclass(eq=False)
class _Collected(Collector):
    metrics: list[Metric]

    def collect(self) -> Iterable[Metric]:
        return self.metrics


def create_metrics_blueprint(
    metrics: RelayMetrics | None, *, auth: StatsAuth | None = None
) -> Blueprint:
    """`GET /metrics` when `metrics` is given (health: stats/healthz.py).

    With `auth`, /metrics asks for the same Basic credentials as the statistics endpoint (its
    numbers are the same traffic figures).
    """
    blueprint = Blueprint("metrics", __name__)

    if metrics is not None:

        def prometheus_metrics() -> Response:
            return Response(metrics.render(), status=200, content_type=CONTENT_TYPE_LATEST)

        if auth is not None:
            prometheus_metrics = requires_auth(auth, plain)(prometheus_metrics)
        blueprint.get("/metrics")(prometheus_metrics)

    return blueprint
