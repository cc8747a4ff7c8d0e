"""Soak: mixed load against a real relay process while the providers misbehave at random.

    python bench/soak.py [--minutes 30] [--rate 40] [--fault-rate 0.08] [--database-url URL]

Starts the fake APNs and FCM (sandbox/) in this process and a relay (`server.py`, its own
process, SQLite in a temporary directory unless --database-url) pointed at them, then for
--minutes sends, at about --rate requests a second from --threads client threads:

- registrations of new devices (APNs and FCM, some of them dead tokens the fakes answer
  410 / UNREGISTERED for), and second devices for existing Session IDs;
- closed-group subscriptions (groups of at most --group-size members, so the pushes a second
  stay near the requests a second, and the run measures faults, not this machine's capacity);
- notifies to Session IDs and to groups, each with data of its own;

over both onion paths (v2 in the Android, iOS and Desktop shapes, v4 in the Desktop, iOS and
libsession shapes) and both encryption types (AES-GCM, XChaCha20-Poly1305).

Meanwhile the fakes answer a --fault-rate share of pushes with a random fault (500, 503 with
Retry-After, 429 with Retry-After, GOAWAY, connection reset, an answer slower than the relay's
APNS_REQUEST_TIMEOUT, and for APNs ExpiredProviderToken and TooManyProviderTokenUpdates), and
every --outage-every seconds one provider goes down for a few seconds or drops every
connection. Then the faults stop and the relay is given --drain-minutes to deliver the rest.

It reports accepted notifies against pushes delivered (every device registered before a
notify was accepted must get it once the faults clear, dead tokens excepted), duplicates
(the same notify accepted twice by a provider for one device: at-least-once delivery after a
timeout or a lost connection), the relay's peak RSS, and error counts on every side. The exit
status is 0 only if nothing accepted was lost and the relay logged no traceback.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import itertools
import os
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.procs import fake_settings, start_relay_on_pipe
from lsrpc.client import V2_STYLES, V4_STYLES, OnionClient
from sandbox import script
from sandbox.apns import ApnsPush, FakeApns
from sandbox.fcm import FakeFcm, FcmPush
from sandbox.script import Behaviour, Scripts
from tests.test_faults import get, metric  # the fault tests' /metrics reader, shared

ENC_TYPES = ("aes-gcm", "xchacha20")
REQUEST_TIMEOUT_S = 5.0  # the relay's APNS_REQUEST_TIMEOUT during the soak
SLOW_S = 6.0  # a "slow" fault answers after this: past the timeout


# -- the providers' random faults ----------------------------------------------------------


def faults(provider: str) -> list[tuple[str, Behaviour]]:
    """The random faults a provider's fake answers with, by name (the names are reported)."""
    apns = provider == "apns"
    too_many = script.too_many_requests if apns else script.quota_exceeded
    kinds = [
        ("500", script.server_error()),
        ("503+retry-after", script.service_unavailable(retry_after=1)),
        ("429+retry-after", too_many(retry_after=1)),
        ("goaway" if apns else "closed without answer", script.goaway()),
        ("reset", script.drop()),
        ("slower than the timeout" if apns else "slow", script.slow(SLOW_S)),
    ]
    if apns:
        for status, reason in ((403, "ExpiredProviderToken"), (429, "TooManyProviderTokenUpdates")):
            kinds.append((reason, script.error(status, reason)))
    return kinds


class RandomFaults(Scripts):
    """Steady scripts (the dead tokens) first; every other push faults with `rate`."""

    def __init__(self, faults: list[tuple[str, Behaviour]], rate: float, seed: int) -> None:
        super().__init__()
        self.faults = faults
        self.rate = rate
        self.enabled = True
        self.injected: Counter[str] = Counter()
        self._random = random.Random(seed)  # a test schedule, not a secret
        self._faults_lock = threading.Lock()

    def next(self, token: str) -> Behaviour:
        steady = super().next(token)
        if steady is not self.default:
            return steady
        with self._faults_lock:
            if not self.enabled or self._random.random() >= self.rate:
                return self.default
            name, behaviour = self._random.choice(self.faults)
            self.injected[name] += 1
            return behaviour


