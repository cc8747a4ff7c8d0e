"""One function per endpoint, and the table that routes an endpoint name to it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from handlers import validation
from handlers.reply import Reply
from handlers.validation import InvalidParameter
from stats.counters import Counters
from storage.store import RelayStore
from storage.writer import WriterClosedError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HandlerContext:
    store: RelayStore
    counters: Counters
    max_data_bytes: int
    dedup_window_ms: int
    on_queued: Callable[[], None]


Params = dict[str, Any]
Handler = Callable[[HandlerContext, Params], Reply]


def register(ctx: HandlerContext, params: Params) -> Reply:
    token, provider = validation.device_token(params)
    session_id = validation.session_id(params, "pubKey")
    ctx.store.register(token, session_id, provider)
    return Reply.success()


def register_legacy_groups_only(ctx: HandlerContext, params: Params) -> Reply:
    token, provider = validation.device_token(params)
    session_id = validation.session_id(params, "pubKey")
    groups = validation.group_key_list(params, "legacyGroupPublicKeys")
    ctx.store.register_with_groups(token, session_id, provider, groups)
    return Reply.success()


def unregister(ctx: HandlerContext, params: Params) -> Reply:
    token = validation.token_only(params)
    ctx.store.unregister(token)
    return Reply.success()


def subscribe_closed_group(ctx: HandlerContext, params: Params) -> Reply:
    group_key = validation.session_id(params, "closedGroupPublicKey")
    session_id = validation.session_id(params, "pubKey")
    ctx.store.subscribe(group_key, session_id)
    return Reply.success()


def unsubscribe_closed_group(ctx: HandlerContext, params: Params) -> Reply:
    group_key = validation.session_id(params, "closedGroupPublicKey")
    session_id = validation.session_id(params, "pubKey")
    ctx.store.unsubscribe(group_key, session_id)
    return Reply.success()


def notify(ctx: HandlerContext, params: Params) -> Reply:
    data = validation.notify_data(params, ctx.max_data_bytes)
    send_to = validation.session_id(params, "send_to")
    outcome = ctx.store.enqueue_notification(send_to, data, dedup_window_ms=ctx.dedup_window_ms)
    ctx.counters.incr("total_message_number")
    if outcome.via_group:
        ctx.counters.incr("closed_group_message_number")
    if outcome.duplicate:
        ctx.counters.incr("deduplicated_number")
    elif outcome.deliveries == 0:
        ctx.counters.incr("untracked_message_number")
    else:
        ctx.on_queued()
    return Reply.success()


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


def handle(ctx: HandlerContext, endpoint: str, params: Params) -> Reply:
    """Run the endpoint's handler; every failure becomes a Reply, never an exception."""
    name = normalize_endpoint(endpoint)
    handler = ENDPOINTS.get(name)
    if handler is None:
        return Reply.bad_request("Unknown endpoint")
    try:
        return handler(ctx, params)
    except InvalidParameter as exc:
        return Reply.bad_request(exc.message)
    except (SQLAlchemyError, WriterClosedError) as exc:
        log.error("%s failed on the database: %s", name, type(exc).__name__)
        return Reply.unavailable()
