"""Calibrate afdjax on the FastAFD GB200 ratio sweep, with and without per-layer stragglers.

Data: ``afdjax/data/fastafd_ratio_sweep.csv`` (55 measured rows, sources in its header):
Qwen3 on GB200 NVL72, one 4-GPU FFN tray and ``A = 3 .. 16`` attention trays (``4 A``
attention GPUs, each one data-parallel attention worker), fixed input of 16K / 32K / 64K /
128K tokens with ``b = 50 / 25 / 12 / 6`` requests per attention GPU, two micro-batches,
median step time.

Model mapping: one attention GPU is one Attention instance (``r = 4 A``, ``B = b``), the FFN
tray one FFN instance; workload ``fixed:prefill=ISL,decode=16`` (the source's runs generate
16 tokens, so the context is the input length throughout); the observed quantity is the step
time in ms (rows stating only tokens/s/GPU are converted with the source's identity
``tau = A b / ((A + 1) T)``); the default ``Barrier()`` step (``--pipeline``: ``Pipeline(2)``,
about 15 times slower with noise); one barrier per step (``num_layers`` unset).

Two fits, both started from the data (:func:`afdjax.calibrate` without ``latency``; each
held-out fit from its own rows), same folds and random numbers:

* without the new terms: ``alpha_a, beta_a, alpha_f, beta_f``;
* with per-layer stragglers: the same and ``attention_cv``.

Prints the ``K``-fold held-out RMS relative error of the step time of both, for one fit of all
rows (default) or one fit per input length (``--per-context``, pooled error).

Usage: ``PYTHONPATH=. python experiments/fastafd_calibration.py [--per-context] [--folds 5]``
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import time

import jax
import numpy as np

import afdjax

DATA = pathlib.Path(afdjax.__file__).parent / "data" / "fastafd_ratio_sweep.csv"
WITHOUT = ("alpha_a", "beta_a", "alpha_f", "beta_f")
WITH = WITHOUT + ("attention_cv",)


def load(contexts=None):
    """``(RatioSweep of step times in ms, {label: Workload}, rows)`` of the bundled sweep."""
    rows = list(csv.DictReader(line for line in DATA.read_text().splitlines() if not line.startswith("#")))
    if contexts is not None:
        rows = [r for r in rows if int(r["context_tokens"]) in contexts]
    ratio, batch, label, step = [], [], [], []
    for r in rows:
        a, b = int(r["tray_ratio"]), int(r["batch_per_attention_gpu"])
        tau = (
            float(r["step_time_ms"])
            if r["step_time_ms"]
            else 1e3 * a * b / ((a + 1) * float(r["tokens_per_s_per_gpu"]))
        )
        ratio.append(int(r["attention_gpus"]))
        batch.append(b)
        label.append(f"fixed:prefill={r['context_tokens']},decode=16")
        step.append(tau)
    sweep = afdjax.RatioSweep(
        ratio=np.asarray(ratio),
        batch_size=np.asarray(batch),
        workload=tuple(label),
        value=np.asarray(step),
        quantity="step_time",
    )
    workloads = {s: afdjax.parse_workload_spec(s) for s in set(label)}
    return sweep, workloads, rows


def compare(sweep, workloads, *, folds, num_steps, num_replicas, seed=0, step_model=None):
    """``{label: Calibration}`` of the fits without and with ``attention_cv``: both start from
    the data (:func:`afdjax.calibrate` without ``latency``: the mean-field starts, each held-out
    fit from its own rows) and share the folds and the simulation's random numbers."""
    return {
        label: afdjax.calibrate(
            sweep,
            workloads,
            None,
            names,
            key=jax.random.key(seed),
            num_steps=num_steps,
            num_replicas=num_replicas,
            folds=folds,
            step_model=step_model,
        )
        for label, names in (("without", WITHOUT), ("with attention_cv", WITH))
    }


def report(fits) -> None:
    for label, cal in fits.items():
        h = cal.held_out
        est = {n: f"{v:.4g}" for n, v in cal.estimate.items()}
        print(
            f"  {label:<18} held-out RMS {100 * h.rms_relative_error:5.2f} %"
            f"  max {100 * h.max_abs_relative_error:5.2f} %"
            f"  in-sample max {100 * cal.max_abs_rel_residual:5.2f} %  fit {est}"
        )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--pipeline", action="store_true", help="Pipeline(2) instead of the barrier step")
    p.add_argument("--contexts", type=int, nargs="*", default=None, help="input lengths to keep (default: all)")
    p.add_argument("--per-context", action="store_true", help="one fit per input length (pooled held-out error)")
    a = p.parse_args(argv)
    step_model = afdjax.Pipeline(2) if a.pipeline else None
    kw = dict(folds=a.folds, num_steps=a.steps, num_replicas=a.replicas, step_model=step_model)
    t0 = time.time()
    if not a.per_context:
        sweep, workloads, _ = load(a.contexts)
        fits = compare(sweep, workloads, **kw)
        print(f"all rows jointly: {len(sweep)} rows, {a.folds}-fold, {a.steps} steps x {a.replicas} replicas")
        report(fits)
    else:
        pooled = {}
        for ctx in a.contexts or (16384, 32768, 65536, 131072):
            sweep, workloads, _ = load([ctx])
            fits = compare(sweep, workloads, **kw)
            print(f"input {ctx}: {len(sweep)} rows, {a.folds}-fold, {a.steps} steps x {a.replicas} replicas")
            report(fits)
            for label, cal in fits.items():
                pooled.setdefault(label, []).append(cal.held_out.relative_error)
        for label, errs in pooled.items():
            e = np.concatenate(errs)
            print(f"pooled {label:<18} held-out RMS {100 * np.sqrt(np.mean(e**2)):5.2f} % over {e.size} rows")
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
