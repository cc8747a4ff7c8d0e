"""The long fuzz run (outside CI): a million cases and more against the parsers and a relay.

    python bench/fuzz_long.py parsers --runs 1000000     # atheris (libFuzzer), coverage-guided
    python bench/fuzz_long.py live --cases 200000        # hypothesis, against server.py
    python bench/fuzz_long.py all                        # both, with those defaults

`parsers` runs every parser a client's bytes reach, in one libFuzzer target instrumented for
coverage (atheris, `pip install -r bench/requirements-fuzz.txt`): the outer frame, opening
a sealed request, the v2 request and its params, the v4 request, the bencode reader, each
endpoint's handler (validation and routing) on JSON parameters, the statistics body, the Basic
authorization header and the onion-path alias check. The first byte of an input picks the
parser. A parser raising anything but its own error type is a finding: libFuzzer stops and
writes the input to `crash-*` in the working directory. It starts from a corpus of valid
inputs (sealed requests of every client shape, bencoded v4 requests, each endpoint's params).

`live` starts a relay (`server.py`, its own process, SQLite in a temporary directory) and
sends it hypothesis-generated cases, the strategies of tests/test_fuzz_parsers.py and
tests/test_fuzz_live.py with a large budget: raw bodies on both onion paths, sealed v2 and
v4 plaintexts (any JSON, any bencode), each endpoint's near-valid parameters over v2 and v4
and both encryption types, the statistics body with valid credentials, any Authorization
header, any method, path and body elsewhere. A finding is an answer of 500 or above, a
traceback in an answer, or any ERROR line or traceback in the relay's log.

Prints the cases run, the time, and the findings; exit status 1 if there were any.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import importlib
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

USER, PASSWORD = "stats", "fuzz-password"
PARSER_TARGETS = 10  # the length of parser_targets(): a seed's first byte picks one
LIVE_CHUNK = 10_000  # hypothesis examples per run: its memory of what it tried stays small


# -- parsers: the atheris worker ----------------------------------------------------------------


def parser_targets() -> list[tuple[str, Callable[[bytes], None]]]:
    """(name, run) pairs; each `run` lets only its parser's own error type through."""
    atheris: Any = importlib.import_module("atheris")
    with atheris.instrument_imports(include=["lsrpc", "handlers", "stats", "storage"]):
        from handlers.endpoints import ENDPOINTS, HandlerContext, handle
        from lsrpc import bencode, v2, v4
        from lsrpc.framing import FramingError, open_request, parse_outer
        from lsrpc.keys import ServerKeypair
        from lsrpc.paths import is_onion_alias
        from stats.auth import parse_basic_authorization
        from stats.counters import Counters
        from stats.query import BadRequest, parse_query, read_json_object
        from storage.engine import create_schema, make_engine
        from storage.protect import IdentifierProtector
        from storage.store import RelayStore
        from storage.writer import BatchWriter
        from web.onion import parse_v2, parse_v4

    keypair = ServerKeypair.from_private_bytes(bytes(range(1, 33)))
    directory = Path(tempfile.mkdtemp(prefix="fuzz-parsers-"))
    engine = make_engine(f"sqlite:///{directory / 'relay.sqlite3'}", pool_size=1)
    create_schema(engine)
    protector = IdentifierProtector(bytes(32), bytes(range(32)))
    store = RelayStore(engine, BatchWriter(engine), protector, lambda: 0)
    context = HandlerContext(store, Counters(), 8192, 600_000, lambda: None)
    endpoint_names = list(ENDPOINTS)  # a seed's second byte picks one (seed_corpus)

    def quietly(run: Callable[[bytes], object], *allowed: type[BaseException]) -> Any:
        def target(data: bytes) -> None:
            with contextlib.suppress(*allowed):
                run(data)

        return target

    def endpoint_call(data: bytes) -> None:
        if not data:
            return
        endpoint = endpoint_names[data[0] % len(endpoint_names)]
        try:
            params = json.loads(data[1:])
        except (ValueError, RecursionError):
            return
        if isinstance(params, dict):
            handle(context, endpoint, params)  # a Reply or a Pending; never raises

    def statistics_query(data: bytes) -> None:
        parse_query(read_json_object(data), now_ms=1_620_000_000_000)

    def text(run: Callable[[str], object]) -> Callable[[bytes], None]:
        return lambda data: (run(data.decode("utf-8", "replace")), None)[1]

    targets = [
        ("outer frame", quietly(parse_outer, FramingError)),
        ("open a sealed request", quietly(lambda d: open_request(d, keypair), FramingError)),
        ("v2 request", quietly(parse_v2, v2.V2RequestError)),
        ("v2 params", quietly(v2.parse_params, v2.V2RequestError)),
        ("v4 request", quietly(parse_v4, v4.V4FramingError, v2.V2RequestError)),
        ("bencode", quietly(bencode.decode, bencode.BencodeError)),
        ("endpoint params", endpoint_call),
        ("statistics body", quietly(statistics_query, BadRequest)),
        ("basic authorization", text(parse_basic_authorization)),
        ("onion path alias", text(is_onion_alias)),
    ]
    assert len(targets) == PARSER_TARGETS
    return targets


