"""/metrics with `--workers N`: every worker's figures in each scrape.

Several workers share one port, and the kernel hands a scrape to any of them, so each must
answer for all. The supervisor maps one shared, anonymous memory area before it forks the
workers (`MetricsBoard`), with a slot per worker. Each worker writes its figures into its slot
every `SHARE_EVERY_S` (`WorkerMetrics.publish`, on a thread of its own), and the worker that
answers a scrape writes its own afresh, reads every slot and merges (`merge`):

- counters and histograms (pushes, events, refusals, provider answers, push latency, database
  errors): summed over the workers. A restarted worker carries on from its slot's last
  figures, so the sums do not go down when a worker is replaced (what the dead one counted
  since it last shared them is lost, and all of it if it died in the middle of writing them).
- gauges of work in flight (pushes, requests): summed over the workers whose figures are
  fresh (written within `STALE_AFTER_S`): a dead worker has nothing in flight.
- ``pn_relay_provider_paused``: the highest, over fresh workers (1 if any worker's lane is
  paused).
- ``process_*`` (CPU, memory, open files): one series per worker, labelled ``worker``.
- ``pn_relay_workers_reporting``: how many workers' figures are fresh.

The queue's depth and oldest age come from the database, the same for every worker: the
answering worker reads them itself, as a single process does (stats/metrics.py).

A slot holds a sequence number, the time of writing, a length and the JSON of the figures.
The writer makes the sequence odd while it writes and even when done; a reader that sees it
odd, or changed by the end of its read, reads again (a few times, then skips the slot for
this scrape). The figures hold no identifier: label values are fixed words and provider
reasons (stats/metrics.py).
"""

from __future__ import annotations

import json
import logging
import mmap
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

SLOT_BYTES = 256 * 1024
SHARE_EVERY_S = 1.0
STALE_AFTER_S = 5.0
READ_ATTEMPTS = 5
_HEADER = struct.Struct("<QdI")  # sequence, written at (time.time()), payload length

# Families summed over every worker, live or dead (their types; process_* excepted).
_SUMMED_ALWAYS = frozenset({"counter", "histogram"})
_HIGHEST = frozenset({"pn_relay_provider_paused"})
_PER_WORKER_PREFIX = "process_"

Families = list[dict[str, Any]]  # as written: [{"n", "t", "d", "u", "s": [[name, labels, v]]}]


class MetricsBoard:
    """The shared memory of `count` workers' figures; made by the supervisor before it forks
    (workers inherit the mapping)."""

    def __init__(self, count: int, slot_bytes: int = SLOT_BYTES) -> None:
        self.count = count
        self.slot_bytes = slot_bytes
        self._memory = mmap.mmap(-1, count * slot_bytes)  # anonymous, MAP_SHARED

    def write(self, index: int, payload: bytes) -> bool:
        """Write slot `index` (1..count); False if `payload` does not fit."""
        if _HEADER.size + len(payload) > self.slot_bytes:
            return False
        start = (index - 1) * self.slot_bytes
        memory = self._memory
        (sequence, _, _) = _HEADER.unpack_from(memory, start)
        sequence |= 1  # odd: being written
        _HEADER.pack_into(memory, start, sequence, 0.0, 0)
        body = start + _HEADER.size
        memory[body : body + len(payload)] = payload
        _HEADER.pack_into(memory, start, sequence + 1, time.time(), len(payload))
        return True

    def read(self, index: int) -> tuple[float, bytes] | None:
        """Slot `index`: (written at, payload), or None if empty or being written."""
        start = (index - 1) * self.slot_bytes
        memory = self._memory
        for _ in range(READ_ATTEMPTS):
            sequence, written_at, length = _HEADER.unpack_from(memory, start)
            if sequence == 0:
                return None  # never written
            if sequence & 1 or length > self.slot_bytes - _HEADER.size:
                time.sleep(0.001)
                continue
            body = start + _HEADER.size
            payload = bytes(memory[body : body + length])
            if _HEADER.unpack_from(memory, start)[0] == sequence:
                return written_at, payload
        return None

    def close(self) -> None:
        self._memory.close()


def families_of(metrics: Iterable[Metric]) -> Families:
    """Collected metrics as written to a slot (``_created`` samples left out)."""
    return [
        {
            "n": metric.name,
            "t": metric.type,
            "d": metric.documentation,
            "u": metric.unit,
            "s": [
                [sample.name, sample.labels, sample.value]
                for sample in metric.samples
                if not sample.name.endswith("_created")
            ],
        }
        for metric in metrics
    ]


def _key(sample_name: str, labels: dict[str, str]) -> tuple[str, str]:
    """One sample's identity across workers: its name and its labels, in any order."""
    return sample_name, json.dumps(labels, sort_keys=True)


