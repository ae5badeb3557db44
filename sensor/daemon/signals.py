"""Signals as flags plus a wake-up pipe, so the run loop's ``select`` returns at once.

A Python signal handler runs between bytecodes of the main thread; doing real work there (closing
the capture, reloading a model) would interleave with whatever the loop was doing. The handlers
below only record what was asked; the loop acts on it at a safe point. ``signal.set_wakeup_fd``
writes a byte to our pipe on every signal, and the pipe is in the loop's ``select`` set, so an
idle interface does not delay a SIGTERM by a whole read timeout.

Example::

    >>> s = SignalFlags()            # doctest: +SKIP
    >>> s.install(); ...; s.take_reload()   # doctest: +SKIP
"""

from __future__ import annotations

import os
import signal


class SignalFlags:
    def __init__(self) -> None:
        self.stop_requested = False
        self.stop_signal = 0
        self._reload = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._previous: dict[int, object] = {}
        self._previous_fd = -1

    def install(self) -> None:
        """Main thread only (Python's rule for signal handlers)."""
        self._previous_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        for sig, handler in ((signal.SIGTERM, self._on_stop), (signal.SIGINT, self._on_stop),
                             (signal.SIGHUP, self._on_reload)):
            self._previous[sig] = signal.signal(sig, handler)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
        signal.set_wakeup_fd(self._previous_fd)

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass

    def fileno(self) -> int:
        return self._r

    def drain(self) -> None:
        try:
            while os.read(self._r, 512):
                pass
        except BlockingIOError:
            pass

    def take_reload(self) -> bool:
        """True once per SIGHUP (several SIGHUPs before the loop looks count as one)."""
        r, self._reload = self._reload, False
        return r

    def _on_stop(self, signum, frame) -> None:
        self.stop_requested = True
        self.stop_signal = signum

    def _on_reload(self, signum, frame) -> None:
        self._reload = True
