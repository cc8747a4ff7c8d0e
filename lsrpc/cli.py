"""A command-line onion client: send one request to a relay, print the decrypted answer.

    python -m lsrpc.cli --pubkey HEX register token=<64 hex> pubKey=05<64 hex>
    python -m lsrpc.cli --pubkey HEX --v4 --enc-type xchacha20 notify data=QUJD send_to=05...

`--pubkey` defaults to what `python server.py --print-pubkey` would print here (the key
file in ./data). A value given as JSON (e.g. legacyGroupPublicKeys='["05..."]') is parsed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lsrpc.client import V2_STYLES, V4_STYLES, OnionClient, ReplyError
from lsrpc.keys import KeyFileError, ServerKeypair, parse_key_text


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
        private = parse_key_text(
            Path("data/server_key.hex").read_text(), where="data/server_key.hex"
        )
        return ServerKeypair.from_private_bytes(private).public_bytes
    except (KeyFileError, OSError) as exc:
        raise SystemExit(f"lsrpc.cli: {exc}; pass --pubkey") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lsrpc.cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the relay's base URL")
    parser.add_argument("--pubkey", help="the relay's public key, 64 hex characters")
    parser.add_argument("--v4", action="store_true", help="use /oxen/v4/lsrpc (default: v2)")
    parser.add_argument("--style", help=f"v2: {', '.join(V2_STYLES)}; v4: {', '.join(V4_STYLES)}")
    parser.add_argument("--enc-type", default="aes-gcm", choices=["aes-gcm", "xchacha20"])
    parser.add_argument("endpoint", help="register, unregister, notify, ...")
    parser.add_argument("params", nargs="*", help="name=value parameters")
    args = parser.parse_args(argv)

    client = OnionClient(server_public_key(args.pubkey))
    params = parse_params(args.params)
    if args.v4:
        style = args.style or "desktop"
        if style not in V4_STYLES:
            raise SystemExit(f"lsrpc.cli: --style for v4 is one of {', '.join(V4_STYLES)}")
        request = client.v4(args.endpoint, params, style=style, enc_type=args.enc_type)
        path = "/oxen/v4/lsrpc"
    else:
        style = args.style or "android"
        if style not in V2_STYLES:
            raise SystemExit(f"lsrpc.cli: --style for v2 is one of {', '.join(V2_STYLES)}")
        request = client.v2(args.endpoint, params, style=style, enc_type=args.enc_type)
        path = "/loki/v2/lsrpc"
    url = urlsplit(args.url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=30)
    try:
        connection.request("POST", path, body=request.body)
        response = connection.getresponse()
        body = response.read()
    except OSError as exc:
        raise SystemExit(f"lsrpc.cli: cannot reach {args.url}: {exc}") from None
    finally:
        connection.close()
    if response.status != 200:
        print(f"HTTP {response.status}: {body.decode(errors='replace').strip()}", file=sys.stderr)
        return 1
    try:
        if args.v4:
            meta, reply = request.open_v4_reply(body)
            status = int(meta["code"])
        else:
            status, reply = request.open_v2_reply(body)
    except ReplyError as exc:
        print(f"lsrpc.cli: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"status": status, "body": reply}))
    return 0 if status == 200 and reply.get("code") == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
