"""A one-line progress bar for the management commands, shown only on a terminal.

Commands such as ``resto_sync`` and ``process_failed_media`` run from cron as often
as by hand. Carriage-return redraws would fill a cron mail or a log file with
garbage, so the bar draws nothing unless its stream is a TTY; the commands can
then create one unconditionally and call ``advance`` from any thread.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Protocol

__all__ = ["Progress", "command_stream"]

#: Seconds between two redraws: an audit of 10,000 files must not spend its time
#: writing to the terminal.
REDRAW_INTERVAL = 0.1
BAR_WIDTH = 30


class _Stream(Protocol):
    def write(self, text: str, /) -> object: ...

    def flush(self) -> object: ...


class _CommandStream:
    """A management command's stderr (an OutputWrapper) as a plain stream for the bar.

    Through the wrapper's public methods: ``write`` without the newline it would add,
    and ``isatty`` of the stream behind it, so ``call_command(stderr=...)`` still
    redirects the bar.
    """

    def __init__(self, wrapper: Any) -> None:
        self._wrapper = wrapper

    def write(self, text: str, /) -> object:
        # No newline added, and no style: stderr's would paint the bar as an error.
        return self._wrapper.write(text, style_func=_plain, ending="")

    def flush(self) -> object:
        return self._wrapper.flush()

    def isatty(self) -> bool:
        return bool(self._wrapper.isatty())


def _plain(text: str) -> str:
    return text


def command_stream(wrapper: Any) -> _Stream:
    """The stream to give :class:`Progress` in a command: ``command_stream(self.stderr)``."""
    return _CommandStream(wrapper)


class Progress:
    """``Progress(total, label, stream=None)``: ``advance(n=1)`` as work finishes, then ``close()``.

    ``stream`` defaults to ``sys.stderr`` so the bar never mixes with a command's
    stdout (``--json`` output stays parseable). Thread-safe; a no-op when the
    stream is not a TTY. Also a context manager that closes on exit.
    """

    def __init__(self, total: int, label: str, stream: _Stream | None = None) -> None:
        self.total = max(0, int(total))
        self.label = label
        self.done = 0
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        try:
            self.enabled = bool(isatty and isatty())
        except (OSError, ValueError):  # a closed or detached stream
            self.enabled = False
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._closed = False
        self._start = time.monotonic()

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units as done, redrawing at most every REDRAW_INTERVAL."""
        with self._lock:
            self.done += n
            if not self.enabled or self._closed:
                return
            now = time.monotonic()
            if self.done < self.total and now - self._last_draw < REDRAW_INTERVAL:
                return
            self._last_draw = now
            self._draw()

    def close(self) -> None:
        """Draw the final state and end the line; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.enabled:
                self._draw()
                self.stream.write("\n")
                self.stream.flush()

    def render(self) -> str:
        """The text of the bar, e.g. ``Auditing [#######-------]  50/100  50% 1.2s``."""
        elapsed = time.monotonic() - self._start
        if self.total:
            ratio = min(1.0, self.done / self.total)
            filled = int(ratio * BAR_WIDTH)
            bar = "#" * filled + "-" * (BAR_WIDTH - filled)
            width = len(str(self.total))
            return (
                f"{self.label} [{bar}] {self.done:>{width}}/{self.total} "
                f"{ratio:4.0%} {elapsed:.1f}s"
            )
        return f"{self.label} {self.done} {elapsed:.1f}s"

    def _draw(self) -> None:
        # \r and erase-to-end-of-line: the new text may be shorter than the old one.
        self.stream.write("\r" + self.render() + "\x1b[K")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
