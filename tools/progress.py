"""Drawing an import's progress: a bar on a terminal, plain lines otherwise, or nothing."""

from __future__ import annotations

import time
from typing import Protocol, TextIO

from tools.legacy_import import Progress

BAR_WIDTH = 30


class ProgressDisplay(Protocol):
    def draw(self, progress: Progress) -> None: ...

    def close(self, progress: Progress) -> None: ...


def _percent(done: int, total: int) -> int:
    return 100 if total <= 0 else min(100, done * 100 // total)


class _PhaseDisplay:
    """Walks the phases: each one that ended since the last look is shown as finished."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._shown = 0  # phases seen so far; the last of them may still be running

    def draw(self, progress: Progress) -> None:
        phases = list(progress.phases)
        done = progress.done
        for index in range(max(self._shown - 1, 0), len(phases)):
            name, total = phases[index]
            if index >= self._shown:
                self._begin(name, total)
            if index < len(phases) - 1:
                self._end(name, total)
            else:
                self._update(name, min(done, total), total)
        self._shown = len(phases)

    def close(self, progress: Progress) -> None:
        self.draw(progress)
        if self._shown:
            name, total = progress.phases[-1]
            self._end(name, total)
        self._shown = len(progress.phases) + 1  # nothing more to end

    def _begin(self, name: str, total: int) -> None:
        pass

    def _update(self, name: str, done: int, total: int) -> None:
        pass

    def _end(self, name: str, total: int) -> None:
        pass


class BarDisplay(_PhaseDisplay):
    """One line per phase, redrawn in place with a carriage return (for a terminal)."""

    def _update(self, name: str, done: int, total: int) -> None:
        percent = _percent(done, total)
        filled = percent * BAR_WIDTH // 100
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self._stream.write(f"\r{name:<22} {percent:3d}% [{bar}] {done:,}/{total:,}")
        self._stream.flush()

    def _end(self, name: str, total: int) -> None:
        self._update(name, total, total)
        self._stream.write("\n")
        self._stream.flush()


class LineDisplay(_PhaseDisplay):
    """A plain line when a phase starts and ends, and every `interval` seconds between."""

    def __init__(self, stream: TextIO, interval: float = 10.0) -> None:
        super().__init__(stream)
        self._interval = interval
        self._last_line = 0.0

    def _line(self, name: str, done: int, total: int) -> None:
        self._stream.write(f"{name}: {done:,} of {total:,} rows ({_percent(done, total)}%)\n")
        self._stream.flush()
        self._last_line = time.monotonic()

    def _begin(self, name: str, total: int) -> None:
        self._line(name, 0, total)

    def _update(self, name: str, done: int, total: int) -> None:
        if time.monotonic() - self._last_line >= self._interval:
            self._line(name, done, total)

    def _end(self, name: str, total: int) -> None:
        self._line(name, total, total)


class NoDisplay:
    def draw(self, progress: Progress) -> None:
        pass

    def close(self, progress: Progress) -> None:
        pass


def choose_display(stream: TextIO, *, quiet: bool) -> ProgressDisplay:
    if quiet:
        return NoDisplay()
    return BarDisplay(stream) if stream.isatty() else LineDisplay(stream)
