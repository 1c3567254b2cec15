"""What a command is doing while it works: a spinner on a terminal, a line per phase off one.

Everything goes to stderr, so stdout stays the command's answer (and, with `--json`, its one
JSON object: `--json` turns this off). Off a terminal (CI logs, `| tee`, a notebook) each
phase is one plain line when it starts, `esper-es <command>: <what> …`, and its time when a
slow one ends, so a long `simulate` or `replay` is never silent. Error lines keep their own
shape (`esper-es: <message>`), so the two cannot be confused.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["Feedback"]

_SLOW = 1.0  # seconds after which a finished phase reports its time off a terminal


class Feedback:
    """Phases of one command, shown on stderr unless `enabled` is False."""

    def __init__(self, command: str, *, enabled: bool = True, stream: TextIO | None = None):
        self.command = command
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._console: Any = None

    def _line(self, text: str) -> None:
        self.stream.write(f"esper-es {self.command}: {text}\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """One line of progress (a finished epoch, a count)."""
        if not self.enabled:
            return
        if self.tty:
            self._rich().print(f"[dim]{text}[/dim]", highlight=False)
        else:
            self._line(text)

    @contextmanager
    def phase(self, text: str) -> Iterator[None]:
        """Say that `text` is happening while the block runs."""
        if not self.enabled:
            yield
            return
        started = time.perf_counter()
        if self.tty:
            with self._rich().status(f"{text} …"):
                yield
            return
        self._line(f"{text} …")
        yield
        took = time.perf_counter() - started
        if took >= _SLOW:
            self._line(f"{text}: done in {took:.1f} s")

    def counter(self, what: str, total: int, parts: int = 10) -> Callable[[int], None]:
        """A callback for `done` of `total`: a note at each tenth (off a terminal)."""
        every = max(1, total // parts)
        shown = [0]

        def update(done: int) -> None:
            if done - shown[0] >= every or done == total:
                shown[0] = done
                self.note(f"{what} {done}/{total}")

        return update

    def _rich(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stream, stderr=self.stream is sys.stderr)
        return self._console
