"""One function per endpoint, and the table that routes an endpoint name to it.

A handler validates its parameters and returns a `HandlerResult`: either a finished `Reply`
(an error) or a `Pending` write, the storage operation to run and how to turn its result into
a Reply. Running the operation is `handlers/runner.py`'s business (`WriteRunner`, awaited on
the IOLoop by the onion core); it ends in `finish`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from handlers import validation
from handlers.notify_limit import NotifyRateLimit
from handlers.reply import Reply
from handlers.validation import DataTooLarge, InvalidParameter
from settings import Settings
from stats.counters import Counters
from storage.records import Continuation, Enqueued, Membership, Registered
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
    notify_limit: NotifyRateLimit | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        store: RelayStore,
        counters: Counters,
        on_queued: Callable[[], None],
    ) -> HandlerContext:
        """The handlers' limits from the settings: the dedup window in ms, the notify rate."""
        return cls(
            store,
            counters,
            max_data_bytes=settings.MAX_DATA_BYTES,
            dedup_window_ms=int(settings.DEDUP_WINDOW * 1000),
            on_queued=on_queued,
            notify_limit=NotifyRateLimit(settings.NOTIFY_PER_MINUTE, settings.NOTIFY_BURST),
        )


@dataclass(frozen=True)
class Pending(Generic[R]):
    """A validated request waiting for its database operation.

    The operation may return a `Continuation` (a large write done in several transactions):
    the runner then submits its next operation, and so on; `finish` sees the last result.
    """

    name: str
    operation: Callable[[Tx], R | Continuation]
    finish: Callable[[R], Reply]


HandlerResult = Reply | Pending[Any]
Params = dict[str, Any]
Handler = Callable[[HandlerContext, Params], HandlerResult]


def _succeed(_: object) -> Reply:
    return Reply.success()


def _group_full(ctx: HandlerContext, what: str) -> Reply:
    ctx.counters.refused("group_members")
    return Reply.limit_reached(
        f"{what} has reached its limit of {ctx.store.max_members} members; nothing was changed"
    )


def _registered(ctx: HandlerContext) -> Callable[[Registered], Reply]:
    def finish(registered: Registered) -> Reply:
        if registered.full_group:
            return _group_full(ctx, "A group in legacyGroupPublicKeys")
        if registered.replaced:
            # Not a refusal: the new device works, the least recently registered ones went.
            ctx.counters.incr("devices_replaced", registered.replaced)
        return Reply.success()

    return finish


def register(ctx: HandlerContext, params: Params) -> HandlerResult:
    token, provider = validation.device_token(params)
    session_id = validation.session_id(params, "pubKey")
    operation = ctx.store.register_op(token, session_id, provider)
    return Pending("register", operation, _registered(ctx))


def register_legacy_groups_only(ctx: HandlerContext, params: Params) -> HandlerResult:
    token, provider = validation.device_token(params)
    session_id = validation.session_id(params, "pubKey")
    groups = validation.group_key_list(params, "legacyGroupPublicKeys")
    operation = ctx.store.register_with_groups_op(token, session_id, provider, groups)
    return Pending("register_legacy_groups_only", operation, _registered(ctx))


def unregister(ctx: HandlerContext, params: Params) -> HandlerResult:
    token = validation.token_only(params)
    return Pending("unregister", ctx.store.unregister_op(token), _succeed)


def subscribe_closed_group(ctx: HandlerContext, params: Params) -> HandlerResult:
    group_key = validation.session_id(params, "closedGroupPublicKey")
    session_id = validation.session_id(params, "pubKey")

    def finish(membership: Membership) -> Reply:
        if membership is Membership.GROUP_FULL:
            return _group_full(ctx, "The closed group")
        return Reply.success()

    return Pending("subscribe_closed_group", ctx.store.subscribe_op(group_key, session_id), finish)


def unsubscribe_closed_group(ctx: HandlerContext, params: Params) -> HandlerResult:
    group_key = validation.session_id(params, "closedGroupPublicKey")
    session_id = validation.session_id(params, "pubKey")
    operation = ctx.store.unsubscribe_op(group_key, session_id)
    return Pending("unsubscribe_closed_group", operation, _succeed)


def notify(ctx: HandlerContext, params: Params) -> HandlerResult:
    try:
        data = validation.notify_data(params, ctx.max_data_bytes)
    except DataTooLarge:
        ctx.counters.refused("data_too_large")
        raise
    send_to = validation.session_id(params, "send_to")
    limit = ctx.notify_limit
    operation = ctx.store.enqueue_notification_op(
        send_to,
        data,
        dedup_window_ms=ctx.dedup_window_ms,
        admit=limit.admit if limit is not None else None,
    )

    def finish(enqueued: Enqueued) -> Reply:
        counters = ctx.counters
        if enqueued.refused:
            counters.refused(enqueued.refused)
            per_minute = limit.per_minute if limit is not None else 0
            return Reply.too_many(
                f"Too many notifications for this recipient (at most {per_minute} a minute);"
                " try again later"
            )
        counters.incr("total_message_number")
        if enqueued.via_group:
            counters.incr("closed_group_message_number")
        if enqueued.duplicate:
            counters.incr("deduplicated_number")
        elif enqueued.deliveries == 0:
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


def handle(ctx: HandlerContext, endpoint: str, params: Params) -> HandlerResult:
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
