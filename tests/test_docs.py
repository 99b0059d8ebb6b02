"""The documentation site against the package: every export in the API reference, documented.

* Every name in ``afdjax.__all__`` has exactly one ``::: afdjax.NAME`` entry in ``docs/api/*.md``
  (the pages mkdocstrings renders), and no entry names something that is not exported.
* Every export has a non-empty docstring (constants: the string literal after their assignment,
  which mkdocstrings shows), and every argument it takes is documented: a function's in its
  ``Arguments:`` section, a class's in its ``Arguments:`` or ``Attributes:`` section or as a field
  with its own docstring. The argument lists come from the runtime signatures, so a new argument
  without a line in the docstring fails here.
* Every ``>>>`` example in the API pages and in the exported names' docstrings runs and prints
  what it says (doctest).
* The CLI reference is generated from the parser and names every subcommand.

The site itself (``mkdocs build --strict``: broken references, missing pages) is built by
``.ci/run``; these checks need no documentation toolchain.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import itertools
import re
import sys
import textwrap
from pathlib import Path

import pytest

import afdjax

REPO = Path(__file__).resolve().parents[1]
API = REPO / "docs" / "api"
ENTRY = re.compile(r"^::: afdjax\.(\w+)\s*$", re.MULTILINE)
EXAMPLE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _entries() -> list[str]:
    return [name for page in sorted(API.glob("*.md")) for name in ENTRY.findall(page.read_text())]


def _section_names(doc: str, titles: tuple[str, ...]) -> set[str]:
    """Names listed in the Google-style sections ``titles`` of ``doc`` (``name: text`` items)."""
    names: set[str] = set()
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() not in titles:
            continue
        base = len(line) - len(line.lstrip())
        for item in lines[i + 1 :]:
            if item.strip() and len(item) - len(item.lstrip()) <= base:
                break
            m = re.match(r"^\s*\**(\w+)(?: \([^)]*\))?:", item)
            if m and len(item) - len(item.lstrip()) == base + 4:
                names.add(m.group(1))
    return names


def _constant_docstring(name: str) -> str:
    """The string literal right after ``NAME = ...`` in the module that defines ``NAME``."""
    module = importlib.import_module(f"afdjax.{afdjax._MODULE_OF[name]}")
    for path in [Path(module.__file__)] + sorted(Path(module.__file__).parent.glob("_*.py")):
        body = ast.parse(path.read_text()).body
        for stmt, after in itertools.pairwise(body):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [getattr(stmt, "target", None)]
            named = any(isinstance(t, ast.Name) and t.id == name for t in targets)
            if named and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                return str(after.value.value)
    return ""


def _documented_fields(cls) -> set[str]:
    """Fields of ``cls`` (and its bases) with an attribute docstring in their class body."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("afdjax"):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for stmt, after in itertools.pairwise(body):
            target = getattr(stmt, "target", None)
            if isinstance(target, ast.Name) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                names.add(target.id)
    return names


def _parameters(obj) -> list[str]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p.name for p in sig.parameters.values() if p.name not in ("self", "cls")]


def test_every_export_has_one_api_entry():
    entries = _entries()
    duplicates = sorted({n for n in entries if entries.count(n) > 1})
    assert not duplicates, f"listed twice in docs/api: {duplicates}"
    assert sorted(set(afdjax.__all__) - set(entries)) == [], "exports missing from docs/api"
    assert sorted(set(entries) - set(afdjax.__all__)) == [], "docs/api entries that are not exported"


def test_every_export_is_documented_with_its_arguments():
    problems = []
    for name in afdjax.__all__:
        obj = getattr(afdjax, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            if len(_constant_docstring(name).strip()) < 10:
                problems.append(f"{name}: no docstring after its assignment")
            continue
        doc = inspect.getdoc(obj) or ""
        if len(doc.strip()) < 10:
            problems.append(f"{name}: no docstring")
            continue
        documented = _section_names(doc, ("Arguments:", "Args:"))
        if inspect.isclass(obj):
            documented |= _section_names(doc, ("Attributes:",)) | _documented_fields(obj)
        missing = [p for p in _parameters(obj) if p not in documented]
        if missing:
            problems.append(f"{name}: arguments not documented: {missing}")
    assert not problems, "\n".join(problems)


def _examples():
    for page in sorted(API.glob("*.md")):
        for k, block in enumerate(EXAMPLE.findall(page.read_text())):
            if ">>>" in block:
                yield pytest.param(block, id=f"{page.stem}-{k}")


@pytest.mark.parametrize("block", list(_examples()))
def test_api_page_examples_run(block):
    parser = doctest.DocTestParser()
    test = parser.get_doctest(block, {}, "docs/api", "docs/api", 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = []
    runner.run(test, out=out.append)
    assert runner.failures == 0, "".join(out)


def test_docstring_examples_run():
    """The ``Examples:`` of the exported names' docstrings (shown on the API pages) run as written."""
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out, ran = [], []
    for name in afdjax.__all__:
        obj = getattr(afdjax, name)
        doc = inspect.getdoc(obj) if (inspect.isclass(obj) or inspect.isfunction(obj)) else None
        if doc and ">>>" in doc:
            runner.run(parser.get_doctest(doc, {"afdjax": afdjax}, name, name, 0), out=out.append)
            ran.append(name)
    assert runner.failures == 0, "".join(out)
    assert len(ran) >= 25, ran


def test_every_api_page_has_an_example():
    pages = sorted(p.stem for p in API.glob("*.md") if ENTRY.search(p.read_text()))
    with_examples = sorted({p.stem for p in API.glob("*.md") if ">>>" in p.read_text()})
    assert pages == with_examples


def test_cli_reference_is_generated_from_the_parser():
    sys.path.insert(0, str(REPO / "docs" / "hooks"))
    try:
        import cli_reference
    finally:
        sys.path.remove(str(REPO / "docs" / "hooks"))
    text = cli_reference.render()
    for command in ("simulate", "provision", "verify", "fit workload", "fit latency", "fit throughput", "sweep"):
        assert f"`afdjax {command}`" in text
    for command in ("hardware", "profile", "compare", "serve", "capacity", "predict"):
        assert f"`afdjax {command}`" in text
    assert "<code>--micro-batches M</code>" in text
    assert cli_reference.MARKER in (REPO / "docs" / "cli.md").read_text()
