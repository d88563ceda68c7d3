"""Stopping a study's driver on SIGINT (Ctrl-C) or SIGTERM: the handler records, the driver acts.

A signal handler that raises runs wherever the interpreter happens to be: inside a database
transaction (which then keeps its lock, and the driver's own marking of its runs fails with
"database is locked"), an artifact upload, a report write, Ray's start or shutdown, or a
garbage-collector callback that swallows the exception. So here no handler raises:

- :func:`drive` runs a command's work in a thread of its own, the *driver thread*, while the
  main thread only waits. Python runs signal handlers in the main thread only, so a handler
  never interrupts the driver's code.
- The first SIGINT or SIGTERM is recorded (:attr:`StopSignals.received`) and said once. The
  driver calls :func:`check` at its safe points, where no write is in flight: each step of the
  Tune loop and each of its callbacks, between the runner's phases, between linked cells,
  between the adaptive loop's batches and looks, between the analysis's studies. There
  :func:`check` raises :class:`StudyInterrupted`; the runner marks the runs it left unfinished
  KILLED, prints the command that resumes the study and exits with :data:`EXIT_CODES` (130 for
  SIGINT, 143 for SIGTERM, the shell's 128 + signal number). A safe point comes within about a
  second in the Tune loop; the longest stretch without one is Ray's start (seconds).
- A second signal stops at once: the process's children (Ray's processes, the trials) are
  killed and the process exits with the same status, without marking anything. The store is
  still consistent: an sqlite write is one transaction, which a process that dies inside it
  leaves rolled back, and a tracking server applies a request whole; the runs left RUNNING
  are marked KILLED by the next command (``StudyTracker.reconcile``: their driver is gone) and
  a run created but not filled is filled then (``StudyTracker.repair``).

``StudyInterrupted`` derives from ``BaseException`` like ``KeyboardInterrupt``: the
``except Exception`` blocks of Ray and MLflow let it through from a Tune callback.

Under SLURM the job handles its signals itself (``cluster/slurm_job.py``: SIGTERM is recorded
for the requeue that USR2 then starts, with the driver in a thread as here); :func:`drive`
called from a thread other than the main one runs its function directly for that reason.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, Callable

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

_active: "StopSignals | None" = None  # the StopSignals whose block the command is in


class StudyInterrupted(BaseException):
    """The driver was asked to stop by ``signum``; raised by :func:`check` at a safe point."""

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
    """Context manager (main thread): SIGINT and SIGTERM are recorded; a second one stops at once.

    The handler itself never raises (see the module docstring): the first signal sets
    :attr:`received`, which :func:`check` turns into :class:`StudyInterrupted` at the driver's
    next safe point; the second calls :func:`stop_now`.
    """

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._requests: list[threading.Event] = []  # reclaim() calls waiting for the main thread
        self._wake = threading.Event()

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = signum
            _say(f"\n{name}: stopping at the next safe point (marking the unfinished runs, stopping the cells); "
                 f"{name} again stops at once")
            return
        stop_now(EXIT_CODES.get(self.received, 128 + self.received),
                 f"\n{name} again: stopping now; the next command marks the runs left open as interrupted "
                 "(run the same command again to resume)")

    def __enter__(self) -> "StopSignals":
        global _active
        _active = self
        self._install()
        return self

    def _install(self) -> None:
        for sig in EXIT_CODES:
            self._previous.setdefault(sig, signal.signal(sig, self._handle))

    def wait(self, thread: threading.Thread) -> None:
        """The main thread's part while ``thread`` drives: sleep, take signals, serve :func:`reclaim`."""
        while thread.is_alive():
            self._wake.wait(0.25)  # interrupted by a signal at once: the handler runs here
            self._wake.clear()
            while self._requests:
                self._install()
                self._requests.pop().set()

    def __exit__(self, *exc) -> None:
        global _active
        _active = None
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def received() -> int | None:
    """The signal the active :class:`StopSignals` has recorded, or None (none, or outside a block)."""
    return _active.received if _active is not None else None


def check() -> None:
    """A safe point: raise :class:`StudyInterrupted` if a stop signal has been recorded.

    Call it only where no write is in flight. Outside a :class:`StopSignals` block it does nothing.
    """
    if _active is not None and _active.received is not None:
        raise StudyInterrupted(_active.received)


def reclaim(timeout: float = 10.0) -> None:
    """Have the main thread install the stop handlers again, and wait until it has (at most ``timeout`` s).

    For the driver thread after a call that installs C-level signal handlers of its own: ``ray.init``
    starts Ray's core worker in this process, whose failure handler takes SIGTERM (it prints a stack
    and, at shutdown, may abort the process). Outside a block it does nothing.
    """
    stop = _active
    if stop is None:
        return
    if threading.current_thread() is threading.main_thread():
        stop._install()
        return
    done = threading.Event()
    stop._requests.append(done)
    stop._wake.set()
    done.wait(timeout)


def drive(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Run ``fn(*args, **kwargs)`` in a driver thread under :class:`StopSignals`; its value or exception.

    The main thread waits in short joins, so the handlers run at once (and only there). Called
    inside a block already (a batch of the adaptive loop), or from a thread other than the main
    one (which cannot take signals: the SLURM job's driver thread), ``fn`` runs directly.
    """
    if _active is not None or threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as err:  # handed to the main thread
            out["error"] = err

    with StopSignals() as stop:
        thread = threading.Thread(target=target, name="study-driver", daemon=True)
        thread.start()
        stop.wait(thread)
    if "error" in out:
        raise out["error"]
    return out.get("value")


def stop_now(code: int, message: str) -> None:
    """End the process at once with ``code``: say ``message``, kill this process's descendants
    (Ray's processes and its trials; they would die with it anyway, being fate-shared, but not
    before their next write), then ``os._exit``. Nothing is cleaned up: see the module docstring."""
    _say(message)
    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(code)


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, theirs, ...), from Linux's /proc; [] where it is absent."""
    children: dict[int, list[int]] = {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name (field 2) may hold spaces and ')': the fields after the last ')' are fixed
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def _say(message: str) -> None:
    try:
        sys.stdout.flush()
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # a closed or broken stream: the exit status still tells
        pass
