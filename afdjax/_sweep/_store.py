"""Sweep storage: the results folder, its manifest, Parquet chunk files, resume, reading.

``OUT/_manifest.json`` (grid, settings, key, version, grid hash) and one Parquet file per
finished chunk, ``OUT/chunk-gGGGG-PPPPPPPPP-nNNNNN.parquet``, written to a dot-prefixed
temporary name and then ``os.replace``-d. ``pd.read_parquet(OUT)`` reads every finished
chunk (pyarrow skips names starting with ``.`` or ``_``, so neither the manifest nor
temporary files are read as results). Resuming reads the ``point`` column of the
finished chunks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .._latency import COEFFICIENT_NAMES
from ._grid import WORKLOAD_FLOATS, _Group

MANIFEST = "_manifest.json"
METRICS = (
    "throughput_per_instance",
    "stderr",
    "attention_idle_fraction",
    "ffn_idle_fraction",
    "mean_cycle_time",
    "cycle_time_std",
    "link_idle_fraction",
    "pipeline_bubble_fraction",
)


def _theta(g: _Group, floats: dict) -> np.ndarray:
    if "_workload" in g.static:
        return np.full(len(floats["mu_d"]), float(g.static["_workload"].theta()))
    return floats["mu_p"] + floats["mu_d"]


def _table(g: _Group, points: np.ndarray, floats: dict, out: dict, settings: dict):
    import pyarrow as pa

    ratios = np.asarray(settings["ratios"])
    idx = ratios - 1
    n, k = len(points), len(ratios)
    thr = out["throughput_per_instance"][:, idx]  # (n, k)
    best = ratios[np.argmax(thr, axis=1)]
    rep = lambda a: np.repeat(np.asarray(a)[:n], k)
    cols = {
        "point": pa.array(rep(points), pa.int64()),
        "group": pa.array(np.full(n * k, g.index), pa.int32()),
        "workload": pa.array([g.static["workload"]] * (n * k), pa.string()),
        "prefill": pa.array([g.static["prefill"]] * (n * k), pa.string()),
        "trace": pa.array([g.static["trace"]] * (n * k), pa.string()),
        "tokens_per_step": pa.array(np.full(n * k, g.static["tokens_per_step"]), pa.int64()),
    }
    for name in WORKLOAD_FLOATS:
        cols[name] = pa.array(rep(floats[name][:n]), pa.float64())
    cols["theta_tokens"] = pa.array(rep(_theta(g, floats)[:n]), pa.float64())
    cols["hardware"] = pa.array([g.static["hardware"]] * (n * k), pa.string())
    cols["comm_scaling"] = pa.array([g.static["comm_scaling"]] * (n * k), pa.string())
    for name in COEFFICIENT_NAMES:
        cols[name] = pa.array(rep(floats[name][:n]), pa.float64())
    cols["batch_size"] = pa.array(np.full(n * k, g.batch_size), pa.int64())
    cols["micro_batches"] = pa.array([g.micro_batches] * (n * k), pa.int64())
    cols["ratio"] = pa.array(np.tile(ratios, n), pa.int64())
    for name in METRICS:
        cols[name] = pa.array(np.asarray(out[name][:, idx], np.float64).reshape(-1), pa.float64())
    q = out["cycle_time_quantiles"][:, idx, :]
    for i, level in enumerate(settings["quantile_levels"]):
        cols[f"cycle_time_p{100 * level:g}".replace(".", "_")] = pa.array(
            np.asarray(q[..., i], np.float64).reshape(-1), pa.float64()
        )
    cols["mean_slot_load_tokens"] = pa.array(rep(out["mean_slot_load_tokens"]), pa.float64())
    kv = out["kv_load_quantiles"]  # (n, q): per point, pooled over instances (independent of r)
    for i, level in enumerate(settings["quantile_levels"]):
        cols[f"kv_load_p{100 * level:g}_tokens".replace(".", "_")] = pa.array(rep(kv[:, i]), pa.float64())
    cols["kv_load_max_tokens"] = pa.array(rep(out["kv_load_max_tokens"]), pa.float64())
    cols["best_ratio"] = pa.array(rep(best), pa.int64())
    cols["is_best"] = pa.array((np.tile(ratios, n) == rep(best)), pa.bool_())
    return pa.table(cols)


# ------------------------------------------------------------------------- the sweep
def _chunk_name(g: _Group, points: np.ndarray) -> str:
    return f"chunk-g{g.index:04d}-{int(points[0]):09d}-n{len(points):06d}.parquet"


def _done_points(out: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    done = [
        np.unique(pq.read_table(f, columns=["point"]).column("point").to_numpy())
        for f in sorted(out.glob("chunk-*.parquet"))
    ]
    return np.concatenate(done) if done else np.zeros(0, np.int64)


def _prepare_dir(out: Path, manifest: dict, overwrite: bool, clean_temporaries: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {os.fspath(out)!r} is a file, expected a folder")
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    if path.exists() and not overwrite:
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise ValueError(f"{os.fspath(path)!r} is unreadable; remove the folder or use overwrite") from None
        if old.get("grid_hash") != manifest["grid_hash"]:
            diff = [k for k in manifest["identity"] if old.get("identity", {}).get(k) != manifest["identity"][k]]
            raise ValueError(
                f"output folder {os.fspath(out)!r} holds a different sweep (its {', '.join(diff) or 'grid'} "
                "differ); use another --out, or --overwrite to discard its results"
            )
    else:
        entries = [p for p in out.iterdir() if p.name != MANIFEST]
        ours = [p for p in entries if p.name.startswith(("chunk-", ".chunk-"))]
        if len(entries) != len(ours) and not path.exists():
            raise ValueError(
                f"output folder {os.fspath(out)!r} is not empty and is not an afdjax sweep; use another --out"
            )
        if ours and not path.exists() and not overwrite:
            raise ValueError(
                f"output folder {os.fspath(out)!r} holds chunk files but no {MANIFEST}, so they cannot be checked "
                "against this grid; use another --out, or --overwrite to discard them"
            )
        if overwrite:
            for p in ours:
                p.unlink()
        _atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True))
    if clean_temporaries:
        for p in out.glob(".chunk-*"):
            p.unlink(missing_ok=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_chunk(out: Path, name: str, table) -> None:
    import pyarrow.parquet as pq

    tmp = out / f".{name}.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out / name)


def read_sweep(out_dir):
    """The results of a sweep as a pandas DataFrame, one row per (point, ratio), sorted.

    Equivalent to ``pandas.read_parquet(out_dir)`` plus sorting; the manifest is
    ``out_dir/_manifest.json``. Raises ``ValueError`` if ``out_dir`` holds no sweep.

    Needs pandas, which ``pip install afdjax`` does not bring: install the extra,
    ``pip install 'afdjax[pandas]'`` (without it, ``ImportError`` says so; the Parquet
    files are also readable with pyarrow alone: ``pyarrow.parquet.read_table(out_dir)``).
    """
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(
            "afdjax.read_sweep needs pandas, which a plain `pip install afdjax` does not install: "
            "pip install 'afdjax[pandas]' (or read the Parquet files with pyarrow.parquet.read_table(out_dir))"
        ) from None

    out = Path(os.fspath(out_dir)).expanduser()
    if not (out / MANIFEST).is_file():
        raise ValueError(f"{os.fspath(out)!r} is not an afdjax sweep folder (no {MANIFEST})")
    if not any(out.glob("chunk-*.parquet")):
        raise ValueError(f"{os.fspath(out)!r} holds no finished chunks yet")
    return pd.read_parquet(out).sort_values(["point", "ratio"]).reset_index(drop=True)


def read_manifest(out_dir) -> dict:
    """The sweep's ``_manifest.json`` (grid, settings, key, version, grid hash)."""
    return json.loads((Path(os.fspath(out_dir)).expanduser() / MANIFEST).read_text(encoding="utf-8"))
