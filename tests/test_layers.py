"""The package's dependency order, read from the source (no import is executed).

Layers, lowest first. A module may import modules of its own layer or of lower layers,
never of a higher one; the module graph has no cycle; and no module imports a private
(underscore) name from another subpackage (cross-package use goes through names that the
owning subpackage treats as its interface).
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "afdjax"

LAYERS = (
    ("leaves", {"_validate", "_json", "_random", "_plot", "_interrupt"}),
    ("model inputs", {"_workload", "_latency", "_stage"}),
    ("closed forms", {"_theory"}),
    ("step models", {"_step"}),
    ("engine", {"_engine"}),
    ("gradients", {"_grad"}),
    ("data and hardware", {"_data", "_hardware"}),
    ("fitting", {"_fit"}),
    ("specs", {"_specs"}),
    ("applications", {"_provision", "_sweep", "_profile", "_compare", "_serve"}),
    ("cli", {"_cli"}),
)
LAYER_OF = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}
MAX_LINES = 700


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(module: str, path: pathlib.Path):
    """``(target module, imported names, line)`` for every afdjax-internal import."""
    is_package = path.name == "__init__.py"
    base = module.split(".") if module else []
    if not is_package:
        base = base[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and (node.module == "afdjax" or node.module.startswith("afdjax.")):
                    target = node.module.split(".")[1:]
                else:
                    continue
            else:
                up = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = up + (node.module.split(".") if node.module else [])
            names = [a.name for a in node.names]
            if not node.module and node.level:  # "from . import x": x are modules or names
                yield ".".join(target), names, node.lineno
            else:
                yield ".".join(target), names, node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("afdjax."):
                    yield ".".join(a.name.split(".")[1:]), [], node.lineno


def _top(module: str) -> str:
    return module.split(".")[0] if module else ""


def test_every_module_has_a_layer():
    missing = sorted({_top(m) for m, _ in _modules() if m and _top(m) not in LAYER_OF})
    assert not missing, f"modules with no layer in tests/test_layers.py: {missing}"


def test_no_import_goes_up_a_layer_or_reaches_private_names():
    problems = []
    for module, path in _modules():
        if not module:  # afdjax/__init__.py re-exports everything
            continue
        src = _top(module)
        for target, names, line in _imports(module, path):
            dst = _top(target)
            if not dst or dst == src:
                continue
            if dst not in LAYER_OF:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports unknown afdjax.{target}")
                continue
            if LAYER_OF[dst] > LAYER_OF[src]:
                problems.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line}: {LAYERS[LAYER_OF[src]][0]} module "
                    f"{module} imports {target} ({LAYERS[LAYER_OF[dst]][0]})"
                )
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private:
                problems.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports private "
                    f"{', '.join(private)} from afdjax.{target}"
                )
    assert not problems, "\n".join(problems)


def test_module_graph_has_no_cycle():
    modules = dict(_modules())
    graph = {m: set() for m in modules}
    for module, path in modules.items():
        if not module:
            continue
        for target, names, _ in _imports(module, path):
            if target in modules and target != module:
                graph[module].add(target)
            for n in names:  # "from .pkg import module"
                sub = f"{target}.{n}" if target else n
                if sub in modules and sub != module:
                    graph[module].add(sub)
    # a package's __init__ re-exporting its own modules is not a cycle through them
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if module_is_own_init(m, n):
                continue
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n) :] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    def module_is_own_init(m, n):
        return n != "" and m.startswith(n + ".")  # a module importing its own package's __init__

    for m in sorted(graph):
        if m and m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_source_file_over_the_line_limit():
    long = [
        f"{p.relative_to(PACKAGE.parent)}: {n}"
        for p in sorted(PACKAGE.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_top_level_init_only_re_exports():
    """Only the docstring, imports, the lazy re-export table with its PEP 562 ``__getattr__``
    and ``__dir__``, and an ``if TYPE_CHECKING:`` block of ``import x as x`` re-exports."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            assert node.name in ("__getattr__", "__dir__"), f"afdjax/__init__.py line {node.lineno}: {node.name}"
            continue
        if isinstance(node, ast.If):
            assert isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING" and not node.orelse
            for sub in node.body:
                assert isinstance(sub, (ast.ImportFrom, ast.AnnAssign)), f"line {sub.lineno}: only imports"
                if isinstance(sub, ast.ImportFrom):
                    assert all(a.asname == a.name for a in sub.names), f"line {sub.lineno}: use 'import x as x'"
            continue
        ok = isinstance(node, (ast.ImportFrom, ast.Import, ast.Expr, ast.Try, ast.Assign))
        assert ok, f"afdjax/__init__.py line {node.lineno}: only imports, the docstring and __version__"
        if isinstance(node, ast.ImportFrom) and node.level:
            assert all(a.asname == a.name for a in node.names), f"line {node.lineno}: use 'import x as x'"