def _summed_always(family: dict[str, Any]) -> bool:
    return family["t"] in _SUMMED_ALWAYS and not family["n"].startswith(_PER_WORKER_PREFIX)


def add_families(base: Families, more: Families) -> Families:
    """`more`, with `base`'s counters and histograms added to its (a restarted worker's own
    figures on top of its predecessor's)."""
    carried: dict[tuple[str, str], float] = {}
    for family in base:
        if _summed_always(family):
            for name, labels, value in family["s"]:
                carried[_key(name, labels)] = value
    if not carried:
        return more
    added: Families = []
    for family in more:
        if not _summed_always(family):
            added.append(family)
            continue
        samples = [
            [name, labels, value + carried.get(_key(name, labels), 0)]
            for name, labels, value in family["s"]
        ]
        added.append({**family, "s": samples})
    return added


def merge(workers: dict[int, tuple[bool, Families]]) -> list[Metric]:
    """One scrape's families from every worker's: {index: (fresh, families)}."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, str], list[Any]]] = {}
    for index in sorted(workers):
        fresh, families = workers[index]
        for family in families:
            name, kind = family["n"], family["t"]
            per_worker = name.startswith(_PER_WORKER_PREFIX)
            if not (fresh or _summed_always(family)):
                continue  # a dead worker has nothing in flight, paused or resident
            if name not in merged:
                merged[name] = Metric(name, family["d"], kind, family["u"])
                values[name] = {}
            samples = values[name]
            for sample_name, own_labels, value in family["s"]:
                labels = {**own_labels, "worker": str(index)} if per_worker else own_labels
                key = _key(sample_name, labels)
                if key not in samples:
                    samples[key] = [sample_name, labels, value]
                elif name in _HIGHEST:
                    samples[key][2] = max(samples[key][2], value)
                else:
                    samples[key][2] += value
    for name, metric in merged.items():
        for sample_name, labels, value in values[name].values():
            metric.add_sample(sample_name, labels, value)
    reporting = Metric(
        "pn_relay_workers_reporting",
        f"Workers whose figures are at most {STALE_AFTER_S:g} s old (the rest count only in"
        " the counters and histograms).",
        "gauge",
    )
    reporting.add_sample(
        "pn_relay_workers_reporting", {}, sum(fresh for fresh, _ in workers.values())
    )
    return [*merged.values(), reporting]


class WorkerMetrics:
    """One worker's use of the board: its slot `index` (1..N, the supervisor's)."""

    def __init__(self, board: MetricsBoard, index: int, *, every_s: float = SHARE_EVERY_S) -> None:
        self.board = board
        self.index = index
        self._every_s = every_s
        self._base: Families = []
        previous = board.read(index)  # a predecessor's last figures, if it was restarted
        if previous is not None:
            try:
                self._base = json.loads(previous[1])["families"]
            except (ValueError, KeyError, TypeError):
                self._base = []
        self._collect: Callable[[], Iterable[Metric]] | None = None
        self._lock = threading.Lock()
        self._too_large_logged = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self) -> Families:
        """Write this worker's figures now; returns them (with any predecessor's added)."""
        if self._collect is None:
            return []
        with self._lock:
            families = add_families(self._base, families_of(self._collect()))
            payload = json.dumps({"families": families}, separators=(",", ":")).encode()
            if not self.board.write(self.index, payload) and not self._too_large_logged:
                self._too_large_logged = True
                log.warning(
                    "worker %d: its metrics (%d bytes) do not fit the shared slot (%d);"
                    " other workers' scrapes show its last figures that fitted",
                    self.index,
                    len(payload),
                    self.board.slot_bytes,
                )
            return families

    def gather(self) -> list[Metric]:
        """Every worker's figures, merged, this worker's written afresh first."""
        own = self.publish()
        now = time.time()
        workers: dict[int, tuple[bool, Families]] = {self.index: (True, own)}
        for index in range(1, self.board.count + 1):
            if index == self.index:
                continue
            found = self.board.read(index)
            if found is None:
                continue
            written_at, payload = found
            try:
                families = json.loads(payload)["families"]
            except (ValueError, KeyError, TypeError):
                continue
            workers[index] = (now - written_at <= STALE_AFTER_S, families)
        return merge(workers)

    def attach(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Where this worker's figures come from (RelayMetrics, when it is built: a scrape
        answered before `start` still holds them)."""
        self._collect = collect

    def start(self) -> None:
        """Write this worker's figures now and every `every_s`."""
        self.publish()
        self._thread = threading.Thread(target=self._run, name="metrics-share", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self.publish()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("worker %d: metrics not shared (%s)", self.index, type(exc).__name__)

    def stop(self) -> None:
        """Stop sharing, after writing the last figures (a successor carries on from them)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._collect is not None:
            self.publish()
