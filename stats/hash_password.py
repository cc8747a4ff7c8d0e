"""`python -m stats.hash_password [--iterations N]`: print a STATS_PASSWORD_HASH line.

Prompts twice (without echo) and prints `pbkdf2_sha256$<iterations>$<salt>$<hash>`; put it in
config.py as `STATS_PASSWORD_HASH = "..."` or in the PN_STATS_PASSWORD_HASH variable.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable

from stats.auth import DEFAULT_ITERATIONS, MIN_ITERATIONS, hash_password


def main(argv: list[str] | None = None, prompt: Callable[[str], str] = getpass.getpass) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stats.hash_password",
        description="Print a STATS_PASSWORD_HASH line for the statistics endpoint's password.",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=DEFAULT_ITERATIONS,
        help=f"PBKDF2 iterations (default {DEFAULT_ITERATIONS}, at least {MIN_ITERATIONS})",
    )
    args = parser.parse_args(argv)
    if args.iterations < MIN_ITERATIONS:
        print(f"--iterations: at least {MIN_ITERATIONS}", file=sys.stderr)
        return 2
    try:
        password = prompt("Statistics password: ")
        again = prompt("Again: ")
    except (EOFError, KeyboardInterrupt):
        print("no password given", file=sys.stderr)
        return 1
    if not password:
        print("the password is empty", file=sys.stderr)
        return 1
    if password != again:
        print("the two passwords differ", file=sys.stderr)
        return 1
    print(hash_password(password, iterations=args.iterations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