def seed_corpus(directory: Path) -> None:
    """Valid inputs for each target (its index as the first byte), to mutate from."""
    from handlers.endpoints import ENDPOINTS
    from lsrpc.client import V2_STYLES, V4_STYLES, OnionClient, v2_plaintext, v4_plaintext
    from lsrpc.framing import build_outer
    from lsrpc.keys import ServerKeypair

    keypair = ServerKeypair.from_private_bytes(bytes(range(1, 33)))
    client = OnionClient(keypair.public_bytes)
    session, token = "05" + "ab" * 32, "cd" * 32
    params: dict[str, dict[str, Any]] = {
        "register": {"token": token, "pubKey": session, "device": "ios"},
        "register_legacy_groups_only": {
            "token": token,
            "pubKey": session,
            "legacyGroupPublicKeys": [session],
        },
        "unregister": {"token": token},
        "subscribe_closed_group": {"closedGroupPublicKey": session, "pubKey": session},
        "unsubscribe_closed_group": {"closedGroupPublicKey": session, "pubKey": session},
        "notify": {"send_to": session, "data": base64.b64encode(b"hello").decode()},
    }
    seeds: list[tuple[int, bytes]] = []
    for n, (endpoint, values) in enumerate(params.items()):
        v2_style, v4_style = V2_STYLES[n % 3], V4_STYLES[n % 3]
        seeds += [
            (0, build_outer(b"\0" * 40, b"\1" * 32, "aes-gcm")),
            (1, client.v2(endpoint, values, style=v2_style).body),
            (1, client.v4(endpoint, values, style=v4_style).body),
            (2, v2_plaintext(endpoint, values, v2_style)),
            (3, json.dumps(values).encode()),
            (4, v4_plaintext(endpoint, values, v4_style)),
            (5, v4_plaintext(endpoint, values, v4_style)),
            (6, bytes([list(ENDPOINTS).index(endpoint)]) + json.dumps(values).encode()),
        ]
    seeds += [
        (7, b'{"start_date":"2021-05-04 03:40:00","end_date":"2021-05-05","ios_pn_number":1}'),
        (8, b"Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode())),
        (9, b"/loki/v2/%6Csrpc"),
    ]
    directory.mkdir(parents=True, exist_ok=True)
    for n, (target, data) in enumerate(seeds):
        (directory / f"seed-{n:03d}").write_bytes(bytes([target]) + data)


def atheris_worker(argv: list[str]) -> None:
    atheris: Any = importlib.import_module("atheris")
    targets = parser_targets()
    counts: Counter[str] = Counter()

    seen = [0]

    def one_input(data: bytes) -> None:
        seen[0] += 1
        if seen[0] % 100_000 == 0:  # libFuzzer ends with exit(): no atexit report
            print(f"cases per parser: {dict(counts)}", file=sys.stderr, flush=True)
        if not data:
            return
        name, run = targets[data[0] % len(targets)]
        counts[name] += 1
        run(data[1:])

    atheris.Setup([sys.argv[0], *argv], one_input)
    atheris.Fuzz()


def run_parsers(runs: int, workdir: Path, seed: int) -> tuple[int, float, list[str]]:
    try:
        importlib.import_module("atheris")
    except ImportError:
        sys.exit("atheris is not installed: pip install -r bench/requirements-fuzz.txt")
    corpus = workdir / "corpus"
    seed_corpus(corpus)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "_atheris-worker",
        f"-runs={runs}",
        "-max_len=4096",
        f"-seed={seed}",
        "-timeout=10",
        "-rss_limit_mb=4096",
        "-print_final_stats=1",
        str(corpus),
    ]
    print("parsers:", " ".join(command[1:]), flush=True)
    started = time.monotonic()
    process = subprocess.run(command, cwd=workdir, stderr=subprocess.PIPE, text=True, check=False)
    elapsed = time.monotonic() - started
    log = process.stderr
    (workdir / "parsers.log").write_text(log)
    done = re.search(r"Done (\d+) runs in (\d+) second", log)
    findings = [line for line in log.splitlines() if "ERROR" in line or "Uncaught" in line]
    findings += [f"crash input: {p}" for p in sorted(workdir.glob("crash-*"))]
    if process.returncode != 0 and not findings:
        findings.append(f"libFuzzer exited with {process.returncode}")
    per_parser = [line for line in log.splitlines() if line.startswith("cases per parser")]
    for line in [*per_parser[-1:], *log.splitlines()]:
        if "DONE" in line or line.startswith(("cases per parser", "stat::")):
            print("  " + line)
    return (int(done.group(1)) if done else 0), elapsed, findings


