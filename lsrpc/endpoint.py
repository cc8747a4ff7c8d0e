"""The onion endpoint's core, whatever web framework carries it: body in, HTTP answer out.

Three steps: open (framing, hop decryption, parsing, the handler's validation), run the
handler's outcome (a database write, through `OutcomeRunner`), seal the reply in the
request's own enc type. `answer_*` run them on a worker thread (Flask); `answer_*_async`
on the IOLoop, awaiting the write instead of holding a thread (the Tornado fast path).
Nothing here raises: a body that cannot be opened gets a plain 400, anything that opened
gets an encrypted answer.
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

log = logging.getLogger(__name__)

V2_PATH = "/loki/v2/lsrpc"
V4_PATH = "/oxen/v4/lsrpc"

Route = Callable[[v2.ClientCall], Outcome]


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    content_type: str
    body: bytes


def plain(status: int, reason: str) -> HttpAnswer:
    return HttpAnswer(status, "text/plain; charset=utf-8", reason.encode() + b"\n")


INTERNAL_ERROR = Reply(status=500, code=0, message="Internal error")


class OnionEndpoint:
    def __init__(
        self, keypair: ServerKeypair, route: Route, runner: OutcomeRunner, max_body_bytes: int
    ) -> None:
        self.keypair = keypair
        self._route = route
        self._runner = runner
        self.max_body_bytes = max_body_bytes

    # -- the three steps -------------------------------------------------------------------

    def _open(self, body: bytes) -> OpenedRequest | HttpAnswer:
        if len(body) > self.max_body_bytes:
            return plain(413, "Request body too large")
        try:
            return open_request(body, self.keypair)
        except FramingError as exc:
            return plain(400, f"Invalid onion request: {exc}")

    def _outcome(self, parse: Callable[[bytes], v2.ClientCall], plaintext: bytes) -> Outcome:
        try:
            call = parse(plaintext)
        except (v2.V2RequestError, v4.V4FramingError) as exc:
            return Reply.bad_request(str(exc))
        try:
            return self._route(call)
        except Exception as exc:  # noqa: BLE001 - the client still gets an encrypted answer
            log.error("unexpected %s while handling a request", type(exc).__name__)
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
            log.error("unexpected %s while finishing a request", type(exc).__name__)
            return INTERNAL_ERROR

    async def _run_async(self, outcome: Outcome) -> Reply:
        try:
            return await self._runner.run_async(outcome)
        except Exception as exc:  # noqa: BLE001 - the client still gets an encrypted answer
            log.error("unexpected %s while finishing a request", type(exc).__name__)
            return INTERNAL_ERROR

    # -- v2 and v4, blocking and async -------------------------------------------------------

    def answer_v2(self, body: bytes) -> HttpAnswer:
        opened = self._open(body)
        if isinstance(opened, HttpAnswer):
            return opened
        return self._seal_v2(opened, self._run(self._outcome(parse_v2, opened.plaintext)))

    def answer_v4(self, body: bytes) -> HttpAnswer:
        opened = self._open(body)
        if isinstance(opened, HttpAnswer):
            return opened
        return self._seal_v4(opened, self._run(self._outcome(parse_v4, opened.plaintext)))

    async def answer_v2_async(self, body: bytes) -> HttpAnswer:
        opened = self._open(body)
        if isinstance(opened, HttpAnswer):
            return opened
        outcome = self._outcome(parse_v2, opened.plaintext)
        return self._seal_v2(opened, await self._run_async(outcome))

    async def answer_v4_async(self, body: bytes) -> HttpAnswer:
        opened = self._open(body)
        if isinstance(opened, HttpAnswer):
            return opened
        outcome = self._outcome(parse_v4, opened.plaintext)
        return self._seal_v4(opened, await self._run_async(outcome))


def parse_v2(plaintext: bytes) -> v2.ClientCall:
    return v2.parse_request(plaintext)


def parse_v4(plaintext: bytes) -> v2.ClientCall:
    request = v4.parse_request(plaintext)
    return v2.ClientCall(request.endpoint, v2.parse_params(request.body))
