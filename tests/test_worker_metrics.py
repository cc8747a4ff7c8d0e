"""/metrics across workers (stats/worker_metrics.py): the shared board between real processes,
the merge of every worker's figures, a restarted worker carrying on from its slot, and
RelayMetrics answering for all. `python server.py --workers 2` scraped end to end is in
tests/test_workers.py."""

from __future__ import annotations

import json
import os
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stats.counters import Counters
from stats.metrics import RelayMetrics
from stats.worker_metrics import (
    STALE_AFTER_S,
    MetricsBoard,
    WorkerMetrics,
    families_of,
    merge,
)


def samples(rendered: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a text exposition, keyed by (name, sorted labels); parsed by
    prometheus_client's own parser, so the merged output is valid exposition text."""
    found = {}
    for family in text_string_to_metric_families(rendered.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def pushes(provider: str, outcome: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("pn_relay_pushes_total", (("outcome", outcome), ("provider", provider)))


def family(name: str, kind: str, *values: tuple[dict[str, str], float]) -> dict[str, object]:
    suffix = "_total" if kind == "counter" else ""
    return {
        "n": name,
        "t": kind,
        "d": name,
        "u": "",
        "s": [[name + suffix, labels, value] for labels, value in values],
    }


# -- the board -------------------------------------------------------------------------------


def test_a_slot_reads_back_what_was_written_and_an_empty_slot_reads_none() -> None:
    board = MetricsBoard(3, slot_bytes=4096)
    assert board.read(2) is None
    assert board.write(2, b'{"families": []}')
    before = time.time()
    assert board.write(2, b"second")
    written_at, payload = board.read(2) or (0.0, b"")
    assert payload == b"second"
    assert before <= written_at <= time.time()
    assert board.read(1) is None
    assert board.read(3) is None


def test_a_payload_larger_than_its_slot_is_refused_and_the_last_one_kept() -> None:
    board = MetricsBoard(1, slot_bytes=256)
    assert board.write(1, b"fits")
    assert not board.write(1, b"x" * 256)
    assert (board.read(1) or (0, b""))[1] == b"fits"


def test_a_slot_caught_mid_write_is_skipped_not_read_torn() -> None:
    board = MetricsBoard(1, slot_bytes=4096)
    board.write(1, b"whole")
    # What a writer leaves while it copies: the sequence odd (as if it died there).
    memory = board._memory  # the layout is what is under test
    sequence = int.from_bytes(memory[0:8], "little")
    memory[0:8] = (sequence | 1).to_bytes(8, "little")
    assert board.read(1) is None
    memory[0:8] = (sequence + 2).to_bytes(8, "little")
    assert (board.read(1) or (0, b""))[1] == b"whole"


def test_workers_forked_after_the_board_is_made_see_each_others_slots() -> None:
    board = MetricsBoard(2, slot_bytes=4096)
    child = os.fork()
    if child == 0:  # a worker: writes its slot and exits
        code = 0 if board.write(2, b"from the child") else 1
        os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (board.read(2) or (0, b""))[1] == b"from the child"


# -- the merge -------------------------------------------------------------------------------


def test_counters_and_histograms_are_summed_over_all_workers_gauges_over_fresh_ones() -> None:
    apns = {"provider": "apns"}
    one = [
        family("pn_relay_pushes", "counter", (apns, 5)),
        family("pn_relay_pushes_in_flight", "gauge", (apns, 2)),
        family("pn_relay_provider_paused", "gauge", (apns, 0)),
        family("process_resident_memory_bytes", "gauge", ({}, 100)),
    ]
    two = [
        family("pn_relay_pushes", "counter", (apns, 7)),
        family("pn_relay_pushes_in_flight", "gauge", (apns, 3)),
        family("pn_relay_provider_paused", "gauge", (apns, 1)),
        family("process_resident_memory_bytes", "gauge", ({}, 200)),
    ]
    dead = [  # a worker that stopped reporting: its counts stand, nothing else
        family("pn_relay_pushes", "counter", (apns, 11)),
        family("pn_relay_pushes_in_flight", "gauge", (apns, 50)),
        family("pn_relay_provider_paused", "gauge", (apns, 1)),
        family("process_resident_memory_bytes", "gauge", ({}, 400)),
    ]
    merged = {
        metric.name: {(s.name, tuple(sorted(s.labels.items()))): s.value for s in metric.samples}
        for metric in merge({1: (True, one), 2: (True, two), 3: (False, dead)})
    }
    assert merged["pn_relay_pushes"] == {("pn_relay_pushes_total", (("provider", "apns"),)): 23}
    assert merged["pn_relay_pushes_in_flight"] == {
        ("pn_relay_pushes_in_flight", (("provider", "apns"),)): 5
    }
    assert merged["pn_relay_provider_paused"] == {
        ("pn_relay_provider_paused", (("provider", "apns"),)): 1
    }
    assert merged["process_resident_memory_bytes"] == {
        ("process_resident_memory_bytes", (("worker", "1"),)): 100,
        ("process_resident_memory_bytes", (("worker", "2"),)): 200,
    }
    assert merged["pn_relay_workers_reporting"] == {("pn_relay_workers_reporting", ()): 2}


def test_a_paused_lane_on_a_dead_worker_does_not_pause_the_scrape() -> None:
    paused = family("pn_relay_provider_paused", "gauge", ({"provider": "fcm"}, 1))
    live = family("pn_relay_provider_paused", "gauge", ({"provider": "fcm"}, 0))
    (metric, _) = merge({1: (True, [live]), 2: (False, [paused])})
    assert [s.value for s in metric.samples] == [0]


# -- a worker's slot ---------------------------------------------------------------------------


def metrics_for(board: MetricsBoard, index: int, counters: Counters, **kwargs: object):
    workers = WorkerMetrics(board, index, every_s=60)
    return RelayMetrics(counters, workers=workers, **kwargs), workers  # type: ignore[arg-type]


def test_every_worker_scrape_answers_for_all_workers() -> None:
    board = MetricsBoard(2)
    first_counters, second_counters = Counters(), Counters()
    queue_reads: list[int] = []

    def queue_stats() -> tuple[int, float]:
        queue_reads.append(1)
        return (4, 2.5)

    first, _ = metrics_for(board, 1, first_counters, queue_stats=queue_stats)
    second, _ = metrics_for(board, 2, second_counters, queue_stats=queue_stats)
    first.start()
    second.start()
    try:
        assert queue_reads == []  # shared figures never include the database's
        first_counters.incr("ios_pn_number", 3)
        second_counters.incr("ios_pn_number", 4)
        second_counters.incr("android_pn_failed")
        first.observe_push_latency("apns", 0.03)
        second.observe_push_latency("apns", 0.2)
        second.push_started("fcm", 2)
        second.render()  # its figures, written afresh while answering a scrape
        seen = samples(first.render())
        assert seen[pushes("apns", "sent")] == 7
        assert seen[pushes("fcm", "failed")] == 1
        assert seen[("pn_relay_push_latency_seconds_count", (("provider", "apns"),))] == 2
        assert seen[("pn_relay_pushes_in_flight", (("provider", "fcm"),))] == 2
        assert seen[("pn_relay_queue_depth", ())] == 4  # once, the answering worker's read
        assert seen[("pn_relay_workers_reporting", ())] == 2
        pids = {key for key in seen if key[0] == "process_resident_memory_bytes"}
        assert pids == {
            ("process_resident_memory_bytes", (("worker", "1"),)),
            ("process_resident_memory_bytes", (("worker", "2"),)),
        }
        assert len(queue_reads) == 2  # one per scrape
    finally:
        first.stop()
        second.stop()


def test_a_restarted_worker_carries_on_from_its_slot_so_sums_never_go_down() -> None:
    board = MetricsBoard(1)
    counters = Counters()
    old, _ = metrics_for(board, 1, counters)
    old.start()
    counters.incr("android_pn_number", 10)
    old.observe_push_latency("fcm", 0.1)
    old.stop()  # its last figures stay in the slot (a killed one's last shared ones do)

    fresh = Counters()
    new, _ = metrics_for(board, 1, fresh)
    new.start()
    try:
        fresh.incr("android_pn_number", 2)
        seen = samples(new.render())
        assert seen[pushes("fcm", "sent")] == 12
        assert seen[("pn_relay_push_latency_seconds_count", (("provider", "fcm"),))] == 1
        assert seen[("pn_relay_pushes_in_flight", (("provider", "fcm"),))] == 0
    finally:
        new.stop()
    again = json.loads((board.read(1) or (0, b"{}"))[1])["families"]
    totals = {
        s[0]: s[2]
        for f in again
        if f["n"] == "pn_relay_pushes"
        for s in f["s"]
        if s[1] == {"provider": "fcm", "outcome": "sent"}
    }
    assert totals == {"pn_relay_pushes_total": 12}  # and so on, restart after restart


def test_a_worker_that_stopped_sharing_counts_only_in_counters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    board = MetricsBoard(2)
    live_counters, gone_counters = Counters(), Counters()
    live, _ = metrics_for(board, 1, live_counters)
    gone, _ = metrics_for(board, 2, gone_counters)
    live.start()
    gone.start()
    gone_counters.incr("ios_pn_number", 6)
    gone.push_started("apns", 5)
    gone.stop()
    try:
        now = time.time()
        monkeypatch.setattr(time, "time", lambda: now + STALE_AFTER_S + 1)
        seen = samples(live.render())
        assert seen[pushes("apns", "sent")] == 6
        assert seen[("pn_relay_pushes_in_flight", (("provider", "apns"),))] == 0
        assert seen[("pn_relay_workers_reporting", ())] == 1
        assert not any(key[1] == (("worker", "2"),) for key in seen)
    finally:
        live.stop()


def test_figures_hold_no_created_samples_and_round_trip_through_json() -> None:
    metrics = RelayMetrics(Counters())
    metrics.observe_push_latency("apns", 0.5)
    written = families_of(metrics.registry.collect())
    assert json.loads(json.dumps(written)) == written
    assert not any(s[0].endswith("_created") for f in written for s in f["s"])


def test_a_scrape_before_sharing_starts_holds_the_answering_workers_own_figures() -> None:
    board = MetricsBoard(2)
    counters = Counters()
    metrics, _ = metrics_for(board, 1, counters)  # built, not started (the relay not listening)
    counters.incr("ios_pn_number", 2)
    seen = samples(metrics.render())
    assert seen[pushes("apns", "sent")] == 2
    assert seen[("pn_relay_workers_reporting", ())] == 1