# -- live: hypothesis against a relay process -----------------------------------------------


class RelayProcess:
    def __init__(self, workdir: Path) -> None:
        # (imported here: the atheris worker must import the relay's modules first, instrumented)
        from bench.procs import start_relay_on_pipe

        settings = {
            "PN_STATS_USERNAME": USER,
            "PN_STATS_PASSWORD": PASSWORD,
            "PN_STATS_AUTH_FAILURES_PER_MINUTE": "100000",
        }
        self.process, self.port, key = start_relay_on_pipe(workdir, settings)
        self.public_key = bytes.fromhex(key)
        self.errors: list[str] = []
        self.lines = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._local = threading.local()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines += 1
            if " ERROR " in line or "Traceback" in line or " CRITICAL " in line:
                self.errors.append(line.rstrip())

    def request(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        for attempt in (1, 2):
            connection = getattr(self._local, "connection", None)
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                self._local.connection = connection
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.status, response.read()
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
                    self._local.connection = None
                return answer
            except (OSError, http.client.HTTPException):
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    if self.process.poll() is not None:
                        raise
                    return 0, b""  # closed without an answer (the relay still runs)
        raise AssertionError("unreachable")

    def stop(self) -> int:
        self.process.terminate()
        code = self.process.wait(60)
        self._reader.join(5)
        return code


def has_control(header: str) -> bool:
    """A control character (tab aside) that HTTP forbids in a header value."""
    return any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in header)


