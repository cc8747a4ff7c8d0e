"""The processes the benchmarks start, and what /proc says about them.

- RelayProcess: `python server.py` on a DATA_DIR of its own, configured by PN_* variables only
  (`python -m bench`, sync_modes.py, metrics_scrape.py, workers.py).
- start_relay_on_pipe: `python server.py --port 0` with its log on a pipe, for the scripts that
  read the log as it comes (push_bench.py, soak.py, fuzz_long.py).
- FakesProcess: `python -m bench.fakes` (the sandbox's fake APNs and FCM, quiet).
- Loader: a load generator (bench/load.py, bench/push_load.py) that builds its requests,
  says "ready", and starts its clock on "go", so the relay's CPU time is read just around
  the timed window; its result is one JSON line.
- RelayClient: blocking onion calls to a running relay.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from threading import local
from types import TracebackType
from typing import IO, Any, Self

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fakes import CONTROL_PREFIX  # noqa: E402
from lsrpc.client import OnionClient  # noqa: E402
from sandbox.__main__ import settings_lines  # noqa: E402
from sandbox.apns import FakeApns  # noqa: E402
from sandbox.fcm import FakeFcm  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVER = str(ROOT / "server.py")
LISTENING = re.compile(r"listening on http://127.0.0.1:(\d+) \(server public key (\w+)\)")


class BenchError(Exception):
    """Something the bench started did not behave; the message says what."""


# -- /proc --


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process; 0 once it is gone."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_ticks() -> tuple[int, int]:
    """(idle, total) CPU ticks of the whole machine so far, all cores (/proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return values[3] + values[4], sum(values)  # idle + iowait


def wait_until_quiet(
    idle_share: float = 0.85, window_s: float = 0.3, at_most_s: float = 20.0
) -> float:
    """Wait until the machine has been at least `idle_share` idle over a `window_s`
    (a relay dropping the deliveries of its last run, PostgreSQL's autovacuum after one:
    work of a run before that would land in the next one's window); at most `at_most_s`.
    Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < at_most_s:
        idle_before, total_before = machine_ticks()
        time.sleep(window_s)
        idle_after, total_after = machine_ticks()
        total = total_after - total_before
        if total and (idle_after - idle_before) / total >= idle_share:
            break
    return time.monotonic() - started


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry.name))[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and every live descendant, plus what its reaped children used
    (cutime + cstime): all the CPU the process tree has had."""
    total = 0.0
    try:
        fields = _stat_fields(pid)
        total += (int(fields[13]) + int(fields[14])) / CLOCK_TICKS  # cutime + cstime
    except OSError:
        pass
    return total + sum(cpu_seconds(member) for member in [pid, *descendants(pid)])


def tree_waited_seconds(pid: int) -> float:
    """How long the threads of `pid` and its descendants have waited, runnable, for a core
    (the second field of /proc/<pid>/task/<tid>/schedstat): the time a busy machine gave
    to others. Threads that have ended are not counted."""
    total = 0
    for member in [pid, *descendants(pid)]:
        try:
            tasks = list(Path(f"/proc/{member}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def status_kb(pid: int, field: str) -> int:
    """A `kB` line of /proc/<pid>/status: VmRSS (resident now), VmHWM (resident at peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise BenchError(f"no {field} in /proc/{pid}/status")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# A benchmark measures speed, not the abuse limits (tests/test_abuse_limits.py does): a
# bench notifies one group hundreds of times a minute and builds groups of 1,000 members,
# which NOTIFY_PER_MINUTE / NOTIFY_BURST (60) and MAX_GROUP_MEMBERS (200) would refuse.
BENCH_LIMITS = {
    "PN_NOTIFY_PER_MINUTE": "1000000",
    "PN_NOTIFY_BURST": "1000000",
    "PN_MAX_GROUP_MEMBERS": "1000000",
}


def relay_env(settings: dict[str, str]) -> dict[str, str]:
    """This process's environment without its PN_* variables, plus the abuse limits lifted
    (BENCH_LIMITS) and `settings` (full names), which may set them again."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PN_")}
    env.update(BENCH_LIMITS)
    env.update(settings)
    return env


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(process: subprocess.Popen[Any], timeout: float = 60.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


# -- the relay --


class _Child:
    """A process this one started: its CPU, and stopped (SIGTERM) on leaving a `with`."""

    process: subprocess.Popen[Any]

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        _stop(self.process)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def server_output(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> str:
    """What `python server.py ARGS` prints on stdout (e.g. --print-pubkey, --help)."""
    command = [sys.executable, SERVER, *args]
    output = subprocess.check_output(command, env=env, cwd=cwd, text=True, stderr=subprocess.PIPE)
    return str(output)


class RelayProcess(_Child):
    """`python server.py` with PN_DATA_DIR=`data_dir`, a free port and `settings` (PN_* names
    without the prefix); `workers` > 1 passes --workers (only when server.py has it)."""

    def __init__(
        self, data_dir: Path, settings: dict[str, str] | None = None, *, workers: int = 1
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        env = relay_env(
            {
                "PN_DATA_DIR": str(data_dir),
                "PN_PORT": str(self.port),
                "PN_LOG_LEVEL": "WARNING",
                **{f"PN_{name}": value for name, value in (settings or {}).items()},
            }
        )
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.pubkey = server_output("--print-pubkey", env=env, cwd=data_dir).strip()
        self.log = data_dir / "relay.log"
        command = [sys.executable, SERVER]
        if workers > 1:
            command += ["--workers", str(workers)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, cwd=data_dir, stdout=log, stderr=log)
        self._wait_listening()

    def _wait_listening(self, timeout: float = 60.0) -> None:
        """Until the relay answers HTTP: its socket is bound before the rest is built (the
        database schema among it), so a connection alone does not say it has started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"the relay exited at start:\n{_tail(self.log)}")
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                connection.request("GET", "/healthz")
                connection.getresponse().read()
                return
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)
            finally:
                connection.close()
        self.stop()
        raise BenchError(f"the relay did not answer on {self.port} within {timeout:.0f} s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> RelayClient:
        return RelayClient(self.port, self.pubkey)

    def waited_seconds(self) -> float:
        return tree_waited_seconds(self.process.pid)

    def memory_kb(self, field: str) -> int:
        """VmRSS / VmHWM summed over the relay's processes (one, unless --workers)."""
        return sum(status_kb(pid, field) for pid in [self.process.pid, *self.pids()])

    def pids(self) -> list[int]:
        return descendants(self.process.pid)


def start_relay_on_pipe(
    workdir: Path, settings: dict[str, str]
) -> tuple[subprocess.Popen[str], int, str]:
    """`python server.py --port 0` in `workdir` with `settings` (full PN_* names) at log level
    INFO unless they say otherwise, its log on a pipe: the process, and the port and public key
    (hex) from its "listening" line. The caller reads the rest of the log (stderr) from then
    on, or the relay stalls once the pipe is full."""
    process = subprocess.Popen(
        [sys.executable, SERVER, "--port", "0"],
        cwd=workdir,
        env=relay_env({"PN_LOG_LEVEL": "INFO", **settings}),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    seen: list[str] = []
    for line in process.stderr:
        found = LISTENING.search(line)
        if found:
            return process, int(found.group(1)), found.group(2)
        seen = [*seen[-14:], line]
    process.wait(30)
    raise BenchError(f"the relay did not start:\n{''.join(seen)}")


# -- the fakes --


def setting_pairs(lines: list[str]) -> list[tuple[str, str]]:
    """NAME=VALUE lines as (NAME, VALUE)."""
    return [(name, value) for name, _, value in (line.partition("=") for line in lines)]


def fake_settings(apns: FakeApns, fcm: FakeFcm, service_account: Path) -> dict[str, str]:
    """The PN_* settings (full names) that point a relay at fakes running in this process:
    the lines `python -m sandbox` prints."""
    return dict(setting_pairs(settings_lines(apns, fcm, service_account)))


class FakesProcess(_Child):
    """`python -m bench.fakes`: the settings that point a relay at it, and its control port."""

    def __init__(self, directory: Path) -> None:
        self.log = directory / "fakes.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.fakes", "--dir", str(directory)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        lines: list[str] = []
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(CONTROL_PREFIX):
                self.control_port = int(line[len(CONTROL_PREFIX) :])
                pairs = setting_pairs(lines)
                self.settings = {name.removeprefix("PN_"): value for name, value in pairs}
                break
            lines.append(line.strip())
        else:
            raise BenchError(f"the fakes did not start:\n{_tail(self.log)}")


# -- load generators --


class Loader:
    """A load generator process speaking the ready / go / one-JSON-line protocol."""

    def __init__(self, argv: list[str], name: str) -> None:
        self.name = name
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in result()
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )

    def _errors(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    def wait_ready(self) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.process.wait(30)
            raise BenchError(f"{self.name} did not get ready: {line!r}\n{self._errors()}")

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def result(self, timeout: float = 900.0) -> dict[str, Any]:
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise BenchError(f"{self.name} took more than {timeout:.0f} s") from None
        errors = self._errors()
        self._stderr.close()
        if self.process.returncode != 0:
            raise BenchError(f"{self.name} failed (exit {self.process.returncode}):\n{errors}")
        for line in reversed(out.splitlines()):
            if line.startswith("{"):
                parsed: dict[str, Any] = json.loads(line)
                return parsed
        raise BenchError(f"{self.name} printed no result:\n{out[-2000:]}\n{errors}")

    def stop(self) -> None:
        _stop(self.process, timeout=10)


def load_argv(relay: RelayProcess, endpoint: str, requests: int, concurrency: int) -> list[str]:
    """bench/load.py's arguments against `relay`, in the bench's protocol (add more after)."""
    return [
        str(ROOT / "bench" / "load.py"),
        "--url",
        relay.url,
        "--pubkey",
        relay.pubkey,
        "--endpoint",
        endpoint,
        "-n",
        str(requests),
        "-c",
        str(concurrency),
        "--json",
        "--wait-go",
    ]


# -- talking to a relay --


class RelayClient:
    """Blocking onion calls to a running relay (one keep-alive connection per thread)."""

    def __init__(self, port: int, public_key_hex: str) -> None:
        self.port = port
        self.client = OnionClient(bytes.fromhex(public_key_hex))
        self._local = local()

    def call(self, endpoint: str, params: dict[str, Any]) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = http.client.HTTPConnection("127.0.0.1", self.port)
        request = self.client.v2(endpoint, params)
        connection.request("POST", "/loki/v2/lsrpc", body=request.body)
        response = connection.getresponse()
        status, body = request.open_v2_reply(response.read())
        if status != 200 or body.get("code") != 1:
            raise RuntimeError(f"{endpoint} failed: {status} {body}")
