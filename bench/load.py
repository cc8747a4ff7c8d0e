"""Onion-request load generator: pre-built requests, keep-alive connections, asyncio.

    python bench/load.py --url http://127.0.0.1:3000 --pubkey HEX --endpoint notify -n 20000 -c 64

Requests are encrypted before the clock starts (as service nodes would hand them over), so
the figure is the relay's, not this client's. Every answer is decrypted and checked.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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


async def worker(
    host: str, port: int, queue: list[PreparedRequest], latencies: list[float], errors: list[str]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while queue:
            request = queue.pop()
            head = (
                f"POST /loki/v2/lsrpc HTTP/1.1\r\nHost: {host}\r\n"
                "Content-Type: application/octet-stream\r\n"
                f"Content-Length: {len(request.body)}\r\n\r\n"
            ).encode()
            started = time.perf_counter()
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
    url = urlsplit(args.url)
    started = time.perf_counter()
    await asyncio.gather(
        *(
            worker(url.hostname or "127.0.0.1", url.port or 80, queue, latencies, errors)
            for _ in range(args.concurrency)
        )
    )
    return time.perf_counter() - started


async def run(args: argparse.Namespace) -> None:
    client = OnionClient(bytes.fromhex(args.pubkey))
    recipients = ["05" + secrets.token_hex(32) for _ in range(args.recipients)]
    if args.endpoint == "notify" and args.recipients:
        print(
            f"registering one device for each of {args.recipients} recipients ...", file=sys.stderr
        )
        setup = build_requests(client, "register", args.recipients, recipients)
        errors: list[str] = []
        await blast(args, setup, [], errors)
        if errors:
            sys.exit(f"set-up failed: {errors[:3]}")
    elif not recipients:
        recipients = ["05" + secrets.token_hex(32)]
    print(f"building {args.requests} {args.endpoint} requests ...", file=sys.stderr)
    queue = build_requests(client, args.endpoint, args.requests, recipients)
    latencies: list[float] = []
    errors = []
    elapsed = await blast(args, queue, latencies, errors)
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
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
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
