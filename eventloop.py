"""The relay's event loop, chosen by the EVENT_LOOP setting: uvloop (libuv, written in C) or
asyncio's own. Tornado runs on whichever asyncio loop is running, so nothing else changes.

server.py runs a single relay with `run`, and so does each worker of supervisor.py; the tests'
in-process relays build their loops with `loop_factory` for the same choice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]

# The words EVENT_LOOP takes (settings.py lists the same, in its one_of; a test checks them).
FACTORIES: dict[str, LoopFactory] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


def loop_factory(choice: str) -> LoopFactory:
    """The factory of the loop EVENT_LOOP names; ValueError for another word (settings.py
    refuses one before this is reached)."""
    try:
        return FACTORIES[choice]
    except KeyError:
        words = ", ".join(FACTORIES)
        raise ValueError(f"EVENT_LOOP: {choice!r} is not one of {words}") from None


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """`main` to its end on a new loop of the kind `choice` names (as asyncio.run does)."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """Which kind `loop` is, in EVENT_LOOP's words (for the start-up log)."""
    return "uvloop" if isinstance(loop, uvloop.Loop) else "asyncio"
