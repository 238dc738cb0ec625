"""Deferring Ctrl-C that arrives inside an optimizer step until the step is whole."""

from __future__ import annotations

import signal
import threading
from typing import Any


class InterruptGuard:
    """Defers Ctrl-C (SIGINT) that arrives inside an optimizer step until the step is complete.

    `fit` installs it for the whole run, in the main thread only (Python runs signal
    handlers nowhere else), and restores the previous handler afterwards. Outside a step
    the previous handler runs at once, so forward passes and callbacks stay interruptible;
    inside one (``in_step`` True) the signal is remembered and handed on by `end_step`.
    This costs two attribute writes per step and no copies of the weights.
    """

    def __init__(self) -> None:
        self.in_step = False
        self._pending: tuple[int, Any] | None = None
        self._previous: Any = None
        self._installed = False

    def install(self) -> InterruptGuard:
        """Take over SIGINT if this is the main thread; elsewhere do nothing."""
        if threading.current_thread() is threading.main_thread():
            try:
                previous = signal.getsignal(signal.SIGINT)
                if previous is None:
                    # a handler installed from C, which Python cannot put back: it keeps SIGINT, steps unguarded
                    return self
                self._previous = previous
                signal.signal(signal.SIGINT, self._handle)
                self._installed = True
            except (ValueError, OSError):  # an embedding that does not let Python own signals
                self._installed = False
        return self

    def uninstall(self) -> None:
        """Give SIGINT back to the handler that had it before `install`."""
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
        self.in_step = False

    def end_step(self) -> None:
        """Leave the step; a SIGINT that arrived during it is delivered now."""
        self.in_step = False
        if self._pending is not None:
            signum, frame = self._pending
            self._pending = None
            self._dispatch(signum, frame)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.in_step:
            self._pending = (signum, frame)
        else:
            self._dispatch(signum, frame)

    def _dispatch(self, signum: int, frame: Any) -> None:
        previous = self._previous
        if callable(previous):  # signal.default_int_handler raises KeyboardInterrupt
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt
