"""Microseconds per call of our HTTP/1.1 server's per-request header work (web/h1headers.py,
web/h1request.py), each against the Tornado code it stands in for:

    python bench/h1_micro.py [--number 20000] [--repeat 7]

- reading the load generator's header block: `parse_headers` against `HTTPHeaders.parse`;
- writing an onion answer (200, application/octet-stream, 400 bytes) on a connection of
  our server over a real socketpair, its other end read by a thread: `write_to` (which
  formats it in one go, `write_answer`) against the same answer as an HTTPHeaders through
  `write_headers` + `finish`. Both include the send syscall.

Best of `--repeat` runs of `--number` calls each (timeit).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import threading
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tornado.httputil import (
    HTTPHeaders,
    HTTPServerConnectionDelegate,
    parse_request_start_line,
)

from web.answers import HttpAnswer, HttpDate, write_through_headers, write_to
from web.h1headers import parse_headers
from web.h1request import RequestConnection
from web.h1server import H1Server, ServerConnection

HEAD = (
    "POST /loki/v2/lsrpc HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    "Content-Type: application/octet-stream\r\nContent-Length: 517\r\n\r\n"
)
ANSWER = HttpAnswer(200, "application/octet-stream", b"x" * 400)


def best_us(statement: object, number: int, repeat: int) -> float:
    return min(timeit.repeat(statement, number=number, repeat=repeat)) / number * 1e6  # type: ignore[arg-type]


def through_write_headers(connection: RequestConnection, answer: HttpAnswer, date: str) -> None:
    write_through_headers(connection, answer, date, head=False)


def read_all(sock: socket.socket) -> None:
    try:
        while sock.recv(1 << 20):
            pass
    except OSError:
        pass  # closed


async def writing(number: int, repeat: int) -> tuple[float, float]:
    ours, theirs = socket.socketpair()
    drained = threading.Thread(target=read_all, args=(theirs,))
    drained.start()
    server = H1Server(HTTPServerConnectionDelegate())
    _, protocol = await asyncio.get_running_loop().connect_accepted_socket(
        lambda: ServerConnection(server), ours
    )
    connection = protocol
    assert isinstance(connection, ServerConnection)
    eol = HEAD.find("\n")
    start_line = parse_request_start_line(HEAD[:eol].rstrip("\r"))
    headers = parse_headers(HEAD, eol)
    date = HttpDate()()

    def fast() -> None:
        write_to(RequestConnection(connection, start_line, headers), ANSWER, date, head=False)

    def general() -> None:
        through_write_headers(RequestConnection(connection, start_line, headers), ANSWER, date)

    results = best_us(fast, number, repeat), best_us(general, number, repeat)
    connection.transport.close()  # type: ignore[union-attr]
    await asyncio.sleep(0.05)
    drained.join(5)
    theirs.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    eol = HEAD.find("\n")
    parsed = best_us(lambda: parse_headers(HEAD, eol), args.number, args.repeat)
    tornado = best_us(lambda: HTTPHeaders.parse(HEAD[eol:]), args.number, args.repeat)
    print(f"read headers:  parse_headers {parsed:.2f} us, HTTPHeaders.parse {tornado:.2f} us")
    fast, general = asyncio.run(writing(args.number, args.repeat))
    print(f"write answer:  write_to {fast:.2f} us, write_headers + finish {general:.2f} us")


if __name__ == "__main__":
    main()
