"""Every notebook in notebooks/ is executed, so none can rot.

A notebook's Monte Carlo sizes live in one cell tagged ``parameters`` (the papermill
convention). The test runs every cell as written, with one cell added after that one which
makes the simulations small (``SMALL``): the code paths are the same, only the
number of steps, replicas and timing repeats shrink, so the suite stays fast. The numbers the
notebooks print and quote come from their committed, full-size execution.
"""

import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))

SMALL = {
    "num_steps": 300,
    "num_replicas": 2,
    "profile_repeats": 1,
    "observation_steps": 300,
    "fit_steps": 200,
    "n_bootstrap": 10,
}
"""The sizes every notebook runs with here, for the names its parameters cell defines."""


def _make_small(nb) -> None:
    """Add, after the ``parameters`` cell, a cell setting the names it defines to ``SMALL``."""
    nbformat = pytest.importorskip("nbformat")
    for i, cell in enumerate(nb.cells):
        if "parameters" in cell.metadata.get("tags", ()):
            names = [name for name in SMALL if name in cell.source]
            assert names, "the parameters cell defines none of " + ", ".join(SMALL)
            code = "\n".join(f"{name} = {SMALL[name]!r}" for name in names)
            nb.cells.insert(i + 1, nbformat.v4.new_code_cell(code))
            return


@pytest.mark.slow  # about 3 x 1 minute of compilation; test_notebook_is_executed_and_current runs by default
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    _make_small(nb)
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()  # raises CellExecutionError on any failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_executed_and_current(path):
    """The cheap default check: the committed notebook was executed without errors,
    its code compiles, it has a parameters cell, and every ``afdjax.NAME`` it uses exists
    (a renamed or removed public name fails here without running the notebook)."""
    import ast

    import afdjax

    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    printing = [i for i, c in enumerate(code) if "print(" in c.source or "display(" in c.source]
    assert all(code[i].outputs for i in printing), "a cell that prints has no output: execute the notebook"
    assert not [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert any("parameters" in c.metadata.get("tags", ()) for c in code), "no cell tagged parameters"
    used = set()
    for c in code:
        tree = ast.parse(c.source)
        nodes = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
        used |= {n.attr for n in nodes if getattr(n.value, "id", "") == "afdjax"}
    assert not sorted(n for n in used if not hasattr(afdjax, n))


def test_there_are_notebooks():
    assert any(p.name.startswith("01_") for p in NOTEBOOKS)
