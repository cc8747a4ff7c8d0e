"""A command-line client: one onion request to a relay, or its statistics as a table.

    python -m lsrpc.cli --pubkey HEX register token=<64 hex> pubKey=05<64 hex>
    python -m lsrpc.cli --pubkey HEX --v4 --enc-type xchacha20 notify data=QUJD send_to=05...
    python -m lsrpc.cli stats --user ops --from 2024-05-04 --to 2024-05-05 --by day

`--pubkey` defaults to what `python server.py --print-pubkey` would print here (the key
file in ./data). A value given as JSON (e.g. legacyGroupPublicKeys='["05..."]') is parsed.
`stats` asks POST /get_statistics_data with HTTP Basic auth (the relay's STATS_USERNAME and
its password, read from $RELAY_STATS_PASSWORD or asked for) and sums the minutes it answers
by minute, hour or day. `python -m lsrpc.cli stats --help` for its options.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import http.client
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lsrpc.client import V2_STYLES, V4_STYLES, OnionClient, ReplyError
from lsrpc.keys import KeyFileError, ServerKeypair, parse_key_text

DEFAULT_URL = "http://127.0.0.1:3000"
DEFAULT_KEY_FILE = Path("data/server_key.hex")
PASSWORD_VARIABLE = "RELAY_STATS_PASSWORD"  # noqa: S105 - a variable name, not a password
STATS_PATH = "/get_statistics_data"
BUCKETS = {"minute": 16, "hour": 13, "day": 10}  # how much of "YYYY-MM-DD HH:MM:SS" to keep


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and each option's default (if it has one) after its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def parse_params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"lsrpc.cli: parameters are name=value, got {item!r}")
        try:
            params[name] = json.loads(value) if value[:1] in "[{" else value
        except ValueError:
            raise SystemExit(f"lsrpc.cli: {name}: not valid JSON") from None
    return params


def server_public_key(given: str | None) -> bytes:
    try:
        if given:
            return parse_key_text(given, where="--pubkey")
        private = parse_key_text(DEFAULT_KEY_FILE.read_text(), where=str(DEFAULT_KEY_FILE))
        return ServerKeypair.from_private_bytes(private).public_bytes
    except (KeyFileError, OSError) as exc:
        raise SystemExit(f"lsrpc.cli: {exc}; pass --pubkey") from None


def post(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
    """(status, content type, body) of one POST, or SystemExit if the relay is unreachable."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "127.0.0.1", parts.port or 443, timeout=30
        )
    else:
        connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port or 80, timeout=30
        )
    prefix = parts.path.rstrip("/")
    try:
        connection.request("POST", prefix + path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    except OSError as exc:
        raise SystemExit(f"lsrpc.cli: cannot reach {url}: {exc}") from None
    finally:
        connection.close()


# -- one onion request ----------------------------------------------------------------------


def onion_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lsrpc.cli", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="the relay's base URL")
    parser.add_argument(
        "--pubkey",
        default=f"the public key of ./{DEFAULT_KEY_FILE}",
        help="the relay's public key, 64 hex characters",
    )
    parser.add_argument("--v4", action="store_true", help="use /oxen/v4/lsrpc instead of v2")
    parser.add_argument(
        "--style",
        default="android (v2), desktop (v4)",
        help=f"client style to imitate; v2: {', '.join(V2_STYLES)}; v4: {', '.join(V4_STYLES)}",
    )
    parser.add_argument(
        "--enc-type", default="aes-gcm", choices=["aes-gcm", "xchacha20"], help="hop encryption"
    )
    parser.add_argument("endpoint", help="register, unregister, notify, ... (or: stats)")
    parser.add_argument("params", nargs="*", help="name=value parameters")
    return parser


def run_onion(argv: list[str]) -> int:
    parser = onion_parser()
    args = parser.parse_args(argv)
    if args.endpoint == "stats":
        raise SystemExit("lsrpc.cli: put stats first: python -m lsrpc.cli stats --url URL ...")
    given_key = None if args.pubkey == parser.get_default("pubkey") else args.pubkey
    public_key = server_public_key(given_key)
    client = OnionClient(public_key)
    params = parse_params(args.params)
    default_style = args.style == parser.get_default("style")
    if args.v4:
        style = "desktop" if default_style else args.style
        if style not in V4_STYLES:
            raise SystemExit(f"lsrpc.cli: --style for v4 is one of {', '.join(V4_STYLES)}")
        request = client.v4(args.endpoint, params, style=style, enc_type=args.enc_type)
        path = "/oxen/v4/lsrpc"
    else:
        style = "android" if default_style else args.style
        if style not in V2_STYLES:
            raise SystemExit(f"lsrpc.cli: --style for v2 is one of {', '.join(V2_STYLES)}")
        request = client.v2(args.endpoint, params, style=style, enc_type=args.enc_type)
        path = "/loki/v2/lsrpc"
    status, content_type, body = post(args.url, path, request.body, {})
    if status != 200:
        text = body.decode(errors="replace").strip()
        print(f"HTTP {status}: {text}", file=sys.stderr)
        if status == 400 and content_type.startswith("text/plain"):
            # Our request is well formed: a plain 400 means the relay could not open it.
            print(
                f"lsrpc.cli: the relay could not decrypt the request: the server public key"
                f" ({public_key.hex()}) is probably wrong; python server.py --print-pubkey"
                " on the relay's machine prints the right one",
                file=sys.stderr,
            )
        return 1
    try:
        if args.v4:
            meta, reply = request.open_v4_reply(body)
            answer_status = int(meta["code"])
        else:
            answer_status, reply = request.open_v2_reply(body)
    except ReplyError as exc:
        print(f"lsrpc.cli: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"status": answer_status, "body": reply}))
    return 0 if answer_status == 200 and reply.get("code") == 1 else 1


# -- statistics -----------------------------------------------------------------------------


STATS_DESCRIPTION = f"""\
The relay's statistics as a table: POST {STATS_PATH} with HTTP Basic auth,
summed by minute, hour or day. The password is read from ${PASSWORD_VARIABLE},
or asked for on a terminal. Dates are UTC, "YYYY-MM-DD" or "YYYY-MM-DD HH:MM:SS";
at most 31 days per request.
"""


def stats_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lsrpc.cli stats",
        description=STATS_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="the relay's base URL")
    parser.add_argument("--user", required=True, help="the relay's STATS_USERNAME")
    parser.add_argument("--from", dest="start", default="24 hours before --to", help="first minute")
    parser.add_argument("--to", dest="end", default="now", help="last minute")
    parser.add_argument("--by", choices=list(BUCKETS), default="hour", help="one row per")
    parser.add_argument(
        "--all",
        action="store_true",
        help="every counter (default: total_message_number, ios_pn_number, android_pn_number)",
    )
    return parser


def read_password(user: str) -> str:
    password = os.environ.get(PASSWORD_VARIABLE)
    if password is not None:
        return password
    if not sys.stdin.isatty():
        raise SystemExit(f"lsrpc.cli: set {PASSWORD_VARIABLE}, or run stats on a terminal")
    return getpass.getpass(f"statistics password for {user}: ")


def render_table(rows: list[dict[str, Any]], by: str) -> str:
    """Rows summed into buckets, then a total line; numbers right-aligned."""
    counters = [name for name in rows[0] if name not in ("start_date", "end_date")]
    buckets: dict[str, list[int]] = {}
    for row in rows:
        key = row["start_date"][: BUCKETS[by]] + (":00" if by == "hour" else "")
        sums = buckets.setdefault(key, [0] * len(counters))
        for index, name in enumerate(counters):
            sums[index] += int(row[name])
    totals = [sum(sums[i] for sums in buckets.values()) for i in range(len(counters))]
    header = [f"{by} (UTC)", *counters]
    lines = [[key, *map(str, sums)] for key, sums in buckets.items()]
    lines.append(["total", *map(str, totals)])
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def format_line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))])

    return "\n".join(format_line(line) for line in [header, *lines])


