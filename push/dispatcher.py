"""The dispatcher: turns queued deliveries into pushes, on the IOLoop.

One lane per provider, so a provider that is slow, down or misconfigured never delays the
other (a bulkhead). Each lane keeps up to `max_in_flight` pushes outstanding: it claims due
rows (leased, see storage/queue.py), sends them, and settles every answer through the
writer: accepted → row deleted; dead token → registration deleted (compare-and-set on the
APNs timestamp); configuration error → nothing deleted, the lane pauses and says which
setting to check; transient → retried with exponential backoff and jitter, honouring
Retry-After, until PUSH_MAX_AGE after the notify, then dropped and counted.

`wake()` may be called from any thread; a notify calls it, so a push starts without waiting
for a poll. Rows left from before a restart are picked up on start.

Leases (storage/queue.py): while a push is being sent, its lease is renewed every third of
`lease_ms`, so however slow the provider, no other dispatcher takes it over while this one
still waits for the answer; and if one is taken over anyway (this process stalled past its
lease), the answer that finally comes is stale and changes nothing. A claim that returns a
push this lane is still sending adopts the new lease instead of sending it twice.

Time: persisted times come from the relay clock (storage/clock.py, never jumps); pauses,
log intervals and renewal use the monotonic clock.

Answers that look like dead tokens but may be our configuration (each provider's
`suspect_reasons`, push/providers.py): APNs
`BadDeviceToken` is what Apple answers for *every* token when APNS_SANDBOX names the wrong
environment; `DeviceTokenNotForTopic` for every token when APNS_TOPIC is wrong; FCM
`SENDER_ID_MISMATCH` for every token when the service account belongs to another project. One
such answer alone says nothing about which it is, so the lane judges it by the answers it got
in the last `storm_window_s` (push/answer_window.py):
- a storm: at least `storm_min_answers` answers, more than half of them suspect and fewer than
  `storm_max_accepted_share` accepted. That is our configuration: the lane pauses (as for any
  configuration error), nothing is pruned, the push is retried after the pause, and the log
  says once, for the whole storm, which settings to check.
- healthy: at least `storm_min_answers` answers, at most half of them suspect. The
  configuration demonstrably works, so this token belongs to another app, build environment
  or Firebase project: it can never be delivered by this relay, and its registration is
  pruned like a dead token (a real user of our app registers a valid token at its next start).
  Only that push is dropped; the lane keeps running.
- otherwise (too few answers yet, or mostly suspect while pushes still get through): unsure.
  Nothing is pruned and the lane keeps running; the push is held back and tried again later
  (backing off from `config_pause_s`), until PUSH_MAX_AGE.
The accepted-share condition of a storm is what keeps an anonymous client from pausing
everyone's pushes: anyone may register made-up tokens and notify them, but cannot stop real
users' pushes from being accepted, while a wrong configuration gets (nearly) nothing accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from push.answer_window import Answer, AnswerWindow, WindowCounts
from push.outcome import ProviderSender, Push, PushOutcome, Verdict
from push.providers import LaneEvent, provider_info
from settings import Settings
from stats.counters import Counters
from storage.clock import RelayClock
from storage.protect import IdentifierProtector, SealedTokenError
from storage.queue import NEVER, ClaimedDelivery, DeliveryQueue, Settlement
from storage.records import Provider
from storage.writer import BatchWriter, StorageError

log = logging.getLogger(__name__)

TRANSIENT_LOG_INTERVAL_S = 60.0

SUSPECT_VERDICTS = (Verdict.DEAD_TOKEN, Verdict.CONFIG_ERROR)
# A configuration error is not mended within one retry's delay (someone has to edit a
# setting): the first pause is this many PUSH_RETRY_BASEs (at least 30 s), doubling from there.
CONFIG_PAUSE_RETRIES = 30
# A settlement of more results than this is written on the writer thread (see BatchWriter
# `submit_on_loop`): a round of a large group's answers never holds the loop.
SMALL_SETTLEMENT = 8


@dataclass(frozen=True)
class DispatchSettings:
    lease_ms: int = 60_000
    max_age_ms: int = 3_600_000
    claim_batch: int = 500
    idle_poll_s: float = 2.0
    # a lane that found nothing more to send waits this long, once woken, before it claims
    # (PUSH_GATHER): the notifies of that moment are claimed, sent and settled together
    gather_s: float = 0.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0
    config_pause_s: float = 30.0
    config_pause_cap_s: float = 600.0
    # suspect answers (SUSPECT_REASONS): a storm is more than half of at least
    # `storm_min_answers` answers within `storm_window_s`, with fewer than
    # `storm_max_accepted_share` of them accepted
    storm_window_s: float = 60.0
    storm_min_answers: int = 20
    storm_max_accepted_share: float = 0.1

    @classmethod
    def from_settings(cls, settings: Settings) -> DispatchSettings:
        """The lanes' timing from the operator's settings (seconds there, ms for leases)."""
        return cls(
            lease_ms=int(settings.DELIVERY_LEASE * 1000),
            max_age_ms=int(settings.PUSH_MAX_AGE * 1000),
            backoff_base_s=settings.PUSH_RETRY_BASE,
            config_pause_s=max(settings.PUSH_RETRY_BASE, 1.0) * CONFIG_PAUSE_RETRIES,
            gather_s=settings.PUSH_GATHER,
        )


LatencyObserver = Callable[[Provider, float], None]


class Clock(Protocol):
    def now_ms(self) -> int: ...

    def monotonic_s(self) -> float: ...


class ProviderLane:
    def __init__(
        self,
        provider: Provider,
        sender: ProviderSender | None,
        *,
        writer: BatchWriter,
        queue: DeliveryQueue,
        protector: IdentifierProtector,
        counters: Counters,
        settings: DispatchSettings,
        observe_latency: LatencyObserver | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.provider = provider
        info = provider_info(provider)
        self.name = info.name
        self._sender = sender
        self._writer = writer
        self._queue = queue
        self._protector = protector
        self._counters = counters
        self._ok_counter, self._failed_counter = info.sent_counter, info.failed_counter
        self._settings = settings
        self._observe_latency = observe_latency
        self._clock: Clock = clock or RelayClock()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        self.max_in_flight = sender.max_in_flight if sender else settings.claim_batch
        self.in_flight = 0
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._paused_until_s = 0.0  # monotonic
        self._pause_s = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._settling: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._transient_logged_at: float | None = None
        self._transient_unlogged = 0
        self._answers = AnswerWindow(settings.storm_window_s, self._clock.monotonic_s)
        self._storm_logged = False  # this storm of suspect answers was logged
        self._held_logged_at: float | None = None
        self._held_unlogged = 0
        self._storm_counter = info.lane_counter(LaneEvent.CONFIG_STORM)
        # this provider's answers that mean "not our token" or "our configuration is wrong",
        # told apart by how many answers say the same, and the settings to check
        self._suspect_reasons = info.suspect_reasons
        self._held_counter = info.lane_counter(LaneEvent.SUSPECT_HELD)
        # The pushes being sent, by delivery id, with the lease this lane holds on each now.
        self._sending: dict[int, ClaimedDelivery] = {}
        # Results of pushes that finished in the same loop iteration, written as one operation.
        self._unsettled = Settlement()
        self._flush_scheduled = False
        self._idle = True  # the last claim found fewer than it asked for

    # -- the feeding loop ----------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    @property
    def paused(self) -> bool:
        """A configuration error paused this lane (for /healthz)."""
        return self._paused_until_s > self._clock.monotonic_s()

    async def run(self) -> None:
        renewer = asyncio.ensure_future(self._renew_forever())
        try:
            while not self._stopping:
                try:
                    await self._step()
                except StorageError as exc:
                    log.error("%s dispatcher: database unavailable (%s); retrying", self.name, exc)
                    await self._sleep_or_wake(1.0)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _step(self) -> None:
        pause_left = self._paused_until_s - self._clock.monotonic_s()
        if pause_left > 0:
            await asyncio.sleep(pause_left)
            return
        free = self.max_in_flight - self.in_flight
        if free <= 0:
            self._slot_freed.clear()
            await self._slot_freed.wait()
            return
        if self._idle and self._settings.gather_s > 0:
            await asyncio.sleep(self._settings.gather_s)  # let this moment's notifies join
        self._wake.clear()
        size = min(self._settings.claim_batch, free)
        claimed, next_due = await self._claim(size, with_next_due=True)
        self._idle = claimed < size
        if claimed >= size:
            return  # there may be more due already
        # Fewer than asked for: nothing else was due at the claim, and the same transaction
        # said when the next row will be (one write transaction per wake-up, not three: a
        # claim, an empty claim and this query). A notify committed since sets `_wake`.
        now = self._clock.now_ms()
        timeout = self._settings.idle_poll_s
        if next_due is not None:
            timeout = min(timeout, max(0.005, (next_due - now) / 1000))
        await self._sleep_or_wake(timeout)

    async def claim_once(self, limit: int | None = None) -> int:
        """Claim due pushes (up to `limit`) and start sending them; returns how many claimed."""
        size = self._settings.claim_batch
        if limit is not None:
            size = min(size, limit)
        claimed, _ = await self._claim(size, with_next_due=False)
        return claimed

    async def _claim(self, size: int, *, with_next_due: bool) -> tuple[int, int | None]:
        """Claim up to `size` due pushes and start sending them: (how many claimed, and, if
        `with_next_due` and fewer than `size`, when the next row falls due, read in the same
        transaction)."""
        now = self._clock.now_ms()
        claim_op = self._queue.claim_op(
            self.provider, size, now, self._settings.lease_ms, with_next_due=with_next_due
        )
        # A claim may take hundreds of rows: on the writer thread, never holding the loop.
        claim = await self._writer.submit_on_loop(
            claim_op, asyncio.get_running_loop(), on_thread=True
        )
        if claim.dropped_unregistered:
            self._counters.incr("pushes_dropped_unregistered", claim.dropped_unregistered)
        if claim.deliveries:
            self._launch(claim.deliveries, now)
        return len(claim.deliveries) + claim.dropped_unregistered, claim.next_due

    async def _renew_forever(self) -> None:
        interval = max(0.05, self._settings.lease_ms / 3000)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew_leases()
            except StorageError as exc:
                log.error("%s: leases could not be renewed (%s)", self.name, exc)

    async def renew_leases(self) -> int:
        """Extend the lease of every push still being sent; returns how many were extended."""
        if not self._sending:
            return 0
        held = [(d.delivery_id, d.lease_token) for d in self._sending.values()]
        lease_until = self._clock.now_ms() + self._settings.lease_ms
        renew = self._queue.renew_op(held, lease_until)
        renewed: int = await self._writer.submit_on_loop(
            renew, asyncio.get_running_loop(), on_thread=True
        )
        return renewed

    async def _sleep_or_wake(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _launch(self, claimed: list[ClaimedDelivery], now: int) -> None:
        immediate = Settlement()
        pushes: list[tuple[ClaimedDelivery, Push]] = []
        expiration_s = 0
        for delivery in claimed:
            if delivery.delivery_id in self._sending:
                # Still being sent here (the lease ran out while we waited): keep the new lease
                # for the answer to come, rather than sending the push a second time.
                self._sending[delivery.delivery_id] = delivery
                continue
            if self._sender is None or now - delivery.created_at > self._settings.max_age_ms:
                self._counters.incr(self._failed_counter)
                immediate.done.append(delivery)
                continue
            try:
                token = self._protector.open_token(delivery.token_sealed)
            except SealedTokenError:
                log.error("a stored %s token does not open with TOKEN_KEY_FILE; dropped", self.name)
                self._counters.incr(self._failed_counter)
                immediate.done.append(delivery)
                continue
            expiration_s = (delivery.created_at + self._settings.max_age_ms) // 1000
            push = Push(
                delivery_id=delivery.delivery_id,
                provider=self.provider,
                token=token,
                data=delivery.data,
                apns_id=delivery.apns_id,
                expiration_s=expiration_s,
            )
            pushes.append((delivery, push))
        if immediate:
            self._spawn_settle(immediate)
        if not pushes or self._sender is None:
            return
        for delivery, _ in pushes:
            self._sending[delivery.delivery_id] = delivery
        size = max(1, self._sender.batch_size)
        for start in range(0, len(pushes), size):
            chunk = pushes[start : start + size]
            self.in_flight += len(chunk)
            self._spawn(self._send(self._sender, chunk))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _spawn_settle(self, settlement: Settlement) -> None:
        task = self._spawn(self._settle(settlement))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def quiesce(self) -> None:
        """Wait until every answer received so far is written (pushes may still be in flight)."""
        while self._flush_scheduled or self._settling:
            if self._settling:
                await asyncio.wait(set(self._settling))
            else:
                await asyncio.sleep(0)

    # -- sending and judging ------------------------------------------------------------

    async def _send(
        self, sender: ProviderSender, chunk: list[tuple[ClaimedDelivery, Push]]
    ) -> None:
        try:
            outcomes = await sender.send([push for _, push in chunk])
        except Exception as exc:  # noqa: BLE001 - a sender bug must not lose the pushes
            log.error("%s sender failed: %s", self.name, type(exc).__name__)
            outcomes = [PushOutcome.transient(type(exc).__name__)] * len(chunk)
        finally:
            self.in_flight -= len(chunk)
            self._slot_freed.set()
        now = self._clock.now_ms()
        for (sent, _), outcome in zip(chunk, outcomes, strict=True):
            # The lease held now: a re-claim while this send ran may have replaced it.
            delivery = self._sending.pop(sent.delivery_id, sent)
            self._judge(delivery, outcome, self._unsettled, now)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write every result gathered since the last flush in one writer operation."""
        self._flush_scheduled = False
        settlement, self._unsettled = self._unsettled, Settlement()
        self._spawn_settle(settlement)

    def _judge(
        self, delivery: ClaimedDelivery, outcome: PushOutcome, settlement: Settlement, now: int
    ) -> None:
        counters = self._counters
        if outcome.trimmed:
            counters.incr("payload_trimmed_number")
        verdict = outcome.verdict
        if verdict is Verdict.ACCEPTED:
            self._answers.add(Answer.ACCEPTED)
            counters.incr(self._ok_counter)
            settlement.done.append(delivery)
            if self._observe_latency is not None:
                self._observe_latency(self.provider, max(0.0, (now - delivery.created_at) / 1000))
            return
        counters.incr(self._failed_counter)
        if verdict in SUSPECT_VERDICTS and outcome.reason in self._suspect_reasons:
            self._judge_suspect(delivery, outcome, settlement, now)
            return
        if verdict is not Verdict.TRANSIENT:  # a transient answer says nothing about the token
            self._answers.add(Answer.OTHER)
        if verdict is Verdict.DEAD_TOKEN:
            invalid_since = outcome.invalid_since_ms if outcome.invalid_since_ms else NEVER
            settlement.dead_tokens.append((delivery, invalid_since))
        elif verdict is Verdict.REJECTED:
            log.warning("%s refused a push for good (%s); dropped", self.name, outcome.reason)
            settlement.done.append(delivery)
        elif verdict is Verdict.CONFIG_ERROR:
            self._pause(outcome)
            retry_at = now + int(max(0.0, self._paused_until_s - self._clock.monotonic_s()) * 1000)
            settlement.retry.append((delivery, retry_at))
        else:
            self._note_transient(outcome)
            delay_ms = self._backoff_ms(delivery.attempts + 1, outcome.retry_after)
            self._retry_or_drop(delivery, outcome, settlement, now, delay_ms)

    def _retry_or_drop(
        self,
        delivery: ClaimedDelivery,
        outcome: PushOutcome,
        settlement: Settlement,
        now: int,
        delay_ms: int,
    ) -> None:
        if now + delay_ms - delivery.created_at > self._settings.max_age_ms:
            log.warning(
                "%s push dropped after %d attempts within PUSH_MAX_AGE (last: %s)",
                self.name,
                delivery.attempts + 1,
                outcome.reason,
            )
            settlement.done.append(delivery)
        else:
            settlement.retry.append((delivery, now + delay_ms))

    def _judge_suspect(
        self, delivery: ClaimedDelivery, outcome: PushOutcome, settlement: Settlement, now: int
    ) -> None:
        """A token-or-configuration answer, judged by the lane's recent answers (see the
        module docstring): storm → pause; healthy → this token is not ours; else hold back."""
        counts = self._answers.add(Answer.SUSPECT)
        settings = self._settings
        hint = self._suspect_reasons[outcome.reason]
        enough = counts.total >= settings.storm_min_answers
        mostly_suspect = 2 * counts.suspect > counts.total
        if enough and not mostly_suspect:
            # The configuration works for most tokens: this one belongs to another app, build
            # environment or Firebase project, and can never be delivered from here.
            self._storm_logged = False
            settlement.dead_tokens.append((delivery, outcome.invalid_since_ms or NEVER))
            return
        if enough and counts.accepted < settings.storm_max_accepted_share * counts.total:
            self._config_storm(outcome, hint, counts)
            remaining_s = max(0.0, self._paused_until_s - self._clock.monotonic_s())
            settlement.retry.append((delivery, now + int(remaining_s * 1000)))
            return
        self._counters.incr(self._held_counter)
        self._note_held(outcome, hint, counts)
        base = settings.config_pause_s
        delay_s = min(settings.config_pause_cap_s, base * 2**delivery.attempts)
        delay_ms = int(delay_s * self._rng.uniform(0.5, 1.5) * 1000)
        self._retry_or_drop(delivery, outcome, settlement, now, delay_ms)

    def _config_storm(self, outcome: PushOutcome, hint: str, counts: WindowCounts) -> None:
        if self.paused:
            return
        self._counters.incr(self._storm_counter)
        # Said once (below) for the whole storm, not at each pause it causes.
        self._pause(dataclasses.replace(outcome, hint=hint), level=logging.DEBUG)
        if self._storm_logged:
            return
        self._storm_logged = True
        log.error(
            "%s: %d of the last %d answers within %.0f s were %s (and %d accepted): that is"
            " our configuration, not the tokens. Check %s. Pausing %s pushes for %.0f s,"
            " doubling while it lasts; nothing is deleted, the pushes wait.",
            self.name,
            counts.suspect,
            counts.total,
            self._settings.storm_window_s,
            outcome.reason,
            counts.accepted,
            hint,
            self.name,
            self._pause_s,
        )

    def _note_held(self, outcome: PushOutcome, hint: str, counts: WindowCounts) -> None:
        """One warning a minute at most about suspect answers held back unjudged."""
        self._held_unlogged += 1
        now = self._clock.monotonic_s()
        last = self._held_logged_at
        if last is None or now - last >= TRANSIENT_LOG_INTERVAL_S:
            log.warning(
                "%s: %d push(es) answered %s held back: %d of the last %d answers are alike,"
                " too few to tell tokens of another app or environment from a wrong %s;"
                " nothing deleted, retried later",
                self.name,
                self._held_unlogged,
                outcome.reason,
                counts.suspect,
                counts.total,
                hint,
            )
            self._held_logged_at = now
            self._held_unlogged = 0

    def _note_transient(self, outcome: PushOutcome) -> None:
        """One warning a minute at most, however many pushes fail while a provider is down."""
        self._transient_unlogged += 1
        now = self._clock.monotonic_s()
        last = self._transient_logged_at
        if last is None or now - last >= TRANSIENT_LOG_INTERVAL_S:
            log.warning(
                "%s: %d push(es) failed for now (latest: %s); retrying with backoff",
                self.name,
                self._transient_unlogged,
                outcome.reason,
            )
            self._transient_logged_at = now
            self._transient_unlogged = 0

    def _backoff_ms(self, attempt: int, retry_after: float | None) -> int:
        settings = self._settings
        delay = min(settings.backoff_cap_s, settings.backoff_base_s * 2 ** (attempt - 1))
        delay *= self._rng.uniform(0.5, 1.5)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return int(delay * 1000)

    def _pause(self, outcome: PushOutcome, *, level: int = logging.ERROR) -> None:
        now = self._clock.monotonic_s()
        if self._paused_until_s > now:
            return  # already paused: say it once
        settings = self._settings
        self._pause_s = min(
            settings.config_pause_cap_s, max(settings.config_pause_s, self._pause_s * 2)
        )
        self._paused_until_s = now + self._pause_s
        log.log(
            level,
            "%s refused our configuration (%s): check %s. Pausing %s pushes for %.0f s;"
            " nothing is deleted.",
            self.name,
            outcome.reason or "unknown reason",
            outcome.hint or "the provider settings",
            self.name,
            self._pause_s,
        )

    async def _settle(self, settlement: Settlement) -> None:
        if not settlement:
            return
        loop = asyncio.get_running_loop()
        try:
            result = await self._writer.submit_on_loop(
                self._queue.settle_op(settlement),
                loop,
                on_thread=settlement.size() > SMALL_SETTLEMENT,
            )
        except StorageError as exc:
            # The leases run out and the pushes go again: at-least-once, nothing lost.
            log.error("%s results could not be written (%s); they will be retried", self.name, exc)
            return
        if result.pruned:
            self._counters.incr("tokens_pruned", result.pruned)
        if result.stale:
            self._counters.incr("stale_results", result.stale)
        if settlement.retry:
            self._wake.set()  # a retry may now be due sooner than the lane's idle sleep
        provider_answered = bool(settlement.done or settlement.dead_tokens)
        if provider_answered and self._pause_s and not self.paused:
            self._pause_s = 0.0  # the provider works again
            self._storm_logged = False

    # -- lifecycle ----------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        """Stop claiming; give the pushes in flight `timeout` seconds to finish and settle."""
        self._stopping = True
        self._wake.set()
        self._slot_freed.set()
        # Answers arriving meanwhile start settle tasks of their own: wait for those too.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._tasks), timeout=left)
            await asyncio.sleep(0)  # let a finished send's flush spawn its settle task
        for task in set(self._tasks):
            task.cancel()
        if self._sender is not None:
            await self._sender.close()


class Dispatcher:
    def __init__(self, lanes: list[ProviderLane]) -> None:
        self.lanes = lanes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._runners: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._runners = [
            asyncio.create_task(lane.run(), name=f"lane-{lane.name}") for lane in self.lanes
        ]

    def alive(self) -> bool:
        return bool(self._runners) and all(not task.done() for task in self._runners)

    def wake(self) -> None:
        """New deliveries were queued: from any thread."""
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._wake_lanes()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(self._wake_lanes)

    def _wake_lanes(self) -> None:
        for lane in self.lanes:
            lane.wake()

    async def stop(self, timeout: float = 10.0) -> None:
        await asyncio.gather(*(lane.drain(timeout) for lane in self.lanes))
        for task in self._runners:
            task.cancel()
        for task in self._runners:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._runners = []
