"""How the command line fails: user errors as one line with exit code 2, interrupts with
exit code 130 (SIGINT) or 143 (SIGTERM), bugs as one line with exit code 1 (a traceback
with ``AFDJAX_DEBUG=1``). The interrupt line is :func:`interrupt_message`; a command that
keeps finished work adds how to resume with :func:`set_interrupt_hint`."""

from __future__ import annotations

import signal
import sys

_interrupt_hint: str | None = None


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def one_line_warning(message, category, filename, lineno, file=None, line=None):
    """``warnings.showwarning`` replacement: ``afdjax: warning: ...`` on stderr, one line."""
    print(f"afdjax: warning: {message}", file=sys.stderr)


def set_interrupt_hint(text: str | None) -> None:
    """What the interrupt line adds after ``afdjax: interrupted; `` (e.g. how to resume a
    sweep); ``None`` for nothing. Set it before the work that it describes starts."""
    global _interrupt_hint
    _interrupt_hint = text


def interrupt_message(signum: int = signal.SIGINT) -> str:
    """The one line printed when a command is interrupted: ``afdjax: interrupted`` (SIGINT)
    or ``afdjax: interrupted (SIGTERM)``, then ``; `` and the hint if a command set one."""
    line = "afdjax: interrupted" if signum == signal.SIGINT else f"afdjax: interrupted ({signal.Signals(signum).name})"
    return f"{line}; {_interrupt_hint}" if _interrupt_hint else line


def run_guarded(command, args) -> int:
    """``command(args)``, with every error turned into one line on stderr and an exit code.

    A ``KeyboardInterrupt`` (in-process use; the program itself ends on SIGINT through
    :mod:`._signals` before Python raises one) gives the interrupt line and 130."""
    try:
        return command(args)
    except (CliError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        print(f"afdjax: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupt_message(), file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not a user error: still one line unless debugging
        import os

        if os.environ.get("AFDJAX_DEBUG"):
            raise
        print(
            f"afdjax: internal error: {type(err).__name__}: {err} (set AFDJAX_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
