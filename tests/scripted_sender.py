"""A scripted, in-process ProviderSender: the dispatcher's test seam.

`send` records every push it is given (so a test can judge each one at the moment it is
sent) and waits until the test answers it with `answer_next` / `answer_all`, or answers at
once when `auto` is set. Like httpx's MockTransport: a real implementation of the interface,
with the network replaced by the test's script.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from push.outcome import ProviderSender, Push, PushOutcome, Verdict
from storage.records import Provider


@dataclass
class PendingPush:
    push: Push
    answer: asyncio.Future[PushOutcome]


class ScriptedSender(ProviderSender):
    def __init__(
        self,
        provider: Provider,
        *,
        on_send: Callable[[Push], None] | None = None,
        max_in_flight: int = 100,
        batch_size: int = 1,
    ) -> None:
        self.provider = provider
        self.name = f"scripted-{provider.name}"
        self.max_in_flight = max_in_flight
        self.batch_size = batch_size
        self.pending: deque[PendingPush] = deque()
        self.sent: list[Push] = []
        self.accepted: list[Push] = []  # pushes answered ACCEPTED
        self.auto: PushOutcome | None = None
        self.sent_while_pending = 0  # pushes sent again while this sender still awaited them
        self._on_send = on_send

    async def send(self, pushes: list[Push]) -> list[PushOutcome]:
        loop = asyncio.get_running_loop()
        answers = []
        for push in pushes:
            if any(
                waiting.push.delivery_id == push.delivery_id and not waiting.answer.done()
                for waiting in self.pending
            ):
                self.sent_while_pending += 1
            if self._on_send is not None:
                self._on_send(push)
            self.sent.append(push)
            future: asyncio.Future[PushOutcome] = loop.create_future()
            if self.auto is not None:
                self._resolve(push, future, self.auto)
            else:
                self.pending.append(PendingPush(push, future))
            answers.append(future)
        return list(await asyncio.gather(*answers))

    def answer_next(self, outcome: PushOutcome) -> Push | None:
        """Answer the oldest push still waiting; returns it (None if none waits)."""
        while self.pending:
            pending = self.pending.popleft()
            if not pending.answer.done():
                self._resolve(pending.push, pending.answer, outcome)
                return pending.push
        return None

    def _resolve(
        self, push: Push, answer: asyncio.Future[PushOutcome], outcome: PushOutcome
    ) -> None:
        if outcome.verdict is Verdict.ACCEPTED:
            self.accepted.append(push)
        answer.set_result(outcome)

    def answer_all(self, outcome: PushOutcome) -> int:
        answered = 0
        while self.answer_next(outcome) is not None:
            answered += 1
        return answered

    def abandon(self) -> None:
        """The process died: nobody will ever hear these answers."""
        while self.pending:
            self.pending.popleft().answer.cancel()
