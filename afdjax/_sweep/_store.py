"""Sweep storage: the results folder, its manifest, Parquet chunk files, resume, reading.

``OUT/_manifest.json`` (grid, settings, key, version, grid hash) and one Parquet file per
finished chunk, ``OUT/chunk-gGGGG-PPPPPPPPP-nNNNNN.parquet``, written to a dot-prefixed
temporary name and then ``os.replace``-d. ``pd.read_parquet(OUT)`` reads every finished
chunk (pyarrow skips names starting with ``.`` or ``_``, so neither the manifest nor
temporary files are read as results). Resuming reads the ``point`` column of the
finished chunks. The folder's lock files ``OUT/_lock.<i>`` are ``_lock``'s; preparing the
folder (``_prepare_dir``) is safe while the processes of one multi-process sweep do it
at once.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
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


# Names a sweep itself puts in its folder: results, their temporaries, the manifest's
# temporaries, lock files (``_lock``) and theirs.
_CHUNK_NAMES = ("chunk-", ".chunk-")
_OWN_NAMES = (*_CHUNK_NAMES, f".{MANIFEST}.tmp-", "_lock.", "._lock.")
# How long a process other than 0 of a multi-process ``overwrite`` waits for process 0 to
# replace a different sweep's manifest (seconds).
OVERWRITE_WAIT_S = 120.0


def check_dir(out: Path) -> None:
    """Refuse, before writing anything, an output path that is a file or a folder holding
    something other than a sweep; create the folder."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {os.fspath(out)!r} is a file, expected a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"output folder {os.fspath(out)!r} cannot be created: {err.strerror or err}") from None
    _check_foreign(out, [p.name for p in out.iterdir()], (out / MANIFEST).exists())


def _check_foreign(out: Path, names: list, has_manifest: bool) -> None:
    if not has_manifest and any(n != MANIFEST and not n.startswith(_OWN_NAMES) for n in names):
        raise ValueError(f"output folder {os.fspath(out)!r} is not empty and is not an afdjax sweep; use another --out")


def _manifest_or_none(path: Path, overwrite: bool):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        if overwrite:
            return {}
        raise ValueError(f"{os.fspath(path)!r} is unreadable; remove the folder or use overwrite") from None


def _prepare_dir(out: Path, manifest: dict, overwrite: bool, leader: bool = True) -> None:
    """Check ``out`` against ``manifest`` and write the manifest if it has none.

    Safe while the other processes of a multi-process sweep do the same: the folder is
    listed before the manifest is read (so chunk files seen without a matching manifest
    predate this sweep), every process writes the same manifest atomically (temporary
    file, then ``os.replace``) and accepts an identical one. Only the ``leader`` (process
    0) discards another sweep's files under ``overwrite``; the others wait for its
    manifest (at most ``OVERWRITE_WAIT_S``)."""
    path = out / MANIFEST
    deadline = time.monotonic() + OVERWRITE_WAIT_S
    while True:
        names = [p.name for p in out.iterdir()]
        old = _manifest_or_none(path, overwrite)
        if old is not None and old.get("grid_hash") == manifest["grid_hash"]:
            return  # the same sweep: resume
        _check_foreign(out, names, old is not None)
        chunks = [n for n in names if n.startswith(_CHUNK_NAMES)]
        if not overwrite:
            if old is not None:
                diff = [k for k in manifest["identity"] if old.get("identity", {}).get(k) != manifest["identity"][k]]
                raise ValueError(
                    f"output folder {os.fspath(out)!r} holds a different sweep (its {', '.join(diff) or 'grid'} "
                    "differ); use another --out, or --overwrite to discard its results"
                )
            if chunks:
                raise ValueError(
                    f"output folder {os.fspath(out)!r} holds chunk files but no {MANIFEST}, so they cannot be "
                    "checked against this grid; use another --out, or --overwrite to discard them"
                )
        elif old is not None or chunks:
            if not leader:
                if time.monotonic() > deadline:
                    raise ValueError(
                        f"output folder {os.fspath(out)!r} holds a different sweep, which process 0 of this sweep "
                        f"discards under overwrite; it did not within {OVERWRITE_WAIT_S:.0f} s"
                    )
                time.sleep(0.2)
                continue
            for n in chunks:
                (out / n).unlink(missing_ok=True)
        _atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True))
        return


