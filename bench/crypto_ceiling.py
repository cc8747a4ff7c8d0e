"""How many onion requests one core can open and answer with lsrpc/ alone: no HTTP, no database.

    python bench/crypto_ceiling.py [--seconds 3] [--json]

Pre-builds notify requests as a service node hands them over (v2, AES-GCM, 256 bytes of data),
then, on one thread, does for each what the relay's onion core does around the handler:
opens the frame (X25519, key derivation, AES-GCM decryption), parses the v2 request and its
parameters, renders the success reply, seals it and wraps it in the JSON answer
(web.onion.seal_v2). One process on one thread is one core: the figure is
the ceiling for one relay process, whatever else it does.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from handlers.reply import Reply
from lsrpc.client import OnionClient
from lsrpc.framing import open_request
from lsrpc.keys import ServerKeypair
from web.onion import parse_v2, seal_v2

PREBUILT = 2000


def measure(seconds: float) -> dict[str, float]:
    keypair = ServerKeypair.from_private_bytes(os.urandom(32))
    client = OnionClient(keypair.public_bytes)
    send_to = "05" + secrets.token_hex(32)
    bodies = [
        client.v2(
            "notify", {"data": base64.b64encode(os.urandom(256)).decode(), "send_to": send_to}
        ).body
        for _ in range(PREBUILT)
    ]
    reply = Reply.success()
    done = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for body in bodies:
            opened = open_request(body, keypair)
            call = parse_v2(opened.plaintext)
            if call.endpoint != "notify":
                raise SystemExit("the request did not open as a notify")
            seal_v2(opened, reply)
        done += len(bodies)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {
        "requests": done,
        "seconds": elapsed,
        "rate": done / elapsed,
        "cpu_seconds": cpu,
        "per_cpu_second": done / cpu if cpu else 0.0,
        "us_per_request": cpu / done * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", action="store_true", help="the result as one JSON line")
    args = parser.parse_args()
    result = measure(args.seconds)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['requests']:.0f} requests opened and answered in {result['seconds']:.2f} s"
            f" = {result['rate']:.0f}/s wall, {result['per_cpu_second']:.0f} per CPU second"
            f" ({result['us_per_request']:.0f} µs each)"
        )


if __name__ == "__main__":
    main()
