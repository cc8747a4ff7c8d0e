"""`python server.py` as an operator runs it, for the tests: a real process, real signals.

`run_server` runs a command to its end (`--print-pubkey`, `--init`, a start that must fail);
`ServerProcess` starts a relay on a free port, waits for its "listening on" line and reads
its port and public key from it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from tests.http_calls import http_request

ROOT = Path(__file__).resolve().parents[1]
SERVER = [sys.executable, str(ROOT / "server.py")]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any PN_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PN_")}
    env.update(extra)
    return env


def run_server(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`python server.py ARGS` to its end, with `env` added to a clean environment."""
    return subprocess.run(
        [*SERVER, *args],
        cwd=cwd,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


class ServerProcess:
    def __init__(self, cwd: Path, *args: str, **env: str) -> None:
        self.process = subprocess.Popen(
            [*SERVER, "--port", "0", *args],
            cwd=cwd,
            env=clean_env(**env),
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._listening.wait(30):
            self.process.kill()
            raise AssertionError(f"server did not start: {self.lines}")
        found = re.search(
            r"listening on http://127.0.0.1:(\d+) \(server public key ([0-9a-f]{64})\)", self.log
        )
        assert found, self.log
        self.port, self.public_key = int(found.group(1)), found.group(2)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "listening on" in line:
                self._listening.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """The first log line matching `pattern`, once the relay wrote it."""
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return found
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"no line matching {pattern!r} in:\n{self.log}")
            time.sleep(0.02)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        answer = http_request(self.port, "POST", path, body=body)
        return answer.status, answer.body

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        self._reader.join(5)
        return code

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """A test that failed before `terminate` leaves no relay running."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