def run_live(cases: int, workdir: Path, seed: int) -> tuple[int, float, list[str]]:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    from handlers.endpoints import ENDPOINTS
    from lsrpc.client import OnionClient
    from tests import strategies
    from tests import test_fuzz_live as live_tests

    relay = RelayProcess(workdir)
    client = OnionClient(relay.public_key)
    credentials = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    counts: Counter[str] = Counter()
    findings: list[str] = []
    enc_types = st.sampled_from(["aes-gcm", "xchacha20"])

    def check(kind: str, status: int, body: bytes, *, may_close: bool = False) -> None:
        counts[kind] += 1
        if status == 0 and may_close:
            # Tornado refuses a header with control characters by closing the connection
            # after a bare 400; with a request body still unread the close is a reset, which
            # can reach the client before the 400 does. A refusal either way.
            counts["closed: control character in a header"] += 1
            return
        if status == 0 or status >= 500 or b"Traceback" in body:
            finding = f"{kind}: HTTP {status} {body[:120]!r}"
            findings.append(finding)
            raise AssertionError(finding)

    def onion(kind: str, path: str, sealed: Any) -> None:
        status, body = relay.request("POST", path, sealed.body, {})
        check(kind, status, body)
        if status == 200:  # and the answer opens, as the client would read it
            if path.startswith("/loki"):
                sealed.open_v2_reply(body)
            else:
                sealed.open_v4_reply(body)

    def raw(body: bytes, path: str) -> None:
        check("raw body", *relay.request("POST", path, body, {}))

    def v2_plain(plaintext: bytes, enc: str) -> None:
        onion("v2 plaintext", "/loki/v2/lsrpc", client.seal(plaintext, enc))

    def v4_plain(plaintext: bytes, enc: str) -> None:
        onion("v4 plaintext", "/oxen/v4/lsrpc", client.seal(plaintext, enc))

    def endpoint(call: tuple[str, dict[str, Any]], version: str, enc: str) -> None:
        name, values = call
        if version == "v2":
            onion("endpoint params v2", "/loki/v2/lsrpc", client.v2(name, values, enc_type=enc))
        else:
            onion("endpoint params v4", "/oxen/v4/lsrpc", client.v4(name, values, enc_type=enc))

    def random_params(name: str, values: dict[str, Any], version: str) -> None:
        endpoint((name, values), version, "aes-gcm")

    def statistics(body: bytes) -> None:
        headers = {"Authorization": credentials, "Content-Type": "application/json"}
        check("statistics body", *relay.request("POST", "/get_statistics_data", body, headers))

    def authorization(header: str, path: str) -> None:
        header = header.encode("utf-8", "replace").decode("latin-1")
        header = header.replace("\r", " ").replace("\n", " ")
        method = "POST" if path == "/get_statistics_data" else "GET"
        answer = relay.request(method, path, b"{}", {"Authorization": header})
        check("authorization header", *answer, may_close=has_control(header))

    def elsewhere(method: str, path: str, body: bytes, header: str | None) -> None:
        headers = {"Content-Type": "application/json"}
        if header is not None:
            headers["Authorization"] = header
        control = header is not None and has_control(header)
        check("other path", *relay.request(method, path, body, headers), may_close=control)

    onion_paths = st.sampled_from(["/loki/v2/lsrpc", "/oxen/v4/lsrpc"])
    versions = st.sampled_from(["v2", "v4"])
    bodies = strategies.json_like.map(lambda t: b"\0\0\0\0" + t) | st.binary(max_size=400)
    v4_plaintexts = strategies.v4_requests | strategies.v4_bencoded | st.binary(max_size=200)
    endpoint_names = st.sampled_from(list(ENDPOINTS)) | st.text(max_size=20)
    auth_paths = st.sampled_from(["/get_statistics_data", "/metrics"])
    case = st.one_of(
        st.tuples(st.just(raw), bodies, onion_paths),
        st.tuples(st.just(v2_plain), strategies.json_like | strategies.v2_requests, enc_types),
        st.tuples(st.just(v4_plain), v4_plaintexts, enc_types),
        st.tuples(st.just(endpoint), strategies.endpoint_calls(), versions, enc_types),
        st.tuples(st.just(random_params), endpoint_names, strategies.params, versions),
        st.tuples(st.just(statistics), strategies.stats_bodies),
        st.tuples(st.just(authorization), strategies.headers, auth_paths),
        st.tuples(
            st.just(elsewhere),
            st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"]),
            st.sampled_from(["/get_statistics_data", "/metrics", "/healthz", "/", "/x"])
            | st.text(alphabet="/%.abcdefgikloprsvx2456CLS", max_size=25).map(lambda p: "/" + p),
            strategies.json_like,
            live_tests.authorization,
        ),
    )

    def chunk(examples: int, chunk_seed: int) -> None:
        @hypothesis_seed(chunk_seed)
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(case)
        def fuzz(drawn: tuple[Any, ...]) -> None:
            run, *arguments = drawn
            run(*arguments)

        fuzz()

    started = time.monotonic()
    try:
        for n in range(0, cases, LIVE_CHUNK):
            try:
                chunk(min(LIVE_CHUNK, cases - n), seed + n)
            except Exception as exc:  # noqa: BLE001 - a finding (shrunk first), or the harness's
                findings.append(f"chunk {n // LIVE_CHUNK}: {type(exc).__name__}: {exc}"[:2000])
            done_now = n + min(LIVE_CHUNK, cases - n)
            print(f"  {done_now} live cases, {time.monotonic() - started:.0f} s", flush=True)
    finally:
        elapsed = time.monotonic() - started
        code = relay.stop()
    print(f"  cases by kind: {dict(counts)}")
    print(f"  relay log: {relay.lines} lines; exit status after SIGTERM {code}")
    findings += [f"relay log: {line}" for line in relay.errors]
    closed = "closed: control character in a header"  # a subset of the cases counted
    return sum(n for kind, n in counts.items() if kind != closed), elapsed, findings


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["parsers", "live", "all", "_atheris-worker"])
    parser.add_argument("--runs", type=int, default=1_000_000, help="parser cases")
    parser.add_argument("--cases", type=int, default=200_000, help="live relay cases")
    parser.add_argument("--seed", type=int, default=20261130)
    parser.add_argument("--workdir", type=Path, help="keep the corpus, logs and crash files")
    args, rest = parser.parse_known_args()
    if args.mode == "_atheris-worker":
        atheris_worker(rest)
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fuzz-long-"))
    workdir.mkdir(parents=True, exist_ok=True)
    total, findings = 0, []
    if args.mode in ("parsers", "all"):
        done, elapsed, found = run_parsers(args.runs, workdir, args.seed)
        print(f"parsers: {done} cases in {elapsed:.0f} s, findings: {len(found)}")
        total += done
        findings += found
    if args.mode in ("live", "all"):
        done, elapsed, found = run_live(args.cases, workdir, args.seed)
        print(f"live relay: {done} cases in {elapsed:.0f} s, findings: {len(found)}")
        total += done
        findings += found
    print(f"total: {total} cases; work directory {workdir}")
    for finding, times in Counter(findings).most_common():
        print(f"FINDING ({times}x):", finding)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
