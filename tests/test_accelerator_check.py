"""experiments/accelerator_check.py runs end to end on a tiny size (here on the CPU, where the
device-against-CPU comparison must be exact) and writes its JSON report as it goes."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "accelerator_check.py"


@pytest.mark.slow  # 27 s; run it before a device session: pytest -m slow tests/test_accelerator_check.py
def test_accelerator_check_tiny(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("accelerator_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "check.json"
    assert module.main(["--size", "tiny", "--out", str(out), "--json"]) == 0
    report = json.loads(out.read_text())
    printed = json.loads(capsys.readouterr().out)
    phases = {"correctness", "engine", "gradient", "sweep", "serve"}
    assert printed["phases"].keys() == report["phases"].keys() == phases
    check = report["phases"]["correctness"]
    assert check["passed"] and len(check["cases"]) == 2
    for case in check["cases"]:  # same backend: identical numbers
        assert max(case["max_relative_difference"].values()) == 0.0
        assert case["best_ratio_device"] == case["best_ratio_cpu"]
    assert report["phases"]["engine"]["effective_slot_steps_per_s"] > 0 and report["phases"]["engine"]["max_ratio"] == 4
    assert report["phases"]["gradient"]["gradients_finite"]
    assert report["phases"]["sweep"]["complete"] and report["phases"]["sweep"]["points"] == 16
    assert report["phases"]["serve"]["effective_slot_steps_per_s"] > 0 and report["phases"]["serve"]["max_ratio"] == 4
