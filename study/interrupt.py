"""Stopping a study's driver on SIGINT (Ctrl-C) or SIGTERM, with the store left truthful.

While :class:`StopSignals` is active, the first SIGINT or SIGTERM raises
:class:`StudyInterrupted` in the main thread (wherever the Tune loop is), so the
driver leaves the loop at once, shuts Ray down, marks its unfinished runs
KILLED and exits with :data:`EXIT_CODES` (130 for SIGINT, 143 for SIGTERM, the
shell's 128 + signal number). Further signals while it does so are noted and
ignored, so the runs do get marked.

``StudyInterrupted`` derives from ``BaseException`` like ``KeyboardInterrupt``:
the ``except Exception`` blocks inside Ray and MLflow let it through. A signal
can still arrive where Python swallows any exception (a garbage-collector or
``__del__`` callback prints "Exception ignored" and goes on), so the driver's
loop calls :func:`check` at every step, and the runner once more after the launch
returns: the signal is never lost.
"""

from __future__ import annotations

import signal
import sys

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

_active: "StopSignals | None" = None  # the StopSignals whose block the driver is in


class StudyInterrupted(BaseException):
    """The driver was asked to stop by ``signum``."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 128 + self.signum)


class StopSignals:
    """Context manager: SIGINT and SIGTERM raise :class:`StudyInterrupted` once, then are ignored.

    :meth:`install` may be called again inside the block (``ray.init`` sets a SIGTERM handler
    of its own in the driver, which would exit without marking anything).
    """

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            print(f"\n{signal.Signals(signum).name} again: still stopping (marking the runs, shutting Ray "
                  "down)", file=sys.stderr, flush=True)
            return
        self.received = signum
        raise StudyInterrupted(signum)

    def install(self) -> None:
        for sig in EXIT_CODES:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def __enter__(self) -> "StopSignals":
        global _active
        _active = self
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        global _active
        _active = None
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def check() -> None:
    """Raise :class:`StudyInterrupted` if the active :class:`StopSignals` has received a signal.

    Called at each step of the Tune loop and after it: the handler's own raise may have been
    swallowed (see the module docstring). Outside a ``StopSignals`` block it does nothing.
    """
    if _active is not None and _active.received is not None:
        raise StudyInterrupted(_active.received)