@dataclass
class Received:
    """What one fake accepted (200) per (token, data), and how it answered overall."""

    accepted: Counter[tuple[str, str]] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, token: str, data: str | None, status: int) -> None:
        with self.lock:
            self.statuses[status] += 1
            if status == 200 and data is not None:
                self.accepted[(token, data)] += 1


def apns_listener(received: Received) -> Callable[[ApnsPush], None]:
    def listen(push: ApnsPush) -> None:
        data = None
        if push.status == 200:
            data = push.json().get("ENCRYPTED_DATA")
        received.add(push.token, data, push.status)

    return listen


def fcm_listener(received: Received) -> Callable[[FcmPush], None]:
    def listen(push: FcmPush) -> None:
        received.add(push.token, push.data.get("ENCRYPTED_DATA"), push.status)

    return listen


# -- the relay process ---------------------------------------------------------------------


class RelayProcess:
    def __init__(self, workdir: Path, env: dict[str, str], log_file: Path | None) -> None:
        self.log_file = log_file.open("w") if log_file is not None else None
        self.process, self.port, key = start_relay_on_pipe(workdir, env)
        self.client = OnionClient(bytes.fromhex(key))
        self.levels: Counter[str] = Counter()
        self.tracebacks = 0
        self.samples: Counter[str] = Counter()  # distinct WARNING/ERROR messages (timestamps cut)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.rss_samples_kb: list[int] = []

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if self.log_file is not None:
                self.log_file.write(line)
            if "Traceback" in line:
                self.tracebacks += 1
            found = re.match(r"\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)", line)
            if found:
                self.levels[found.group(1)] += 1
                if found.group(1) in ("WARNING", "ERROR", "CRITICAL"):
                    message = re.sub(r"\d+", "N", found.group(2))[:140]
                    self.samples[f"{found.group(1)} {message}"] += 1

    def memory_kb(self, field_name: str) -> int:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
        return 0

    def get(self, path: str) -> tuple[int, str]:
        return get(self.port, path)

    def stop(self) -> int:
        self.process.terminate()
        code = self.process.wait(60)
        self._reader.join(5)
        if self.log_file is not None:
            self.log_file.close()
        return code


# -- the load --------------------------------------------------------------------------------


@dataclass
class Device:
    token: str
    provider: str
    dead: bool


