"""How the program ends on SIGINT (Ctrl-C) and SIGTERM: one line, exit code 130 / 143, at once.

Letting Python raise ``KeyboardInterrupt`` is not safe once JAX runs: the interpreter's
shutdown then runs over XLA threads that are still computing (a segmentation fault at
exit), and an interrupt that lands in JAX's garbage-collector callback is printed as
``Exception ignored in: <function _xla_gc_callback>`` and dropped (the command runs on).
So :func:`exit_on_signals`, called by ``main`` before anything imports JAX, replaces both
signals' handlers: the first signal flushes stdout and stderr, writes
:func:`~._errors.interrupt_message` (with the command's resume hint) and leaves with
``os._exit(128 + signal)``, without interpreter finalisation. Work already on disk stays:
a sweep writes each chunk to a temporary name and renames it, so a chunk is either
finished or absent.

Two paths deliver a signal, whichever comes first: the Python handler (main thread, at
the next bytecode or inside a wait that polls for signals, as JAX's compilation and
``block_until_ready`` do) and a watcher thread woken through ``signal.set_wakeup_fd`` (for
a main thread held in C code that does not poll). A second signal while exiting is
ignored; a stuck flush (a full pipe) is cut off by a timer that exits after
``_BACKSTOP_S`` seconds. The only unprotected moment is interpreter start-up before
``main`` runs (a few tens of milliseconds; JAX is not imported by then).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from ._errors import interrupt_message

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_BACKSTOP_S = 1.5

_exit_lock = threading.Lock()
_exit_owner: int | None = None
_installed = False


def _exit_now(signum: int) -> None:
    """Print the interrupt line and end the process with ``128 + signum`` (first caller only)."""
    global _exit_owner
    if not _exit_lock.acquire(blocking=False):  # already exiting
        if _exit_owner is not None and _exit_owner != threading.get_ident():
            threading.Event().wait()  # another thread is exiting: hold this one until it does
        return  # a second signal inside the exiting thread's own handler
    _exit_owner = threading.get_ident()
    code = 128 + signum
    backstop = threading.Timer(_BACKSTOP_S, os._exit, (code,))
    backstop.daemon = True
    backstop.start()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # closed, a broken pipe, or a write interrupted in this very thread
            pass
    try:
        lead = "\n" if os.isatty(2) else ""  # after a progress bar or the terminal's ^C
        os.write(2, f"{lead}{interrupt_message(signum)}\n".encode(errors="replace"))
    except OSError:
        pass
    os._exit(code)


def _handler(signum, frame) -> None:
    _exit_now(signum)


def _watch(fd: int) -> None:
    while True:
        try:
            data = os.read(fd, 64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            if signum in SIGNALS:
                _exit_now(signum)


def exit_on_signals() -> bool:
    """Make SIGINT and SIGTERM end this process at once (see the module docstring).

    For the program's main thread only (returns ``False`` elsewhere, changing nothing);
    the handlers stay for the life of the process. Returns ``True`` once installed."""
    global _installed
    if _installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum in SIGNALS:
        signal.signal(signum, _handler)
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except (ValueError, OSError):  # the Python handlers alone still work
        os.close(read_fd)
        os.close(write_fd)
    else:
        threading.Thread(target=_watch, args=(read_fd,), name="afdjax-signals", daemon=True).start()
    _installed = True
    return True
