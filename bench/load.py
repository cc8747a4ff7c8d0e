"""Onion-request load generator: pre-built requests, keep-alive connections, asyncio.

    python bench/load.py --url http://127.0.0.1:3000 --pubkey HEX --endpoint notify -n 20000 -c 64
    python bench/load.py ... --endpoint notify -n 6000 --rate 600     # paced, open loop

Requests are encrypted before the clock starts (as service nodes would hand them over), so
the figure is the relay's, not this client's. Every answer is decrypted and checked.

Without --rate each connection sends its next request as soon as the last one is answered
(saturation). With --rate the requests are due at a steady pace, whatever the answers do
(open loop): request i is due at start + i/rate and its latency counts from then, so a
request held up because every connection was busy is timed with its wait, not flattered.

--wait-go (for python -m bench): build everything, print "ready", and start the clock only
when a line arrives on stdin, so a caller can read the relay's CPU time just before.
--json prints the result as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lsrpc.client import OnionClient, PreparedRequest


def build_requests(
    client: OnionClient, endpoint: str, count: int, recipients: list[str]
) -> list[PreparedRequest]:
    prepared = []
    for index in range(count):
        if endpoint == "register":
            owner = recipients[index] if index < len(recipients) else "05" + secrets.token_hex(32)
            params = {"token": secrets.token_hex(32), "pubKey": owner}
        else:
            data = base64.b64encode(os.urandom(256)).decode()
            params = {"data": data, "send_to": recipients[index % len(recipients)]}
        prepared.append(client.v2(endpoint, params))
    return prepared


class Pacer:
    """Due times at a steady rate from the moment the clock starts (open loop)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.start = 0.0
        self._next = 0

    def begin(self) -> None:
        self.start = time.perf_counter()

    def next_due(self) -> float:
        due = self.start + self._next * self.interval
        self._next += 1
        return due


async def worker(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    host: str,
    queue: list[PreparedRequest],
    latencies: list[float],
    errors: list[str],
    *,
    pacer: Pacer | None = None,
) -> None:
    reader, writer = connection
    try:
        while queue:
            request = queue.pop()
            head = (
                f"POST /loki/v2/lsrpc HTTP/1.1\r\nHost: {host}\r\n"
                "Content-Type: application/octet-stream\r\n"
                f"Content-Length: {len(request.body)}\r\n\r\n"
            ).encode()
            if pacer is None:
                started = time.perf_counter()
            else:
                started = pacer.next_due()
                pause = started - time.perf_counter()
                if pause > 0:
                    await asyncio.sleep(pause)
            writer.write(head + request.body)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if b" 200 " not in status_line:
                errors.append(status_line.decode().strip())
                continue
            status, reply = request.open_v2_reply(body)
            if status != 200 or reply.get("code") != 1:
                errors.append(f"{status} {reply}")
    finally:
        writer.close()


async def blast(
    args: argparse.Namespace,
    queue: list[PreparedRequest],
    latencies: list[float],
    errors: list[str],
) -> float:
    """Send every request of `queue` over args.concurrency connections (paced at args.rate
    requests per second if that is set); the seconds it took."""
    url = urlsplit(args.url)
    host = url.hostname or "127.0.0.1"
    rate = getattr(args, "rate", None)
    pacer = Pacer(rate) if rate else None
    # Connected before the clock starts: the figure is for requests, not TCP handshakes.
    connections = [
        await asyncio.open_connection(host, url.port or 80) for _ in range(args.concurrency)
    ]
    started = time.perf_counter()
    if pacer is not None:
        pacer.begin()
    await asyncio.gather(
        *(
            worker(connection, host, queue, latencies, errors, pacer=pacer)
            for connection in connections
        )
    )
    return time.perf_counter() - started


def percentile(ordered: list[float], fraction: float) -> float:
    """The value below which `fraction` of the sorted sample lies (nearest rank)."""
    return ordered[max(0, int(len(ordered) * fraction) - 1)]


async def run(args: argparse.Namespace) -> None:
    client = OnionClient(bytes.fromhex(args.pubkey))
    if args.send_to:
        recipients = [args.send_to]
    else:
        recipients = ["05" + secrets.token_hex(32) for _ in range(args.recipients)]
    if args.endpoint == "notify" and recipients and not args.send_to:
        print(
            f"registering one device for each of {args.recipients} recipients ...", file=sys.stderr
        )
        setup = build_requests(client, "register", args.recipients, recipients)
        errors: list[str] = []
        unpaced = argparse.Namespace(url=args.url, concurrency=args.concurrency)
        await blast(unpaced, setup, [], errors)
        if errors:
            sys.exit(f"set-up failed: {errors[:3]}")
    elif not recipients:
        recipients = ["05" + secrets.token_hex(32)]
    print(f"building {args.requests} {args.endpoint} requests ...", file=sys.stderr)
    queue = build_requests(client, args.endpoint, args.requests, recipients)
    if args.wait_go:
        print("ready", flush=True)
        if not sys.stdin.readline():
            sys.exit("no go: stdin closed")
    latencies: list[float] = []
    errors = []
    began = time.monotonic()
    elapsed = await blast(args, queue, latencies, errors)
    ended = time.monotonic()
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = percentile(latencies, 0.99) * 1000
    if args.json:
        result = {
            "endpoint": args.endpoint,
            "requests": len(latencies),
            "seconds": elapsed,
            "rate": len(latencies) / elapsed,
            "p50_ms": p50,
            "p99_ms": p99,
            "max_ms": latencies[-1] * 1000,
            "errors": len(errors),
            "started": began,
            "ended": ended,
        }
        print(json.dumps(result), flush=True)
    else:
        print(
            f"{args.endpoint}: {len(latencies)} requests in {elapsed:.2f}s ="
            f" {len(latencies) / elapsed:.0f} req/s;"
            f" latency p50 {p50:.1f} ms, p99 {p99:.1f} ms; errors {len(errors)}"
        )
    if errors:
        print("first errors:", errors[:3], file=sys.stderr)
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--pubkey", required=True, help="the relay's public key, 64 hex")
    parser.add_argument("--endpoint", choices=["register", "notify"], default="notify")
    parser.add_argument("-n", "--requests", type=int, default=20000)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument(
        "--recipients",
        type=int,
        default=1000,
        help="notify: register one device for each of this many Session IDs first, and notify"
        " them in turn (0: notify an unknown Session ID, which writes nothing)",
    )
    parser.add_argument(
        "--send-to",
        default="",
        help="notify: send every notify to this Session ID or closed-group key (set up"
        " beforehand), instead of registering --recipients",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="requests per second, paced open loop (default: as fast as answers come)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument(
        "--wait-go",
        action="store_true",
        help='print "ready" once built, and start only when a line arrives on stdin',
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
