"""HTTP requests to a relay (or any server) on 127.0.0.1, one connection each."""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support import RunningRelay


@dataclass
class Received:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body, read as the JSON its Content-Type says it is."""
        content_type = {name.lower(): value for name, value in self.headers.items()}
        assert content_type.get("content-type") == "application/json", self.headers
        return json.loads(self.body)


def http_request(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> Received:
    """One request on a connection of its own to 127.0.0.1:`port`; header names as sent."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        return Received(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


def request(relay: RunningRelay, method: str, path: str, headers: dict[str, str]) -> Received:
    """A request to a running relay, its answer's header names in lower case."""
    answer = http_request(relay.port, method, path, headers=headers, timeout=60)
    lowered = {name.lower(): value for name, value in answer.headers.items()}
    return Received(answer.status, lowered, answer.body)
