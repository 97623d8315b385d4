"""The dead-host breaker: once a media server fails, stop waiting for it for a while.

Without it, with one host down or hanging and ``fatal_exceptions`` off, every upload
waits the full timeout for that host before it is journaled. After a host fails by a
network error (refused, reset, timed out, a TLS failure) or a 5xx answer, its breaker
*opens*: for a back-off window, operations on it fail at once, without a network
wait, and go through the failure policy like any other failure (journaled, counted
as missing by the quorum, raised when ``fatal_exceptions`` says so, naming the
breaker). When the window ends, one operation, the first to come, is let through as
the probe: if the host answers it, the breaker closes; if not, it opens again for
twice as long, up to ``breaker_max_window``.

The state is per process and per host origin (every storage of the process that
writes to a host shares its breaker): each gunicorn worker learns on its own that a
host is down, at the cost of one timeout per window. ``process_failed_media`` and
``resto_sync`` never consult it: they are how a host is brought back.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from .exceptions import UnexpectedStatusCode, describe

__all__ = ["Breaker", "HostHeldOpen", "breaker_for", "forget", "opens_breaker", "reset_all"]

#: Errors of the local side, not of the host: they never open a breaker.
_LOCAL_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class HostHeldOpen(ConnectionError):
    """An operation was not sent: the host's breaker is open after a recent failure."""

    def __init__(self, host: str, cause: str, retry_in: float) -> None:
        self.host = host
        self.cause = cause
        self.retry_in = retry_in
        super().__init__(
            f"not sent: {host} is held open by the breaker after {cause}; "
            f"next try in {retry_in:.1f} s"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.host, self.cause, self.retry_in))


def opens_breaker(error: BaseException | None) -> bool:
    """Whether ``error`` says the host is down or broken (not the request, not our side)."""
    if error is None or isinstance(error, (HostHeldOpen, *_LOCAL_ERRORS)):
        return False
    if isinstance(error, UnexpectedStatusCode):
        return error.status >= 500
    return isinstance(error, OSError)


@dataclass
class _State:
    opened_at: float = 0.0
    until: float = 0.0  # monotonic time the window ends; 0.0: closed
    window: float = 0.0
    cause: str = ""
    probing: bool = False


class Breaker:
    """One host's breaker in this process. Thread-safe."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self._state = _State()
        self._lock = threading.Lock()

    def state(self) -> str:
        """ "closed", "open" (failing fast) or "half-open" (the window ended: next one probes)."""
        with self._lock:
            if not self._state.until:
                return "closed"
            return "open" if time.monotonic() < self._state.until else "half-open"

    def reset(self) -> None:
        with self._lock:
            self._state = _State()

    def admit(self, label: str) -> HostHeldOpen | None:
        """None if an operation may go to the host now, else the error to fail it with.

        After the window, exactly one caller is admitted as the probe; the others
        keep failing fast until the probe's outcome is known.
        """
        if not self._state.until:
            return None  # closed: the common case takes no lock
        with self._lock:
            state = self._state
            if not state.until:
                return None
            now = time.monotonic()
            if now >= state.until and not state.probing:
                state.probing = True
                return None
            return HostHeldOpen(label, state.cause, max(0.0, state.until - now))

    def record(self, error: BaseException | None, *, window: float, max_window: float) -> bool:
        """Close when the host answered; open (or re-open, for longer) when it did not.

        Returns True when that opened a closed breaker or closed an open one.
        """
        if error is None and not self._state.until:
            return False  # closed and still fine: the common case takes no lock
        with self._lock:
            state = self._state
            was_open = bool(state.until)
            if error is None or (isinstance(error, UnexpectedStatusCode) and error.status < 500):
                self._state = _State()  # the host answers, whatever it thought of the request
                return was_open
            if not opens_breaker(error):
                state.probing = False  # nothing learnt about the host: let another probe
                return False
            now = time.monotonic()
            state.window = window if not state.until else min(max_window, 2 * state.window)
            state.until = now + state.window
            state.opened_at = now
            state.cause = describe(error)
            state.probing = False
            return not was_open


_breakers: dict[str, Breaker] = {}
_breakers_lock = threading.Lock()


def breaker_for(origin: str) -> Breaker:
    """This process's breaker for the host at ``origin`` (made on first use)."""
    found = _breakers.get(origin)
    if found is None:
        with _breakers_lock:
            found = _breakers.setdefault(origin, Breaker(origin))
    return found


def forget(origin: str) -> None:
    """Close one host's breaker (a test server that took over a port, say).

    The state is reset rather than the breaker dropped: replicators keep the
    breakers they looked up.
    """
    found = _breakers.get(origin)
    if found is not None:
        found.reset()


def reset_all() -> None:
    """Close every breaker (tests; after a deploy that fixed the hosts)."""
    with _breakers_lock:
        for found in _breakers.values():
            found.reset()
