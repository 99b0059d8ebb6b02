"""Output paths and display helpers shared by the commands.

Every output path is checked before any work (:func:`check_output_path` for a file,
:func:`check_output_dir` for a folder): a run that cannot write its result refuses at
once with one line, instead of failing after the simulation.
"""

from __future__ import annotations

import os
import tempfile

from ._errors import CliError


def _label(option: str) -> str:
    return f"{option} " if option else ""


def _writable_dir(folder: str) -> bool:
    """Whether a file can be created in ``folder``: permission bits (``os.access``) and,
    because those do not see every read-only file system, a temporary file made and removed."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".afdjax-write-test-"):
            pass
    except OSError:
        return False
    return True


def check_output_path(path: str, option: str = "") -> None:
    """Refuse, before any work, a file path that cannot be written: its folder does not
    exist, is not a folder or is not writable, or the path is a folder or a file that is
    not writable. ``option`` (e.g. ``"--plot"``) names it in the message."""
    name = _label(option)
    if not str(path).strip():
        raise CliError(f"{name}needs a file path, got an empty one")
    full = os.path.abspath(os.path.expanduser(path))
    folder = os.path.dirname(full)
    if os.path.isdir(full):
        raise CliError(f"cannot write {name}{path!r}: it is a folder; give a file path")
    if not os.path.exists(folder):
        raise CliError(f"cannot write {name}{path!r}: folder {folder!r} does not exist")
    if not os.path.isdir(folder):
        raise CliError(f"cannot write {name}{path!r}: {folder!r} is not a folder")
    if os.path.exists(full) and not os.access(full, os.W_OK):
        raise CliError(f"cannot write {name}{path!r}: the file exists and is not writable")
    if not _writable_dir(folder):
        raise CliError(f"cannot write {name}{path!r}: folder {folder!r} is not writable (permissions or read-only)")


def check_plot_path(path: str) -> None:
    """Refuse, before any work, a ``--plot`` path that cannot be written."""
    check_output_path(path, "--plot")


def check_output_dir(path: str, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that cannot be used: an existing path
    that is not a folder or not writable, or a new one whose nearest existing parent is
    not a writable folder (the folder and its missing parents are created later)."""
    name = _label(option)
    if not str(path).strip():
        raise CliError(f"{name}needs a folder path, got an empty one")
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(full):
        if not os.path.isdir(full):
            raise CliError(f"cannot use {name}{path!r}: it exists and is not a folder")
        if not _writable_dir(full):
            raise CliError(f"cannot use {name}{path!r}: the folder is not writable (permissions or read-only)")
        return
    parent = os.path.dirname(full)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise CliError(f"cannot create {name}{path!r}: {parent!r} is not a folder")
    if not _writable_dir(parent):
        raise CliError(f"cannot create {name}{path!r}: {parent!r} is not writable (permissions or read-only)")


def write_text(path: str, text: str) -> None:
    """Write a text file (UTF-8) into an existing folder."""
    check_output_path(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def short_spec(spec: str) -> str:
    """A spec with any file path shortened to its base name (for plot titles)."""
    from .._specs import split_spec_path

    head, sep, rest = spec.partition(":")
    if sep and head in ("trace", "fitted"):
        path, options = split_spec_path(rest, spec)
        return f"{head}:{os.path.basename(path)}{',' if options else ''}{options}"
    first, comma, options = spec.partition(",")
    return f"{os.path.basename(first)}{comma}{options}" if first.endswith(".toml") else spec


def split_names(text: str | None) -> tuple[str, ...] | None:
    """``"a, b,c"`` -> ``("a", "b", "c")``; ``None`` or empty -> ``None``."""
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else None