def clean_temporaries(out: Path, before_ns: int) -> None:
    """Remove temporary files left by killed runs: call it only when no other writer was
    running at ``before_ns`` (file-system time); newer files may be a new writer's. (A
    lock's own temporary file lives for microseconds; one left by a kill is harmless and
    kept, since a writer starting just now may be about to link it.)"""
    for p in out.iterdir():
        if p.name.startswith((".chunk-", f".{MANIFEST}.tmp-")):
            try:
                if p.stat().st_mtime_ns < before_ns:
                    p.unlink()
            except FileNotFoundError:
                pass


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")  # unique across hosts
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if hasattr(os, "chmod"):
        os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _write_chunk(out: Path, name: str, table) -> None:
    import pyarrow.parquet as pq

    tmp = out / f".{name}.tmp-{socket.gethostname()}-{os.getpid()}"
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out / name)


def read_sweep(out_dir):
    """The results of a sweep as a pandas DataFrame, one row per (point, ratio), sorted.

    Equivalent to ``pandas.read_parquet(out_dir)`` plus sorting; the manifest is
    ``out_dir/_manifest.json``. Raises ``ValueError`` if ``out_dir`` holds no sweep, and
    if it holds a ``(point, ratio)`` row more than once (two sweeps written into one
    folder at once, which the folder's lock now prevents): the message names the points
    and chunk files concerned. Nothing is dropped silently: to read such a folder anyway,
    ``pandas.read_parquet(out_dir).drop_duplicates(["point", "ratio"])`` (the copies of a
    point agree to float64 rounding when they come from the same grid and settings).
    A folder that a sweep is still writing is read as it is (finished chunks only).

    Needs pandas, which ``pip install afdjax`` does not bring: install the extra,
    ``pip install 'afdjax[pandas]'`` (without it, ``ImportError`` says so; the Parquet
    files are also readable with pyarrow alone: ``pyarrow.parquet.read_table(out_dir)``).

    Arguments:
        out_dir: the sweep's results folder.

    Returns:
        a ``pandas.DataFrame``, one row per (point, ratio).
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
    df = pd.read_parquet(out).sort_values(["point", "ratio"]).reset_index(drop=True)
    dup = df.duplicated(["point", "ratio"], keep=False).to_numpy()
    if dup.any():
        raise ValueError(_duplicates_message(out, np.unique(df["point"].to_numpy()[dup]), int(dup.sum())))
    return df


def _duplicates_message(out: Path, points: np.ndarray, rows: int) -> str:
    import pyarrow.parquet as pq

    files = [
        f.name
        for f in sorted(out.glob("chunk-*.parquet"))
        if np.isin(pq.read_table(f, columns=["point"]).column("point").to_numpy(), points).any()
    ]
    shown = ", ".join(str(int(p)) for p in points[:8]) + (", ..." if len(points) > 8 else "")
    names = ", ".join(files[:6]) + (f" and {len(files) - 6} more" if len(files) > 6 else "")
    return (
        f"{os.fspath(out)!r} holds {rows} rows whose (point, ratio) is not unique (points {shown}; in {names}): "
        "two sweeps wrote into it at once; remove the extra chunk files, or read it anyway with "
        f"pandas.read_parquet({os.fspath(out)!r}).drop_duplicates(['point', 'ratio'])"
    )


def read_manifest(out_dir) -> dict:
    """The sweep's ``_manifest.json`` (grid, settings, key, version, grid hash).

    Arguments:
        out_dir: the sweep's results folder.

    Returns:
        the manifest as a dict.
    """
    return json.loads((Path(os.fspath(out_dir)).expanduser() / MANIFEST).read_text(encoding="utf-8"))
