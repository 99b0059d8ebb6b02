"""How the command line fails: user errors as one line with exit code 2, interrupts with
exit code 130, bugs as one line with exit code 1 (a traceback with ``AFDJAX_DEBUG=1``)."""

from __future__ import annotations

import sys


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def one_line_warning(message, category, filename, lineno, file=None, line=None):
    """``warnings.showwarning`` replacement: ``afdjax: warning: ...`` on stderr, one line."""
    print(f"afdjax: warning: {message}", file=sys.stderr)


def run_guarded(command, args) -> int:
    """``command(args)``, with every error turned into one line on stderr and an exit code."""
    try:
        return command(args)
    except (CliError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        print(f"afdjax: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("afdjax: interrupted", file=sys.stderr)
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
