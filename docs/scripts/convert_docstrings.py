"""One-off: rewrite afdjax's docstrings to the Google dialect that mkdocstrings renders.

``**Arguments:**`` bullet lists become ``Arguments:`` sections, ``**Returns:** ...`` becomes a
``Returns:`` section, ``**Fields:**`` an ``Attributes:`` section, and Sphinx roles
(``:class:`~afdjax.X```) become autorefs links (``[`X`][afdjax.X]``) or code spans. Only
docstrings change: the script checks that every module's AST, with docstrings blanked, is
unchanged. Usage: ``python docs/scripts/convert_docstrings.py [--only NAMES] FILES``.
"""

from __future__ import annotations

import ast
import re
import sys

sys.path.insert(0, ".")
import afdjax

EXPORTED = set(afdjax.__all__)
ROLE = re.compile(r":(class|func|meth|mod|attr|data|obj|exc):`(~?)([^`]+)`")
BULLET = re.compile(r"^(\s*)- ((?:``[^`]+``(?:, | and |/| or )?)+)(?:\s*\(([^)]*)\))?:\s?(.*)$")


def _link(match: re.Match) -> str:
    role, _tilde, target = match.groups()
    target = target.strip()
    bare = target.removeprefix("afdjax.").lstrip(".")
    parts = bare.split(".")
    if role == "mod":
        return f"``{target.lstrip('.')}``"
    if parts[0] in EXPORTED and all(not p.startswith("_") for p in parts):
        title = parts[-1] if target.startswith("~") or (len(parts) > 1 and role in ("meth", "attr")) else bare
        if role in ("func", "meth") and not title.endswith(")"):
            pass
        return f"[`{title}`][afdjax.{bare}]"
    return f"``{bare}``"


def _section(lines: list[str], i: int, header: str) -> tuple[list[str], int]:
    """Convert a bullet list starting after line i (the ``**X:**`` line) to a Google section."""
    base = re.match(r"^(\s*)", lines[i]).group(1)
    out = [f"{base}{header}"]
    j = i + 1
    while j < len(lines) and not lines[j].strip():
        j += 1
    items: list[tuple[list[str], list[str]]] = []
    while j < len(lines):
        line = lines[j]
        m = BULLET.match(line)
        if m and m.group(1) == base:
            names = re.findall(r"``([^`]+)``", m.group(2))
            kind = m.group(3)
            text = m.group(4)
            if kind:
                text = f"({kind}) {text}" if text else f"{kind}."
            items.append((names, [text]))
            j += 1
            continue
        if items and line.strip() and line.startswith(base + "  ") and not line.startswith(base + "- "):
            items[-1][1].append(line.strip())
            j += 1
            continue
        break
    if not items:
        raise ValueError(f"no bullets after {lines[i]!r}")
    for names, text in items:
        out.append(f"{base}    {names[0]}: {text[0]}".rstrip())
        out += [f"{base}        {t}" for t in text[1:]]
        out += [f"{base}    {name}: see ``{names[0]}``." for name in names[1:]]
    if j < len(lines) and lines[j].strip():
        out.append("")
    return out, j


def convert_text(doc: str) -> str:
    lines = doc.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        s = lines[i].strip()
        if s in ("**Arguments:**", "**Fields:**"):
            block, i = _section(lines, i, "Arguments:" if s == "**Arguments:**" else "Attributes:")
            out += block
            continue
        m = re.match(r"^(\s*)\*\*Returns:\*\*\s*(.*)$", lines[i])
        if m:
            base, first = m.groups()
            out.append(f"{base}Returns:")
            out.append(f"{base}    {first}")
            i += 1
            while i < len(lines) and lines[i].strip() and lines[i].startswith(base):
                out.append(f"{base}    {lines[i].strip()}")
                i += 1
            continue
        out.append(lines[i])
        i += 1
    return ROLE.sub(_link, "\n".join(out))


def _docstring_nodes(tree: ast.Module, only: set[str] | None):
    def body_docs(node, owner_ok):
        body = getattr(node, "body", [])
        body = body if isinstance(body, list) else []
        for k, stmt in enumerate(body):
            if (
                (
                    isinstance(stmt, ast.Expr)
                    and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, str)
                )
                and owner_ok
                and (k == 0 or isinstance(body[k - 1], (ast.Assign, ast.AnnAssign)))
            ):
                yield stmt.value
        for stmt in body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                ok = owner_ok if only is None else (owner_ok and node is not tree) or stmt.name in only
                if isinstance(node, ast.Module) and only is not None:
                    ok = stmt.name in only
                yield from body_docs(stmt, ok)

    yield from body_docs(tree, only is None)


def _blank(tree: ast.Module) -> str:
    for node in ast.walk(tree):
        body = getattr(node, "body", [])
        for stmt in body if isinstance(body, list) else []:
            if (
                isinstance(stmt, ast.Expr)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            ):
                stmt.value.value = ""
    return ast.dump(tree)


def convert_file(path: str, only: set[str] | None) -> bool:
    with open(path) as f:
        src = f.read()
    original = src
    tree = ast.parse(src)
    lines = src.split("\n")
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    edits = []
    for node in _docstring_nodes(tree, only):
        a = offsets[node.lineno - 1] + node.col_offset
        b = offsets[node.end_lineno - 1] + node.end_col_offset
        seg = src[a:b]
        new = convert_text(seg)
        if new != seg:
            edits.append((a, b, new))
    if not edits:
        return False
    for a, b, new in sorted(edits, reverse=True):
        src = src[:a] + new + src[b:]
    if _blank(ast.parse(original)) != _blank(ast.parse(src)):
        raise SystemExit(f"{path}: code changed, refusing")
    with open(path, "w") as f:
        f.write(src)
    return True


if __name__ == "__main__":
    args = sys.argv[1:]
    only = None
    if args and args[0] == "--only":
        only = set(args[1].split(","))
        args = args[2:]
    for p in args:
        if convert_file(p, only):
            print("converted", p)
