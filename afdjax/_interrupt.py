"""Keyboard interrupts that are never lost during a long library call.

In a notebook or a script, Ctrl-C (a kernel interrupt) raises ``KeyboardInterrupt`` in the
main thread at the next Python bytecode; JAX's compilation and its waits for results poll
for signals, so a long [`simulate`][afdjax.simulate] or [`sweep`][afdjax.sweep] answers within a
fraction of a second. But an interrupt that lands while the garbage collector runs JAX's
callback (``_xla_gc_callback``), a ``__del__`` method or a weakref callback (``finalize``)
is printed as ``Exception ignored in ...`` and dropped, and the call then runs to its end
(measured: 5 of 40 interrupts during compilation). ``deliver_interrupts`` closes that
gap around the engine's runs: inside it, ``sys.unraisablehook`` catches such a dropped
interrupt and SIGINT is sent again 20 ms later (by then outside the callback); one that
was swallowed some other way is raised when the block ends. The ``KeyboardInterrupt`` that
leaves the block carries a short traceback (the block and its callers, not the hundred
frames inside JAX's tracing and compilation, which a notebook takes seconds to format).

It changes nothing unless it runs in the main thread and SIGINT has Python's default
handler (``signal.default_int_handler``, which Jupyter kernels also use while a cell
runs); the command line installs its own handlers (``afdjax._cli._signals``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

REDELIVER_S = 0.02

_depth = 0
_pending = False
_previous_unraisablehook = None


def _redeliver(signum: int) -> None:
    if _pending and _depth:
        os.kill(os.getpid(), signum)


def _unraisable(unraisable) -> None:
    """``sys.unraisablehook`` inside the block: an interrupt that Python is about to drop
    (raised in a gc callback, a ``__del__``, a weakref callback) is sent again in a moment."""
    if _depth and _pending and issubclass(unraisable.exc_type, KeyboardInterrupt):
        timer = threading.Timer(REDELIVER_S, _redeliver, (signal.SIGINT,))
        timer.daemon = True
        timer.start()
        return
    (_previous_unraisablehook or sys.__unraisablehook__)(unraisable)


def _handler(signum, frame) -> None:
    global _pending
    _pending = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def deliver_interrupts():
    """Within the block, a SIGINT always ends it with ``KeyboardInterrupt`` (see the module
    docstring). Re-entrant; a no-op outside the main thread or under a custom handler."""
    global _depth, _pending, _previous_unraisablehook
    if threading.current_thread() is not threading.main_thread() or (
        _depth == 0 and signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    if _depth == 0:
        _pending = False
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _unraisable
        signal.signal(signal.SIGINT, _handler)
    _depth += 1
    try:
        try:
            yield
        except KeyboardInterrupt as err:
            if _depth > 1:
                raise
            # A fresh, short traceback (from here up to the caller): the frames inside JAX
            # say nothing to the user, and IPython takes seconds to format their hundred;
            # dropping them also frees what they hold (a notebook keeps the last error).
            err.__traceback__ = None
            raise KeyboardInterrupt from None
        if _depth == 1 and _pending:  # an interrupt was swallowed after all: raise it now
            raise KeyboardInterrupt
    finally:
        _depth -= 1
        if _depth == 0:
            _pending = False
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if sys.unraisablehook is _unraisable:
                sys.unraisablehook = _previous_unraisablehook
            _previous_unraisablehook = None
