"""The onion endpoint's core, whatever web framework carries it: body in, HTTP answer out.

Three steps: open (framing, hop decryption, parsing, the handler's validation), run the
handler's outcome (a database write, through `OutcomeRunner`), seal the reply in the
request's own enc type. `answer_*` run them on a worker thread (Flask); `answer_*_async`
on the IOLoop, awaiting the write instead of holding a thread (the Tornado fast path).
Nothing here raises: a body that cannot be opened gets a plain 400 (413 when too large),
anything that opened gets an encrypted answer, and a failure nobody foresaw a plain 500
without detail (logged once per kind and minute, never as a traceback).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from handlers.endpoints import Outcome
from handlers.reply import Reply
from handlers.runner import OutcomeRunner
from lsrpc import v2, v4
from lsrpc.framing import FramingError, OpenedRequest, open_request
from lsrpc.keys import ServerKeypair
from lsrpc.paths import V2_PATH, V4_PATH
from web.errorlog import RateLimitedLog

log = logging.getLogger(__name__)

__all__ = [  # V2_PATH and V4_PATH live in lsrpc.paths; still importable from here
    "INTERNAL_ERROR",
    "INTERNAL_ERROR_ANSWER",
    "V2_PATH",
    "V4_PATH",
    "HttpAnswer",
    "OnionEndpoint",
    "Parse",
    "Route",
    "Seal",
    "parse_v2",
    "parse_v4",
    "plain",
]


Route = Callable[[v2.ClientCall], Outcome]
Parse = Callable[[bytes], v2.ClientCall]


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    content_type: str
    body: bytes


Seal = Callable[[OpenedRequest, Reply], HttpAnswer]


def plain(status: int, reason: str) -> HttpAnswer:
    return HttpAnswer(status, "text/plain; charset=utf-8", reason.encode() + b"\n")


INTERNAL_ERROR = Reply(status=500, code=0, message="Internal error")
INTERNAL_ERROR_ANSWER = plain(500, "Internal error")


class OnionEndpoint:
    def __init__(
        self,
        keypair: ServerKeypair,
        route: Route,
        runner: OutcomeRunner,
        max_body_bytes: int,
        errors: RateLimitedLog | None = None,
    ) -> None:
        self.keypair = keypair
        self._route = route
        self._runner = runner
        self.max_body_bytes = max_body_bytes
        self.errors = errors or RateLimitedLog(log)

    # -- the three steps -------------------------------------------------------------------

    def _open(self, body: bytes) -> OpenedRequest | HttpAnswer:
        if len(body) > self.max_body_bytes:
            return plain(413, "Request body too large")
        try:
            return open_request(body, self.keypair)
        except FramingError as exc:
            return plain(400, f"Invalid onion request: {exc}")

    def _outcome(self, parse: Parse, plaintext: bytes) -> Outcome:
        try:
            call = parse(plaintext)
        except (v2.V2RequestError, v4.V4FramingError) as exc:
            return Reply.bad_request(str(exc))
        except Exception as exc:  # noqa: BLE001 - a parser bug: still an encrypted answer
            self.errors.unexpected(exc, "parsing an onion request")
            return INTERNAL_ERROR
        try:
            return self._route(call)
        except Exception as exc:  # noqa: BLE001 - the client still gets an encrypted answer
            self.errors.unexpected(exc, "handling a request")
            return INTERNAL_ERROR

    @staticmethod
    def _seal_v2(opened: OpenedRequest, reply: Reply) -> HttpAnswer:
        sealed = opened.seal(v2.render_reply(reply.status, reply.body()))
        result = json.dumps({"result": base64.b64encode(sealed).decode("ascii")})
        return HttpAnswer(200, "application/json", result.encode("ascii"))

    @staticmethod
    def _seal_v4(opened: OpenedRequest, reply: Reply) -> HttpAnswer:
        body = json.dumps(reply.body(), ensure_ascii=True, separators=(",", ":")).encode()
        sealed = opened.seal(v4.build_response(reply.status, body))
        return HttpAnswer(200, "application/octet-stream", sealed)

    def _run(self, outcome: Outcome) -> Reply:
        try:
            return self._runner.run(outcome)
        except Exception as exc:  # noqa: BLE001 - the client still gets an encrypted answer
            self.errors.unexpected(exc, "finishing a request")
            return INTERNAL_ERROR

    async def _run_async(self, outcome: Outcome) -> Reply:
        try:
            return await self._runner.run_async(outcome)
        except Exception as exc:  # noqa: BLE001 - the client still gets an encrypted answer
            self.errors.unexpected(exc, "finishing a request")
            return INTERNAL_ERROR

    # -- v2 and v4, blocking and async -------------------------------------------------------
    # Each step above answers its own failures; the outer guard is for what none foresaw
    # (opening or sealing failing for a reason that is not the client's): a plain 500 with
    # no detail, and one log line per kind of failure and minute.

    def _answer(self, body: bytes, parse: Parse, seal: Seal) -> HttpAnswer:
        try:
            opened = self._open(body)
            if isinstance(opened, HttpAnswer):
                return opened
            return seal(opened, self._run(self._outcome(parse, opened.plaintext)))
        except Exception as exc:  # noqa: BLE001 - never a traceback to the client
            self.errors.unexpected(exc, "answering an onion request")
            return INTERNAL_ERROR_ANSWER

    async def _answer_async(self, body: bytes, parse: Parse, seal: Seal) -> HttpAnswer:
        try:
            opened = self._open(body)
            if isinstance(opened, HttpAnswer):
                return opened
            outcome = self._outcome(parse, opened.plaintext)
            return seal(opened, await self._run_async(outcome))
        except Exception as exc:  # noqa: BLE001 - never a traceback to the client
            self.errors.unexpected(exc, "answering an onion request")
            return INTERNAL_ERROR_ANSWER

    def answer_v2(self, body: bytes) -> HttpAnswer:
        return self._answer(body, parse_v2, self._seal_v2)

    def answer_v4(self, body: bytes) -> HttpAnswer:
        return self._answer(body, parse_v4, self._seal_v4)

    async def answer_v2_async(self, body: bytes) -> HttpAnswer:
        return await self._answer_async(body, parse_v2, self._seal_v2)

    async def answer_v4_async(self, body: bytes) -> HttpAnswer:
        return await self._answer_async(body, parse_v4, self._seal_v4)


def parse_v2(plaintext: bytes) -> v2.ClientCall:
    return v2.parse_request(plaintext)


def parse_v4(plaintext: bytes) -> v2.ClientCall:
    request = v4.parse_request(plaintext)
    return v2.ClientCall(request.endpoint, v2.parse_params(request.body))
