"""`server.py --workers 2` split by role instead of alike: worker 1 takes the requests and never
pushes, worker 2 pushes and takes no request (it listens on a port of its own nobody uses).

Only for bench/workers.py's comparison (`--configs 1,2,2-split`): same arguments as server.py.
The delivery worker cannot be woken by a notify taken in the other process, so it polls the
queue every 20 ms (the relay's lanes poll every 2 s when idle and are woken by their own
process's notifies); a real split would need a cross-process wake-up (a pipe, or PostgreSQL's
LISTEN/NOTIFY).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import relay
import server
import supervisor
from errors import StartupError
from push.dispatcher import DispatchSettings
from settings import LoadedSettings, SettingsError

DELIVERY_POLL_S = 0.02


@dataclass(frozen=True)
class PolledDispatchSettings(DispatchSettings):
    idle_poll_s: float = DELIVERY_POLL_S


def run_workers_split(
    loaded: LoadedSettings, serve: supervisor.Serve, bind: supervisor.Bind
) -> int:
    reserved, worker_settings = supervisor.reserve_worker_port(loaded.settings)
    port = worker_settings.PORT

    def run_worker(worker: supervisor.WorkerContext) -> int:
        for sock in reserved:
            sock.close()
        settings = worker_settings
        if worker.index == 1:  # intake: no dispatcher
            original_start = relay.Relay.start

            async def start_without_dispatch(self: relay.Relay, **kwargs: Any) -> None:
                await original_start(self, **{**kwargs, "dispatch": False})

            relay.Relay.start = start_without_dispatch  # type: ignore[method-assign]
        else:  # delivery: a port nobody sends to, and a queue polled often
            settings = replace(worker_settings, PORT=0, REUSE_PORT=False)
            setattr(relay, "DispatchSettings", PolledDispatchSettings)  # noqa: B010
        own = replace(loaded, settings=settings)
        listen = worker.listen if worker.index == 1 else (lambda: bind(settings))
        try:
            asyncio.run(serve(own, replace(worker, listen=listen)))
        except (SettingsError, StartupError) as exc:
            worker.report_failed(str(exc))
            return supervisor.CANNOT_START
        return 0

    def started(pids: list[int]) -> None:
        supervisor.log.info(
            "workers: %d processes (pids %s), split: intake on http://127.0.0.1:%d, delivery",
            len(pids),
            ", ".join(map(str, pids)),
            port,
        )

    try:
        return supervisor.Supervisor(
            2, run_worker, lambda: bind(worker_settings), on_started=started
        ).run()
    finally:
        for sock in reserved:
            sock.close()


if __name__ == "__main__":
    setattr(server, "run_workers", run_workers_split)  # noqa: B010 - replace it for the bench
    sys.exit(server.main())
