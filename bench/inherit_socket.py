"""`server.py --workers N`, but with one listening socket bound in the parent and inherited by
every worker, instead of a socket per worker with SO_REUSEPORT (what supervisor.py does).

Only for bench/workers.py's comparison (`--configs 1,2,2-inherit`): same arguments as server.py.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import server
import supervisor
from errors import StartupError
from settings import LoadedSettings, SettingsError


def run_workers_inherited(
    loaded: LoadedSettings, serve: supervisor.Serve, bind: supervisor.Bind
) -> int:
    sockets: list[socket.socket] = bind(loaded.settings)
    port = int(sockets[0].getsockname()[1])
    worker_loaded = replace(loaded, settings=replace(loaded.settings, PORT=port))

    def run_worker(worker: supervisor.WorkerContext) -> int:
        try:
            asyncio.run(serve(worker_loaded, worker))
        except (SettingsError, StartupError) as exc:
            worker.report_failed(str(exc))
            return supervisor.CANNOT_START
        return 0

    def started(pids: list[int]) -> None:
        supervisor.log.info(
            "workers: %d processes (pids %s), one inherited socket on http://127.0.0.1:%d",
            len(pids),
            ", ".join(map(str, pids)),
            port,
        )

    return supervisor.Supervisor(
        loaded.settings.WORKERS, run_worker, lambda: sockets, on_started=started
    ).run()


if __name__ == "__main__":
    setattr(server, "run_workers", run_workers_inherited)  # noqa: B010 - replace it for the bench
    sys.exit(server.main())
