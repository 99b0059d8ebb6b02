"""Numbers do not drift: saved outputs of the CLI (float32) and of public Python calls
(float64) against a fresh run, float64 bit for bit and float32 to 1e-6 relative.

The saved file was written by ``tests/golden/capture.py`` on the commit before the package
was restructured (issue 10). A deliberate change of a number (a bug fix) rewrites it with
the same script, and the commit says which numbers moved and why.
"""

from __future__ import annotations

import json
import math

import pytest
from golden.capture import GOLDEN, PYTHON_GROUPS, _cli_outputs, python_outputs


def _compare(saved, fresh, path, rtol, failures):
    if isinstance(saved, dict):
        assert isinstance(fresh, dict), path
        if set(saved) != set(fresh):
            failures.append(
                f"{path}: keys differ: missing {sorted(set(saved) - set(fresh))}, new {sorted(set(fresh) - set(saved))}"
            )
        for k in set(saved) & set(fresh):
            _compare(saved[k], fresh[k], f"{path}.{k}", rtol, failures)
    elif isinstance(saved, list):
        if not isinstance(fresh, list) or len(saved) != len(fresh):
            failures.append(f"{path}: {saved!r} != {fresh!r}")
            return
        for i, (a, b) in enumerate(zip(saved, fresh)):
            _compare(a, b, f"{path}[{i}]", rtol, failures)
    elif isinstance(saved, float) and isinstance(fresh, (int, float)) and not isinstance(fresh, bool):
        if math.isnan(saved) and math.isnan(fresh):
            return
        if rtol == 0.0:
            if saved != fresh:
                failures.append(f"{path}: {saved!r} != {fresh!r}")
        elif not math.isclose(saved, fresh, rel_tol=rtol, abs_tol=1e-12):
            failures.append(f"{path}: {saved!r} != {fresh!r} (rtol {rtol})")
    elif saved != fresh:
        failures.append(f"{path}: {saved!r} != {fresh!r}")


def _saved():
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize(
    "group",
    # the fits group (every family on a 19k-row trace, a bootstrap) is the slowest: -m slow
    [pytest.param(g, marks=pytest.mark.slow) if g == "fits" else g for g in sorted(PYTHON_GROUPS)],
)
def test_python_float64_bit_for_bit(group):
    fresh = python_outputs([group])
    saved = {k: v for k, v in _saved()["python_float64"].items() if k in fresh}
    failures = []
    _compare(saved, fresh, "python", 0.0, failures)
    assert not failures, "\n".join(failures[:40])


def test_the_groups_cover_every_saved_case():
    import inspect

    source = "".join(inspect.getsource(f) for f in PYTHON_GROUPS.values())
    missing = [k for k in _saved()["python_float64"] if f'"{k}"' not in source]
    assert not missing, missing


def test_cli_float32_within_1e6():
    failures = []
    _compare(_saved()["cli_float32"], _cli_outputs(), "cli", 1e-6, failures)
    assert not failures, "\n".join(failures[:40])
