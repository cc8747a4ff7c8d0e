"""One function per endpoint, and the table that routes an endpoint name to it.

A handler validates its parameters and returns either a finished `Reply` (an error) or a
`Pending` write: the storage operation to run and how to turn its result into a Reply. Who
runs the operation is the caller's business: the Flask route blocks a worker thread on it,
the Tornado fast path awaits it on the IOLoop. Both end in `finish`, so the semantics are one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from handlers import validation
from handlers.reply import Reply
from handlers.validation import InvalidParameter
from stats.counters import Counters
from storage.records import NotifyOutcome
from storage.sql import Tx
from storage.store import RelayStore
from web.errorlog import RateLimitedLog

log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass(frozen=True)
class HandlerContext:
    store: RelayStore
    counters: Counters
    max_data_bytes: int
    dedup_window_ms: int
    on_queued: Callable[[], None]


@dataclass(frozen=True)
class Pending(Generic[R]):
    """A validated request waiting for its database operation."""

    name: str
    operation: Callable[[Tx], R]
    finish: Callable[[R], Reply]


Outcome = Reply | Pending[Any]
Params = dict[str, Any]
Handler = Callable[[HandlerContext, Params], Outcome]


def _succeed(_: object) -> Reply:
    return Reply.success()


def register(ctx: HandlerContext, params: Params) -> Outcome:
    token, provider = validation.device_token(params)
    session_id = validation.session_id(params, "pubKey")
    return Pending("register", ctx.store.register_op(token, session_id, provider), _succeed)


def register_legacy_groups_only(ctx: HandlerContext, params: Params) -> Outcome:
    token, provider = validation.device_token(params)
    session_id = validation.session_id(params, "pubKey")
    groups = validation.group_key_list(params, "legacyGroupPublicKeys")
    operation = ctx.store.register_with_groups_op(token, session_id, provider, groups)
    return Pending("register_legacy_groups_only", operation, _succeed)


def unregister(ctx: HandlerContext, params: Params) -> Outcome:
    token = validation.token_only(params)
    return Pending("unregister", ctx.store.unregister_op(token), _succeed)


def subscribe_closed_group(ctx: HandlerContext, params: Params) -> Outcome:
    group_key = validation.session_id(params, "closedGroupPublicKey")
    session_id = validation.session_id(params, "pubKey")
    return Pending(
        "subscribe_closed_group", ctx.store.subscribe_op(group_key, session_id), _succeed
    )


def unsubscribe_closed_group(ctx: HandlerContext, params: Params) -> Outcome:
    group_key = validation.session_id(params, "closedGroupPublicKey")
    session_id = validation.session_id(params, "pubKey")
    operation = ctx.store.unsubscribe_op(group_key, session_id)
    return Pending("unsubscribe_closed_group", operation, _succeed)


def notify(ctx: HandlerContext, params: Params) -> Outcome:
    data = validation.notify_data(params, ctx.max_data_bytes)
    send_to = validation.session_id(params, "send_to")
    operation = ctx.store.enqueue_notification_op(
        send_to, data, dedup_window_ms=ctx.dedup_window_ms
    )

    def finish(outcome: NotifyOutcome) -> Reply:
        counters = ctx.counters
        counters.incr("total_message_number")
        if outcome.via_group:
            counters.incr("closed_group_message_number")
        if outcome.duplicate:
            counters.incr("deduplicated_number")
        elif outcome.deliveries == 0:
            counters.incr("untracked_message_number")
        else:
            ctx.on_queued()
        return Reply.success()

    return Pending("notify", operation, finish)


ENDPOINTS: dict[str, Handler] = {
    "register": register,
    "register_legacy_groups_only": register_legacy_groups_only,
    "unregister": unregister,
    "subscribe_closed_group": subscribe_closed_group,
    "unsubscribe_closed_group": unsubscribe_closed_group,
    "notify": notify,
}


def normalize_endpoint(endpoint: str) -> str:
    return endpoint.strip().lstrip("/")


def handle(ctx: HandlerContext, endpoint: str, params: Params) -> Outcome:
    """Validate and route; every validation failure becomes a Reply, never an exception."""
    handler = ENDPOINTS.get(normalize_endpoint(endpoint))
    if handler is None:
        return Reply.bad_request("Unknown endpoint")
    try:
        return handler(ctx, params)
    except InvalidParameter as exc:
        return Reply.bad_request(exc.message)


def storage_failed(
    pending: Pending[Any], exc: Exception, errors: RateLimitedLog | None = None
) -> Reply:
    """The protocol's 503. Logged once a minute per kind of failure with `errors` (a database
    outage fails every request: one line each would flood the log), else every time."""
    if errors is None:
        log.error("%s failed on the database: %s", pending.name, exc)
    else:
        errors.log(
            logging.ERROR, f"storage {exc}", "%s failed on the database: %s", pending.name, exc
        )
    return Reply.unavailable()
