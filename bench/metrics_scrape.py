"""Does a /metrics scrape delay writes when the queue is deep? (issue 8: metrics off the write path)

Fills a fresh relay's SQLite database with `--rows` queued deliveries (not due for years, so
the dispatcher leaves them alone), starts `server.py` on it, then measures register latency
from a steady stream of registers twice: alone, and while another client scrapes /metrics
back to back. The queue depth and age are read on their own connection, never through the
writer, so the second figure should match the first.

    python bench/metrics_scrape.py --rows 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.load import blast, build_requests  # noqa: E402
from bench.procs import RelayProcess  # noqa: E402
from lsrpc.client import OnionClient  # noqa: E402

FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01


def fill(database: Path, rows: int) -> None:
    conn = sqlite3.connect(database)
    now = int(time.time() * 1000)
    conn.execute("INSERT INTO notifications (id, data, created_at) VALUES (1, 'x', ?)", (now,))
    batch = 50_000
    for start in range(0, rows, batch):
        conn.executemany(
            "INSERT INTO deliveries (notification_id, device_id, device_generation, provider,"
            " apns_id, created_at, attempts, not_before, lease_until, lease_token)"
            " VALUES (1, 1, 1, 1, 'x', ?, 0, ?, 0, 0)",
            [(now - i, FAR_FUTURE_MS) for i in range(start, min(rows, start + batch))],
        )
    conn.commit()
    conn.close()


def scrape_forever(url: str, stop: threading.Event, timings: list[float]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as answer:
            body = answer.read()
        timings.append(time.perf_counter() - started)
        if b"pn_relay_queue_depth" not in body:
            raise SystemExit("no queue depth in /metrics")


async def registers(port: int, pubkey: str, count: int) -> list[float]:
    client = OnionClient(bytes.fromhex(pubkey))
    ids = ["05" + os.urandom(32).hex() for _ in range(count)]
    latencies: list[float] = []
    errors: list[str] = []
    load = argparse.Namespace(url=f"http://127.0.0.1:{port}", concurrency=4)
    await blast(load, build_requests(client, "register", count, ids), latencies, errors)
    if errors:
        raise SystemExit(f"register errors: {errors[:3]}")
    return latencies


def summary(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return (
        f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms,"
        f" max {ordered[-1] * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--registers", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pn-bench-") as directory:
        data = Path(directory)
        settings = {"METRICS_PUBLIC": "true"}
        RelayProcess(data, settings).stop()  # creates the schema
        print(f"queueing {args.rows:,} deliveries ...", file=sys.stderr)
        fill(data / "pn-relay.sqlite3", args.rows)
        with RelayProcess(data, settings) as relay:
            alone = asyncio.run(registers(relay.port, relay.pubkey, args.registers))
            stop = threading.Event()
            scrapes: list[float] = []
            scraper = threading.Thread(
                target=scrape_forever, args=(f"{relay.url}/metrics", stop, scrapes)
            )
            scraper.start()
            try:
                beside = asyncio.run(registers(relay.port, relay.pubkey, args.registers))
            finally:
                stop.set()
                scraper.join()
    print(f"queue depth {args.rows:,}; {args.registers} registers, 4 connections")
    print(f"registers alone:              {summary(alone)}")
    print(
        f"registers while /metrics is scraped back to back ({len(scrapes)} scrapes,"
        f" each {summary(scrapes)}):"
    )
    print(f"                              {summary(beside)}")


if __name__ == "__main__":
    main()