@dataclass
class World:
    """What the clients know is registered (answered), and what each notify must reach."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    devices: dict[str, list[Device]] = field(default_factory=dict)  # Session ID -> devices
    groups: dict[str, set[str]] = field(default_factory=dict)  # group -> member Session IDs
    expected: dict[str, frozenset[str]] = field(default_factory=dict)  # data -> live tokens
    dead_expected: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)


def session_id() -> str:
    return "05" + os.urandom(32).hex()


def new_token(provider: str) -> str:
    if provider == "apns":
        return os.urandom(32).hex()
    return (
        base64.urlsafe_b64encode(os.urandom(105)).decode().rstrip("=")
        + ":APA91b"
        + (base64.urlsafe_b64encode(os.urandom(15)).decode().rstrip("="))
    )


@dataclass
class Load:
    relay: RelayProcess
    apns: FakeApns
    fcm: FakeFcm
    world: World
    rng: random.Random
    dead_share: float
    group_size: int
    rng_lock: threading.Lock = field(default_factory=threading.Lock)
    counter: Iterator[int] = field(default_factory=itertools.count)
    local: threading.local = field(default_factory=threading.local)

    def choice(self, options: Any) -> Any:
        with self.rng_lock:
            return self.rng.choice(options)

    def chance(self, share: float) -> bool:
        with self.rng_lock:
            return self.rng.random() < share

    def connection(self) -> http.client.HTTPConnection:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", self.relay.port, timeout=60)
            self.local.connection = connection
        return connection

    def call(self, endpoint: str, params: dict[str, Any]) -> bool:
        """Send one request in a random shape; True if the relay answered success."""
        client = self.relay.client
        version = self.choice(("v2", "v4"))
        enc_type = self.choice(ENC_TYPES)
        if version == "v2":
            style = self.choice(V2_STYLES)
            request = client.v2(endpoint, params, style=style, enc_type=enc_type)
            path = "/loki/v2/lsrpc"
        else:
            style = self.choice(V4_STYLES)
            request = client.v4(endpoint, params, style=style, enc_type=enc_type)
            path = "/oxen/v4/lsrpc"
        self.world.sent[f"{version} {style} {enc_type}"] += 1
        try:
            connection = self.connection()
            connection.request("POST", path, body=request.body)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                self.world.errors[f"{endpoint}: HTTP {response.status}"] += 1
                return False
            if version == "v2":
                status, reply = request.open_v2_reply(body)
            else:
                meta, reply = request.open_v4_reply(body)
                status = int(str(meta["code"]))
        except (OSError, http.client.HTTPException) as exc:
            self.local.connection = None
            self.world.errors[f"{endpoint}: {type(exc).__name__}"] += 1
            return False
        except Exception as exc:  # noqa: BLE001 - a malformed reply: count it, go on
            self.world.errors[f"{endpoint}: reply {type(exc).__name__}"] += 1
            return False
        ok = status == 200 and reply.get("code") == 1
        self.world.answers[f"{endpoint} {status}"] += 1
        if not ok:
            self.world.errors[f"{endpoint}: status {status} {reply.get('message')}"] += 1
        return ok

    # -- actions ---------------------------------------------------------------------------
    def register(self, owner: str | None = None) -> None:
        provider = self.choice(("apns", "fcm"))
        token = new_token(provider)
        dead = self.chance(self.dead_share)
        if dead:
            fake = self.apns if provider == "apns" else self.fcm
            fake.scripts.set(token, script.unregistered())
        if owner is None:
            owner = session_id()
        device = "ios" if provider == "apns" else "android"
        if self.call("register", {"token": token, "pubKey": owner, "device": device}):
            with self.world.lock:
                self.world.devices.setdefault(owner, []).append(Device(token, provider, dead))

    def second_device(self) -> None:
        with self.world.lock:
            owners = list(self.world.devices)
        if owners:
            self.register(self.choice(owners))

    def subscribe(self) -> None:
        with self.world.lock:
            owners = list(self.world.devices)
            groups = [g for g, m in self.world.groups.items() if len(m) < self.group_size]
            if not groups:
                groups = [session_id()]
                self.world.groups[groups[0]] = set()
        if not owners:
            return
        group, member = self.choice(groups), self.choice(owners)
        if self.call("subscribe_closed_group", {"closedGroupPublicKey": group, "pubKey": member}):
            with self.world.lock:
                self.world.groups[group].add(member)

    def notify(self, to_group: bool) -> None:
        with self.world.lock:
            if to_group:
                candidates = [g for g, members in self.world.groups.items() if members]
            else:
                candidates = list(self.world.devices)
        if not candidates:
            return
        target = self.choice(candidates)
        data = base64.b64encode(next(self.counter).to_bytes(6, "big") + os.urandom(18)).decode()
        with self.world.lock:
            members = self.world.groups[target] if to_group else {target}
            devices = [d for m in members for d in self.world.devices.get(m, [])]
        if self.call("notify", {"send_to": target, "data": data}):
            with self.world.lock:
                self.world.expected[data] = frozenset(d.token for d in devices if not d.dead)
                self.world.dead_expected += sum(1 for d in devices if d.dead)

    def step(self) -> None:
        with self.rng_lock:
            roll = self.rng.random()
        if roll < 0.10:
            self.register()
        elif roll < 0.13:
            self.second_device()
        elif roll < 0.20:
            self.subscribe()
        elif roll < 0.75:
            self.notify(to_group=False)
        else:
            self.notify(to_group=True)


def run_load(load: Load, threads: int, rate: float, until: float) -> None:
    interval = threads / rate

    def worker(n: int) -> None:
        next_at = time.monotonic() + n * interval / threads
        while time.monotonic() < until:
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            next_at = max(next_at + interval, time.monotonic() - interval)
            load.step()

    pool = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def outages(
    apns: FakeApns, fcm: FakeFcm, every: float, until: float, *, log: Counter[str], seed: int
) -> None:
    rng = random.Random(seed)
    next_at = time.monotonic() + every
    while time.monotonic() < until:
        time.sleep(min(1.0, max(0.0, next_at - time.monotonic())))
        if time.monotonic() < next_at:
            continue
        next_at += every
        kind = rng.choice(("apns down", "fcm down", "apns goaway all", "apns reset all"))
        log[kind] += 1
        if kind == "apns down":
            apns.set_down(True, refuse=rng.random() < 0.5)
            time.sleep(rng.uniform(2, 8))
            apns.set_down(False)
        elif kind == "fcm down":
            fcm.set_down(True, refuse=rng.random() < 0.5)
            time.sleep(rng.uniform(2, 8))
            fcm.set_down(False)
        elif kind == "apns goaway all":
            apns.disconnect_all(graceful=True)
        else:
            apns.disconnect_all(graceful=False)


# -- the run --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--fault-rate", type=float, default=0.08)
    parser.add_argument("--dead-share", type=float, default=0.03)
    parser.add_argument("--group-size", type=int, default=10, help="members per group, at most")
    parser.add_argument("--outage-every", type=float, default=90.0, help="seconds")
    parser.add_argument("--drain-minutes", type=float, default=10.0)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--relay-log", type=Path, help="write the relay's log to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="soak-") as directory:
        workdir = Path(directory)
        apns = FakeApns.create(workdir / "apns")
        apns.scripts = apns_scripts = RandomFaults(faults("apns"), args.fault_rate, args.seed)
        fcm = FakeFcm.create(workdir / "fcm")
        fcm.scripts = fcm_scripts = RandomFaults(faults("fcm"), args.fault_rate, args.seed + 1)
        apns_received, fcm_received = Received(), Received()
        apns.pushes.listeners.append(apns_listener(apns_received))
        fcm.pushes.listeners.append(fcm_listener(fcm_received))
        apns.start()
        fcm.start()
        account = fcm.write_service_account(workdir / "service-account.json")
        env = {
            **fake_settings(apns, fcm, account.file),
            "PN_APNS_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S),
            "PN_PUSH_RETRY_BASE": "0.2",
            "PN_METRICS_PUBLIC": "true",
        }
        if args.database_url:
            env["PN_DATABASE_URL"] = args.database_url
        relay = RelayProcess(workdir, env, args.relay_log)
        world = World()
        world.groups = {session_id(): set() for _ in range(40)}
        load = Load(
            relay,
            apns,
            fcm,
            world,
            rng=random.Random(args.seed + 2),
            dead_share=args.dead_share,
            group_size=args.group_size,
        )
        outage_log: Counter[str] = Counter()
        started = time.monotonic()
        until = started + args.minutes * 60
        print(
            f"soak: {args.minutes:g} min at ~{args.rate:g} requests/s, faults on"
            f" {args.fault_rate:.0%} of pushes, an outage every {args.outage_every:g} s",
            flush=True,
        )
        stop_sampling = threading.Event()

        def sample() -> None:
            while not stop_sampling.wait(5):
                relay.rss_samples_kb.append(relay.memory_kb("VmRSS"))
                apns.pushes.clear()  # the listeners keep what counts
                fcm.pushes.clear()
                elapsed = time.monotonic() - started
                if len(relay.rss_samples_kb) % 12 == 0:
                    print(
                        f"  {elapsed / 60:5.1f} min: {len(world.expected)} notifies accepted,"
                        f" RSS {relay.rss_samples_kb[-1] / 1024:.0f} MB,"
                        f" client errors {sum(world.errors.values())}",
                        flush=True,
                    )

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        outage_thread = threading.Thread(
            target=outages,
            args=(apns, fcm, args.outage_every, until),
            kwargs={"log": outage_log, "seed": args.seed + 3},
            daemon=True,
        )
        outage_thread.start()
        run_load(load, args.threads, args.rate, until)
        outage_thread.join()
        load_seconds = time.monotonic() - started

        # The faults clear: every accepted notify must now arrive.
        apns_scripts.enabled = fcm_scripts.enabled = False
        apns.set_down(False)
        fcm.set_down(False)
        wanted = {(token, data) for data, tokens in world.expected.items() for token in tokens}

        def missing() -> set[tuple[str, str]]:
            with apns_received.lock, fcm_received.lock:
                have = set(apns_received.accepted) | set(fcm_received.accepted)
            return wanted - have

        drain_started = time.monotonic()
        drain_deadline = drain_started + args.drain_minutes * 60
        last_report = drain_started
        while missing() and time.monotonic() < drain_deadline:
            time.sleep(1)
            if time.monotonic() - last_report >= 60:
                last_report = time.monotonic()
                print(f"  draining: {len(missing())} deliveries still owed", flush=True)
        drain_seconds = time.monotonic() - drain_started
        # Let the relay settle what it sent, then read its own view.
        queue_depth = -1.0
        metrics = ""
        for _ in range(60):
            status, metrics = relay.get("/metrics")
            queue_depth = metric(metrics, "pn_relay_queue_depth")
            in_flight = metric(metrics, "pn_relay_pushes_in_flight")
            if status == 200 and queue_depth == 0 and in_flight == 0:
                break
            time.sleep(1)
        health = relay.get("/healthz")
        peak_kb = relay.memory_kb("VmHWM")
        end_kb = relay.memory_kb("VmRSS")
        stop_sampling.set()
        exit_code = relay.stop()
        apns.stop()
        fcm.stop()

    lost = missing()
    accepted_pairs = Counter(apns_received.accepted) + Counter(fcm_received.accepted)
    duplicates = sum(count - 1 for pair, count in accepted_pairs.items() if pair in wanted)
    extra = sum(1 for pair in accepted_pairs if pair not in wanted)
    delivered = len(wanted) - len(lost)
    share = 100.0 * delivered / len(wanted) if wanted else 100.0
    rss = relay.rss_samples_kb or [0]

    def results(provider: str) -> str:
        parts = []
        for line in metrics.splitlines():
            if line.startswith("pn_relay_push_results_total{") and f'provider="{provider}"' in line:
                labels, _, value = line.rpartition(" ")
                result = re.search(r'result="(\w+)"', labels)
                reason = re.search(r'reason="([^"]*)"', labels)
                if result and reason and float(value):
                    word = result.group(1) + (f" {reason.group(1)}" if reason.group(1) else "")
                    parts.append(f"{word}: {float(value):.0f}")
        return ", ".join(parts)

    print()
    print(f"load: {load_seconds / 60:.1f} min, requests by shape: {dict(world.sent)}")
    print(f"answers: {dict(sorted(world.answers.items()))}")
    print(f"client-side errors: {dict(world.errors) or 'none'}")
    print(
        f"notifies accepted: {len(world.expected)}; deliveries owed (device x notify, dead"
        f" tokens excepted): {len(wanted)}; owed to dead tokens: {world.dead_expected}"
    )
    print(
        f"delivered: {delivered} ({share:.3f} %), not delivered: {len(lost)} (still queued in"
        f" the relay at the end: {queue_depth:.0f}), duplicates: {duplicates},"
        f" accepted pushes for devices registered while the notify was in flight: {extra};"
        f" drain after the faults stopped: {drain_seconds:.0f} s"
    )
    print(f"faults injected: APNs {dict(apns_scripts.injected)}; FCM {dict(fcm_scripts.injected)}")
    print(f"outages: {dict(outage_log)}")
    print(f"fake APNs answers by status: {dict(apns_received.statuses)}")
    print(f"fake FCM answers by status: {dict(fcm_received.statuses)}")
    print(f"relay /metrics, APNs: {results('apns')}")
    print(f"relay /metrics, FCM: {results('fcm')}")
    database_errors = metric(metrics, "pn_relay_database_errors_total")
    pruned = metric(metrics, "pn_relay_events_total", event="tokens_pruned")
    print(
        f"relay /metrics: database errors {database_errors:.0f}, tokens pruned {pruned:.0f},"
        f" queue depth at the end {queue_depth:.0f}; /healthz {health[0]} {health[1].strip()}"
    )
    print(
        f"relay RSS: peak {peak_kb / 1024:.0f} MB (VmHWM), first sample {rss[0] / 1024:.0f} MB,"
        f" max sampled {max(rss) / 1024:.0f} MB, at the end {end_kb / 1024:.0f} MB"
    )
    print(f"relay log lines by level: {dict(relay.levels)}; tracebacks: {relay.tracebacks}")
    for message, count in relay.samples.most_common(15):
        print(f"  {count:6d} x {message}")
    print(f"relay exit status after SIGTERM: {exit_code}")
    ok = bool(wanted) and not lost and relay.tracebacks == 0 and exit_code == 0
    print("RESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
