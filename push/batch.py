"""What APNs and FCM senders share: a sender over our connection pool, and its batch loop.

`PooledSender.send` builds the pool (and the credentials) at the first call; a file that
became unreadable since the start is a configuration error for the whole batch. Then
`run_batch` sends the batch in rounds, each of them all the pushes still to send at once
(`ConnectionPool.run`), and reads every exchange:
- answered: the sender's `judge` gives the outcome, or None to send it again next round
  (FCM: a 401 for our access token, once);
- refused unprocessed by the server (GOAWAY, REFUSED_STREAM): sent again next round, once;
- any other failure before an answer: transient ("timeout", "transport: ...").
Each round starts with the sender's `authorize` (FCM: get an access token; a failure is the
outcome of every push left), and is bounded by the request timeout; the whole call by
`send_timeout_s`. Pushes that went without their data to fit say so (`with_trimmed`).
"""

from __future__ import annotations

import asyncio
from typing import Generic, Protocol, TypeVar

from push.exchange import Exchange
from push.httppool import ConnectionPool
from push.outcome import ProviderSender, Push, PushOutcome, Verdict


class Timeouts(Protocol):
    @property
    def send_timeout_s(self) -> float: ...

    @property
    def request_timeout_s(self) -> float: ...


ConfigT = TypeVar("ConfigT", bound=Timeouts)


class Batch(Protocol):
    """One `send` call's requests and what their answers mean, for `run_batch`."""

    async def authorize(self, deadline: float) -> PushOutcome | None:
        """Before each round; an outcome instead of None is that of every push left."""
        ...

    def exchange(self, index: int, body: bytes) -> Exchange:
        """The request for push `index`, with this round's credentials."""
        ...

    def judge(self, exchange: Exchange) -> PushOutcome | None:
        """The outcome of an answered exchange, or None to send it again next round."""
        ...


async def run_batch(
    pool: ConnectionPool,
    batch: Batch,
    payloads: list[tuple[bytes, bool]],
    *,
    send_timeout_s: float,
    request_timeout_s: float,
) -> list[PushOutcome]:
    """One outcome per payload (its body, and whether data was left out), in order."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + send_timeout_s
    count = len(payloads)
    outcomes: list[PushOutcome | None] = [None] * count
    resent = [False] * count  # sent once more after the server refused it unprocessed
    todo = list(range(count))
    while todo:
        refused = await batch.authorize(deadline)
        if refused is not None:
            for index in todo:
                outcomes[index] = refused
            break
        exchanges = [batch.exchange(index, payloads[index][0]) for index in todo]
        await pool.run(exchanges, min(deadline, loop.time() + request_timeout_s))
        todo = []
        for exchange in exchanges:
            index = exchange.index
            if not exchange.failure:
                outcome = batch.judge(exchange)
                if outcome is None:
                    todo.append(index)
                else:
                    outcomes[index] = outcome
            elif exchange.refused and not resent[index]:
                resent[index] = True
                todo.append(index)
            elif exchange.failure == "timeout":
                outcomes[index] = PushOutcome.transient("timeout")
            else:
                outcomes[index] = PushOutcome.transient(f"transport: {exchange.failure}")
        if todo and loop.time() >= deadline:
            for index in todo:
                outcomes[index] = PushOutcome.transient("timeout")
            break
    result: list[PushOutcome] = []
    for answer, (_, cut) in zip(outcomes, payloads, strict=True):
        assert answer is not None
        result.append(answer.with_trimmed() if cut else answer)
    return result


class PooledSender(ProviderSender, Generic[ConfigT]):
    """A sender whose pushes go through one `ConnectionPool`, built at the first `send`."""

    credential_hint = ""  # the settings to check when the credentials cannot be loaded

    def __init__(self, config: ConfigT, *, max_in_flight: int = 250, batch_size: int = 50) -> None:
        self.config = config
        self.max_in_flight = max_in_flight
        self.batch_size = batch_size
        self.pool: ConnectionPool | None = None

    def _connect(self) -> ConnectionPool:
        """The pool, and whatever credentials the batches need; ValueError or OSError for a
        file that cannot be used."""
        raise NotImplementedError

    def _payload(self, push: Push) -> tuple[bytes, bool]:
        """The request body of `push`, and whether its data was left out to fit."""
        raise NotImplementedError

    def _batch(self, pushes: list[Push]) -> Batch:
        raise NotImplementedError

    async def send(self, pushes: list[Push]) -> list[PushOutcome]:
        pool = self.pool
        if pool is None:
            try:
                pool = self.pool = self._connect()
            except (ValueError, OSError) as exc:  # settings checked them; a file changed since
                outcome = PushOutcome(
                    Verdict.CONFIG_ERROR, reason=type(exc).__name__, hint=self.credential_hint
                )
                return [outcome] * len(pushes)
        return await run_batch(
            pool,
            self._batch(pushes),
            [self._payload(push) for push in pushes],
            send_timeout_s=self.config.send_timeout_s,
            request_timeout_s=self.config.request_timeout_s,
        )

    async def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            await pool.close()
