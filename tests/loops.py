"""The event loop the tests run the relay's code on: the kind EVENT_LOOP names by default
(eventloop.py), so the suite runs on the loop a relay runs on; RELAY_TEST_EVENT_LOOP=asyncio
(or uvloop) runs the in-process relays, lanes and senders on that one instead."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import eventloop
from settings import Settings

T = TypeVar("T")
LOOP_VARIABLE = "RELAY_TEST_EVENT_LOOP"


def chosen() -> str:
    """EVENT_LOOP's word for the loop the tests run on."""
    return os.environ.get(LOOP_VARIABLE) or Settings().EVENT_LOOP


def new_loop() -> asyncio.AbstractEventLoop:
    return eventloop.loop_factory(chosen())()


def run(main: Coroutine[Any, Any, T]) -> T:
    """`main` to its end on a new loop of the chosen kind (as asyncio.run does)."""
    return eventloop.run(main, chosen())