def run_stats(argv: list[str]) -> int:
    parser = stats_parser()
    args = parser.parse_args(argv)
    query: dict[str, Any] = {}
    if args.start != parser.get_default("start"):
        query["start_date"] = args.start
    if args.end != parser.get_default("end"):
        query["end_date"] = args.end
    if args.all:
        from stats.counters import COUNTER_NAMES  # noqa: PLC0415 - only this option needs it

        query.update({name: 1 for name in COUNTER_NAMES})
    credentials = f"{args.user}:{read_password(args.user)}".encode()
    headers = {
        "Authorization": "Basic " + base64.b64encode(credentials).decode(),
        "Content-Type": "application/json",
    }
    status, _, body = post(args.url, STATS_PATH, json.dumps(query).encode(), headers)
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if status == 401:
        print(
            "lsrpc.cli: the relay refused these credentials (HTTP 401): check --user and the"
            " password against the relay's STATS_USERNAME and STATS_PASSWORD_HASH",
            file=sys.stderr,
        )
        return 1
    if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
        message = answer.get("message") if isinstance(answer, dict) else None
        text = message or body.decode(errors="replace").strip()
        print(f"lsrpc.cli: HTTP {status}: {text}", file=sys.stderr)
        return 1
    if not answer["data"]:
        print("no statistics in this range (no relay process ran, or nothing was recorded)")
        return 0
    print(render_table(answer["data"], args.by))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["stats"]:
        return run_stats(argv[1:])
    return run_onion(argv)


if __name__ == "__main__":
    sys.exit(main())
