"""Output paths and display helpers shared by the commands."""

from __future__ import annotations

import os

from ._errors import CliError


def check_output_path(path: str, what: str = "") -> None:
    """Refuse, before any work, a path whose folder does not exist."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"cannot write {what}{path!r}: folder {folder!r} does not exist")


def check_plot_path(path: str) -> None:
    """Refuse, before any work, a plot path whose folder does not exist."""
    check_output_path(path, "plot ")


def write_text(path: str, text: str) -> None:
    """Write a text file (UTF-8) into an existing folder."""
    check_output_path(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def short_spec(spec: str) -> str:
    """A spec with any file path shortened to its base name (for plot titles)."""
    head, sep, rest = spec.partition(":")
    if sep and head == "trace":
        path, comma, options = rest.partition(",")
        return f"trace:{os.path.basename(path)}{comma}{options}"
    first, comma, options = spec.partition(",")
    return f"{os.path.basename(first)}{comma}{options}" if first.endswith(".toml") else spec


def split_names(text: str | None) -> tuple[str, ...] | None:
    """``"a, b,c"`` -> ``("a", "b", "c")``; ``None`` or empty -> ``None``."""
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else None
