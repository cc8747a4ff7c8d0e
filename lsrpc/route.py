"""The Flask side of the onion layer: `/loki/v2/lsrpc` (and v4 once registered).

Knows framing and encryption, nothing of pushes: it hands a ClientCall to the `answer`
function it was built with and encrypts whatever Reply comes back.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable

from flask import Blueprint, Response, request

from handlers.reply import Reply
from lsrpc import v2
from lsrpc.framing import FramingError, open_request
from lsrpc.keys import ServerKeypair

log = logging.getLogger(__name__)

Answer = Callable[[v2.ClientCall], Reply]


def plain_error(status: int, reason: str) -> Response:
    return Response(reason + "\n", status=status, mimetype="text/plain")


def create_lsrpc_blueprint(keypair: ServerKeypair, answer: Answer) -> Blueprint:
    blueprint = Blueprint("lsrpc", __name__)

    @blueprint.post("/loki/v2/lsrpc")
    def lsrpc_v2() -> Response:
        body = request.get_data(cache=False)
        try:
            opened = open_request(body, keypair)
        except FramingError as exc:
            return plain_error(400, f"Invalid onion request: {exc}")
        try:
            call = v2.parse_request(opened.plaintext)
        except v2.V2RequestError as exc:
            reply = Reply.bad_request(str(exc))
        else:
            reply = answer(call)
        sealed = opened.seal(v2.render_reply(reply.status, reply.body()))
        return Response(
            json.dumps({"result": base64.b64encode(sealed).decode("ascii")}),
            status=200,
            mimetype="application/json",
        )

    return blueprint
