"""Watching one background writer at a time: its pipe, its deadline, its result.

:class:`WriterWatch` owns the event-loop handler on the writer's result
pipe and the timer of its deadline. Past the deadline the writer is killed
and reported as timed out, with the name of the variable it was pickling
(read from its :class:`~persistent_kernel.snapshot.Beacon`); the watch
then hands the finished writer to its ``on_done`` callback, exactly once.

A blocking :meth:`WriterWatch.wait` (``%persist save``) takes the pipe off
the loop while it waits and always puts it back if the writer is still
running, however the wait ends (an interrupt included), so the loop never
loses sight of a writer.

The loop is a small protocol (:class:`Loop`), so the watch is tested in
process with a fake loop, a fake clock and a fake writer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from .snapshot import Writer

GiB = 1 << 30


class Loop(Protocol):
    """What the watch needs of an event loop (tornado's IOLoop, via :class:`TornadoLoop`)."""

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...

    def remove_reader(self, fd: int) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any: ...

    def cancel(self, handle: Any) -> None: ...

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run *callback* on the loop's thread soon; callable from any thread."""
        ...


class TornadoLoop:
    """:class:`Loop` over a tornado ``IOLoop``."""

    def __init__(self, io_loop: Any) -> None:
        self.io_loop = io_loop

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        from tornado.ioloop import IOLoop

        self.io_loop.add_handler(fd, lambda fd, events: callback(), IOLoop.READ)

    def remove_reader(self, fd: int) -> None:
        self.io_loop.remove_handler(fd)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        return self.io_loop.call_later(delay, callback)

    def cancel(self, handle: Any) -> None:
        self.io_loop.remove_timeout(handle)

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.io_loop.add_callback(callback)


def deadline_for(seconds_per_gib: float, state_bytes: int) -> float:
    """A writer's deadline: *seconds_per_gib* for each GiB of state, and at least that."""
    return seconds_per_gib * max(1.0, state_bytes / GiB)


class WriterWatch:
    """One background writer at a time: loop handler, deadline, kill, result."""

    def __init__(
        self,
        loop: Loop | None,
        on_done: Callable[[Writer], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.loop = loop
        self.on_done = on_done
        self.clock = clock
        self.writer: Writer | None = None
        self.deadline = 0.0  # seconds the running writer was given
        self._expires = 0.0
        self._timer: Any = None
        self._watched = False

    @property
    def running(self) -> bool:
        return self.writer is not None

    def watch(self, writer: Writer, deadline: float) -> None:
        """Follow *writer* until it reports, or kill it *deadline* seconds from now."""
        if writer.done or writer.fd is None:
            self.on_done(writer)
            return
        self.writer = writer
        self.deadline = deadline
        self._expires = self.clock() + deadline
        self._listen()
        if self.loop is not None:
            self._timer = self.loop.call_later(deadline, self._expire)

    def _listen(self) -> None:
        writer = self.writer
        if self.loop is not None and writer is not None and writer.fd is not None:
            self.loop.add_reader(writer.fd, self._readable)
            self._watched = True

    def _unlisten(self) -> None:
        writer = self.writer
        if self._watched and self.loop is not None and writer is not None and writer.fd is not None:
            self.loop.remove_reader(writer.fd)
        self._watched = False

    def _readable(self) -> None:
        writer = self.writer
        if writer is not None and writer.poll():
            self._done()

    def _expire(self) -> None:
        self._timer = None
        writer = self.writer
        if writer is None:
            return
        self._unlisten()
        writer.kill()
        self._done()

    def _done(self) -> None:
        writer = self.writer
        assert writer is not None
        self._unlisten()
        if self._timer is not None and self.loop is not None:
            self.loop.cancel(self._timer)
        self._timer = None
        writer.finish()
        if writer.died and not writer.crashed and self.clock() >= self._expires:
            writer.timed_out = True  # it ended itself at its deadline (see snapshot)
        self.writer = None
        self.on_done(writer)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the writer reports, is killed at its deadline, or *timeout* passes.

        True if no writer is running any more. An interrupt (or any
        exception) leaves the writer watched by the loop as before.
        """
        writer = self.writer
        if writer is None:
            return True
        self._unlisten()
        try:
            until = self._expires if timeout is None else min(self._expires, self.clock() + timeout)
            while True:
                remaining = max(0.0, until - self.clock())
                if writer.wait(remaining) is not None:
                    self._done()
                    return True
                if self.clock() >= self._expires:
                    writer.kill()
                    self._done()
                    return True
                if timeout is not None:
                    return False
        finally:
            if self.writer is writer:
                self._listen()
