"""Push throughput or notify→push latency against a running relay and `python -m bench.fakes`.

    python bench/push_load.py --port P --pubkey HEX --control C --provider apns --mode throughput

bench/push_bench.py's measurements (its functions, imported), run from a process of their own
against fakes in another process (bench/fakes.py's RemoteFake), in the bench's protocol: set
up (registrations, the group), print "ready", wait for a line on stdin, measure, print the
result as one JSON line. For `python -m bench`; bench/push_bench.py stays the stand-alone tool.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fakes import RemoteFake
from bench.procs import RelayClient
from bench.push_bench import (
    setup_group,
    setup_recipients,
    timed_latency,
    timed_throughput,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True, help="the relay's port")
    parser.add_argument("--pubkey", required=True, help="the relay's public key, 64 hex")
    parser.add_argument("--control", type=int, required=True, help="bench.fakes' control port")
    parser.add_argument("--provider", choices=["apns", "fcm"], required=True)
    parser.add_argument("--mode", choices=["throughput", "latency"], required=True)
    parser.add_argument("--pushes", type=int, default=10_000, help="throughput: pushes")
    parser.add_argument("--rate", type=float, default=100.0, help="latency: notifies per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency: for how long")
    args = parser.parse_args()

    relay = RelayClient(args.port, args.pubkey)
    fake = RemoteFake(args.control, args.provider, with_data=args.mode == "latency")
    if args.mode == "throughput":
        group = setup_group(relay, args.provider)
    else:
        recipients = setup_recipients(relay, args.provider)
    print("ready", flush=True)
    if not sys.stdin.readline():
        sys.exit("no go: stdin closed")
    # push_bench's functions print a human line: to stderr, so stdout holds only the result.
    sys.stdout, human = sys.stderr, sys.stdout
    if args.mode == "throughput":
        result = timed_throughput(relay, fake, args.provider, group, args.pushes)
    else:
        result = timed_latency(
            relay, fake, args.provider, recipients, rate=args.rate, seconds=args.seconds
        )
    sys.stdout = human
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
