"""The fake APNs and FCM in a process of their own, with a control channel for the bench.

    python -m bench.fakes --dir DIR [--fcm-plain]

Like `python -m sandbox` (same fakes, same printed `PN_*` settings), but quiet (no line per
push) and with one more printed line, `BENCH_CONTROL=<port>`: a loopback TCP port that
answers one JSON line per JSON line asked, so that a load generator in another process can
count and time the pushes the fakes received:

    {"op": "clear", "provider": "apns"}                  -> {"ok": true}
    {"op": "count", "provider": "apns"}                  -> {"count": 1234}
    {"op": "wait", "provider": "apns", "count": 1000, "timeout": 60, "data": false}
        -> {"pushes": [[received_at, status, data-or-null], ...]}   or {"error": "..."}

`received_at` is the fake's time.monotonic(), which on Linux is one clock for every process of
the machine, so a sender's own time.monotonic() compares with it directly. `data` is the
notification's ENCRYPTED_DATA, asked for only when matching notifies to pushes (latency).

RemoteFake is the client side: it has the `pushes.clear()` / `pushes.wait_for()` of an
in-process fake, so bench/push_bench.py's functions run unchanged against it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox.__main__ import settings_lines
from sandbox.apns import FakeApns
from sandbox.certs import generate_apns_key, generate_tls
from sandbox.fcm import FakeFcm

CONTROL_PREFIX = "BENCH_CONTROL="


def _push_data(provider: str, push: Any) -> str | None:
    try:
        if provider == "apns":
            return str(push.json()["ENCRYPTED_DATA"])
        return str(push.data["ENCRYPTED_DATA"])
    except (ValueError, KeyError, TypeError):
        return None


class Control:
    """Answers the bench's questions about what the fakes received."""

    def __init__(self, fakes: dict[str, Any]) -> None:
        self._fakes = fakes

    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op, provider = request.get("op"), request.get("provider")
        fake = self._fakes.get(str(provider))
        if fake is None:
            return {"error": f"unknown provider {provider!r}"}
        if op == "clear":
            fake.pushes.clear()
            return {"ok": True}
        if op == "count":
            return {"count": len(fake.pushes)}
        if op == "wait":
            wanted = int(request.get("count", 0))
            deadline = time.monotonic() + float(request.get("timeout", 60))
            while len(fake.pushes) < wanted:
                if time.monotonic() > deadline:
                    return {"error": f"received {len(fake.pushes)} pushes, wanted {wanted}"}
                await asyncio.sleep(0.005)
            with_data = bool(request.get("data"))
            return {
                "pushes": [
                    [p.received_at, p.status, _push_data(str(provider), p) if with_data else None]
                    for p in fake.pushes.snapshot()
                ]
            }
        return {"error": f"unknown op {op!r}"}

    async def serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    answer = (
                        await self.answer(request)
                        if isinstance(request, dict)
                        else {"error": "a JSON object, please"}
                    )
                except ValueError:
                    answer = {"error": "not JSON"}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def run(args: argparse.Namespace) -> None:
    directory: Path = args.dir
    directory.mkdir(parents=True, exist_ok=True)
    tls = generate_tls(directory)
    apns = FakeApns(tls, generate_apns_key(directory))
    fcm = FakeFcm(tls=None if args.fcm_plain else tls)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with apns, fcm:
        account = fcm.write_service_account(directory / "service-account.json")
        control = Control({"apns": apns, "fcm": fcm})
        server = await asyncio.start_server(control.serve_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for line in settings_lines(apns, fcm, account.file):
            print(line)
        print(f"{CONTROL_PREFIX}{port}", flush=True)
        async with server:
            await stop.wait()


@dataclass(frozen=True, slots=True)
class RemotePush:
    """What a load generator needs of one push: when it arrived, its status, its data."""

    received_at: float
    status: int
    encrypted_data: str | None

    def json(self) -> dict[str, Any]:  # the APNs payload's view
        return {"ENCRYPTED_DATA": self.encrypted_data}

    @property
    def data(self) -> dict[str, Any]:  # the FCM message's view
        return {"ENCRYPTED_DATA": self.encrypted_data}


class RemotePushes:
    def __init__(self, port: int, provider: str, *, with_data: bool) -> None:
        self._port = port
        self._provider = provider
        self._with_data = with_data

    def _ask(self, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        with socket.create_connection(("127.0.0.1", self._port), timeout=timeout + 30) as sock:
            sock.sendall(json.dumps({**request, "provider": self._provider}).encode() + b"\n")
            with sock.makefile("rb") as answer:
                reply: dict[str, Any] = json.loads(answer.readline())
        if "error" in reply:
            error = TimeoutError if request["op"] == "wait" else RuntimeError
            raise error(reply["error"])
        return reply

    def clear(self) -> None:
        self._ask({"op": "clear"})

    def __len__(self) -> int:
        return int(self._ask({"op": "count"})["count"])

    def wait_for(self, count: int, timeout: float = 5.0) -> list[RemotePush]:
        reply = self._ask(
            {"op": "wait", "count": count, "timeout": timeout, "data": self._with_data},
            timeout=timeout,
        )
        return [RemotePush(float(t), int(s), d) for t, s, d in reply["pushes"]]


class RemoteFake:
    """A fake in the bench.fakes process, seen from another process."""

    def __init__(self, control_port: int, provider: str, *, with_data: bool = False) -> None:
        self.pushes = RemotePushes(control_port, provider, with_data=with_data)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, required=True, help="for the test CA and keys")
    parser.add_argument("--fcm-plain", action="store_true", help="FCM on http:// (HTTP/1.1)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
