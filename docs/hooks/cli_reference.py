"""MkDocs hook: the CLI reference page is generated from afdjax's argument parser at build time.

``docs/cli.md`` holds a marker line, ``<!-- cli-reference -->``; this hook replaces it with one
section per command (``afdjax simulate``, ``afdjax fit workload``, ...): its description, its
usage line and a table of its options with their defaults, all read from
``afdjax._cli._parser.build_parser()``. An option added to the parser appears on the next build,
and the page cannot describe an option the parser does not have. ``render()`` is also called by
``tests/test_docs.py``.
"""

from __future__ import annotations

import argparse
import html

MARKER = "<!-- cli-reference -->"


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Yield ``(path, parser, help)`` for every command and subcommand, depth first, in parser order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, helps.get(name)
                yield from _commands(sub, (*path, name))


def _cell(text: str) -> str:
    return html.escape(" ".join(str(text).split())).replace("|", "&#124;").replace("*", "&#42;")


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            names = ", ".join(action.option_strings)
            if action.nargs != 0:
                names += " " + formatter._format_args(action, formatter._get_default_metavar_for_optional(action))
        else:
            names = formatter._format_args(action, formatter._get_default_metavar_for_positional(action))
        help_text = formatter._expand_help(action) if action.help else ""
        rows.append(f"| <code>{_cell(names)}</code> | {_cell(help_text)} |")
    if not rows:
        return []
    return ["| option | meaning |", "|---|---|", *rows]


def render() -> str:
    """The Markdown of every command's reference, from the parser as it is now."""
    from afdjax._cli._parser import build_parser

    parser = build_parser()
    out = [
        "## `afdjax`",
        "",
        _cell(parser.description or ""),
        "",
        "```text",
        parser.format_usage().strip(),
        "```",
        "",
        *_options_table(parser),
        "",
    ]
    for path, sub, help_text in _commands(parser):
        name = " ".join(("afdjax", *path))
        level = "#" * min(2 + len(path) - 1, 4)
        out += [f"#{level} `{name}`", ""]
        if sub.description or help_text:
            out += [_cell(sub.description or help_text), ""]
        usage = sub.format_usage().strip()
        out += ["```text", usage, "```", ""]
        out += _options_table(sub)
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):
    if MARKER in markdown:
        return markdown.replace(MARKER, render())
    return markdown
