"""The ``afdjax`` command line: a thin host-side shell around the library.

Layout: ``_parser`` (argument types and every command's options), ``_errors`` (one-line
errors and exit codes), ``_signals`` (SIGINT and SIGTERM: one line, exit code 130 / 143),
``_files`` (output paths), and one module per command group:
``_cmd_simulate``, ``_cmd_provision`` (provision, verify), ``_cmd_hardware`` (hardware,
profile), ``_cmd_fit`` and ``_cmd_sweep``. Every number and decision a command prints
comes from a library call; the commands parse, call and print.

Nothing here imports JAX at module import time: the commands import the library inside
their functions, so ``--help``, ``--version`` and argument errors answer at once.
"""

from __future__ import annotations

import sys

from ._cmd_compare import cmd_compare
from ._cmd_fit import cmd_fit
from ._cmd_hardware import cmd_hardware, cmd_profile
from ._cmd_predict import cmd_predict
from ._cmd_provision import cmd_provision, cmd_verify
from ._cmd_serve import cmd_capacity, cmd_serve
from ._cmd_simulate import cmd_simulate
from ._cmd_sweep import cmd_sweep
from ._errors import CliError, one_line_warning, run_guarded, set_interrupt_hint
from ._parser import build_parser, parse_batch_sizes, parse_ratios
from ._signals import exit_on_signals

__all__ = ["CliError", "build_parser", "main", "parse_batch_sizes", "parse_ratios"]

COMMANDS = {
    "simulate": cmd_simulate,
    "provision": cmd_provision,
    "verify": cmd_verify,
    "sweep": cmd_sweep,
    "hardware": cmd_hardware,
    "profile": cmd_profile,
    "fit": cmd_fit,
    "compare": cmd_compare,
    "predict": cmd_predict,
    "serve": cmd_serve,
    "capacity": cmd_capacity,
}


def main(argv=None, *, handle_signals: bool | None = None) -> int:
    """The ``afdjax`` console entry point: run one command, return its exit code
    (0 success, 2 user error, 1 internal error, 130 interrupted).

    ``handle_signals`` (default: ``argv is None``, i.e. when run as the program): SIGINT
    and SIGTERM end the process at once with one line and exit code 130 / 143
    (:mod:`._signals`). In-process calls with an argument list keep Python's own
    ``KeyboardInterrupt``, reported as one line and 130."""
    if handle_signals is None:
        handle_signals = argv is None
    if handle_signals:
        exit_on_signals()  # first, before anything imports JAX
    import warnings

    set_interrupt_hint(None)
    parser = build_parser()
    previous, warnings.showwarning = warnings.showwarning, one_line_warning
    try:
        return run_guarded(lambda argv: _dispatch(parser, argv), argv)
    finally:
        warnings.showwarning = previous


def _dispatch(parser, argv) -> int:
    args = parser.parse_args(argv)
    if getattr(args, "warmup", 0) is None:  # the step model's default, recorded as given
        from .._step import as_step_model

        args.warmup = as_step_model(None, args.micro_batches).default_warmup_steps()
    if args.version:
        from .. import __version__

        print(f"afdjax {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    if args.command not in COMMANDS:
        raise CliError(f"unknown command {args.command!r}")
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
