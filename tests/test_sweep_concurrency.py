"""One writer per sweep folder, and several processes of one sweep sharing a folder.

The lock (a second writer refused, in-process and on the command line; stale locks taken
over; released after a normal end and after an exception), the directory preparation
under concurrency, ``read_sweep``'s refusal of duplicate rows, and the multi-host mode:
two ``jax.distributed`` processes on localhost (CPU) writing one folder whose union equals
a single-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest
from conftest import REPO_ROOT
from test_sweep import assert_same, toml_text

import afdjax
import afdjax._sweep._core as core
import afdjax._sweep._lock as lockmod
import afdjax._sweep._store as store

HOST = socket.gethostname()


def tiny_grid(**settings):
    """4 points in one group, r = 1..4: one small compilation shared by the tests here."""
    return {
        "settings": {"steps": 100, "replicas": 2, "ratios": {"start": 1, "stop": 4, "step": 1}, "seed": 3} | settings,
        "grid": {
            "batch_size": 8,
            "workload": {"mu_p": 50, "mu_d": [20, 80]},
            "hardware": {"preset": "paper-910c", "alpha_a": [0.001, 0.002]},
        },
    }


GRID_HASH = afdjax.load_grid(tiny_grid()).grid_hash()


def env(**extra):
    paths = [str(REPO_ROOT), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    e = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(paths))
    e.pop("XLA_FLAGS", None)
    return e | extra


def locks(out):
    return sorted(p.name for p in out.glob("_lock.*"))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(out, index=0, **info):
    info = (
        dict(
            pid=dead_pid(), host=HOST, started="2020-01-01T00:00:00Z", process_index=index, process_count=1, flock=True
        )
        | {"grid_hash": GRID_HASH}
        | info
    )
    (out / f"_lock.{index}").write_text(json.dumps(info))


# ----------------------------------------------------------------------------- the lock
def test_second_writer_is_refused_and_the_lock_is_released(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    held = lockmod.acquire(out, 0, 1, GRID_HASH)  # a live writer: this process, through another descriptor
    info = json.loads((out / "_lock.0").read_text())
    assert info["pid"] == os.getpid() and info["host"] == HOST and info["flock"] is True
    assert (info["process_index"], info["process_count"], info["grid_hash"]) == (0, 1, GRID_HASH)
    with pytest.raises(ValueError) as err:
        afdjax.sweep(tiny_grid(), out, progress=False)
    assert str(err.value) == (
        f"output folder {str(out)!r} is being written by process {os.getpid()} (this process) on host {HOST!r}, "
        f"started {info['started']} (lock file {str(out / '_lock.0')!r}); wait for that sweep to finish, "
        "or use another --out"
    )
    assert locks(out) == ["_lock.0"] and not (out / store.MANIFEST).exists()
    held.release()
    assert locks(out) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stale to take over
        summary = afdjax.sweep(tiny_grid(), out, progress=False)
    assert summary.complete and summary.points_computed == 4
    assert locks(out) == [] and sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_lock_is_released_after_an_exception(tmp_path, monkeypatch, error):
    def fail(*args, **kwargs):
        assert locks(tmp_path) == ["_lock.0"]
        raise error

    monkeypatch.setattr(core._Evaluator, "run", fail)
    with pytest.raises(type(error)):
        afdjax.sweep(tiny_grid(), tmp_path, progress=False)
    assert locks(tmp_path) == [] and (tmp_path / store.MANIFEST).exists()
    # A refused preparation (another sweep in the folder) releases it too.
    other = tiny_grid(seed=4)
    with pytest.raises(ValueError, match="holds a different sweep"):
        afdjax.sweep(other, tmp_path, progress=False)
    assert locks(tmp_path) == []


def test_stale_locks_are_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(core._Evaluator, "run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stop")))
    # Written on this host, flock free (its owner is gone): taken over, with a warning.
    write_lock(tmp_path, pid=12345)
    stale = r"took over the stale lock of .* left by process 12345 on host"
    with pytest.warns(RuntimeWarning, match=stale) as rec, pytest.raises(RuntimeError, match="stop"):
        afdjax.sweep(tiny_grid(), tmp_path, progress=False)
    assert "started 2020-01-01T00:00:00Z" in str(rec[0].message) and locks(tmp_path) == []
    # An owner without flock: judged by its pid.
    write_lock(tmp_path, flock=False)
    with pytest.warns(RuntimeWarning, match="took over the stale lock"), pytest.raises(RuntimeError):
        afdjax.sweep(tiny_grid(), tmp_path, progress=False)
    write_lock(tmp_path, pid=os.getppid(), flock=False)  # alive
    with pytest.raises(ValueError, match=rf"is being written by process {os.getppid()} on host"):
        afdjax.sweep(tiny_grid(), tmp_path, progress=False)
    # Another host: never judged stale; the message says which file to remove.
    lock0 = tmp_path / "_lock.0"
    write_lock(tmp_path, host="elsewhere", pid=77)
    with pytest.raises(ValueError) as err:
        afdjax.sweep(tiny_grid(), tmp_path, progress=False)
    assert (
        f"is being written by process 77 on host 'elsewhere', started 2020-01-01T00:00:00Z (lock file {str(lock0)!r})"
        in str(err.value)
    )
    assert str(err.value).endswith(f"if no sweep runs there any more, remove {str(lock0)!r}")
    # A stale lock of another split (process 1 of 2 of a killed job) is removed.
    lock0.unlink()
    write_lock(tmp_path, index=1, process_count=2)
    with (
        pytest.warns(RuntimeWarning, match=r"removed the stale lock .* as process 1 of 2"),
        pytest.raises(RuntimeError),
    ):
        afdjax.sweep(tiny_grid(), tmp_path, progress=False)
    assert locks(tmp_path) == []


def test_processes_of_one_split_cooperate_and_others_are_refused(tmp_path, monkeypatch):
    peer = lockmod.acquire(tmp_path, 1, 2, GRID_HASH)  # process 1 of 2, live
    try:
        s = afdjax.sweep(tiny_grid(), tmp_path, progress=False, process_index=0, process_count=2)
        assert s.points_computed == 2 and not s.complete
        partial = tmp_path / ".chunk-g0000-000000001-n000001.parquet.tmp-x-1"  # process 1 is writing it
        partial.write_bytes(b"")
        s = afdjax.sweep(tiny_grid(), tmp_path, progress=False, process_index=0, process_count=2)
        assert s.points_computed == 0 and s.points_skipped == 2
        assert partial.exists()  # not alone: temporaries are kept
        assert locks(tmp_path) == ["_lock.1"]
        with pytest.raises(
            ValueError,
            match=r"is being written with a process_count other than 1 by process \d+ \(this process\) on host .* as "
            r"process 1 of 2",
        ):
            afdjax.sweep(tiny_grid(), tmp_path, progress=False)
        with pytest.raises(ValueError, match=r"being written by another sweep \(a different grid\): process "):
            afdjax.sweep(tiny_grid(seed=9), tmp_path, progress=False, overwrite=True, process_index=0, process_count=2)
        with pytest.raises(ValueError, match=r"as process 1 of 2, started"):
            afdjax.sweep(tiny_grid(), tmp_path, progress=False, process_index=1, process_count=2)
    finally:
        peer.release()
    # Alone, a writer removes the temporary files older than its lock (a killed run's);
    # newer ones may be those of a writer that started after its check of the locks.
    newer = tmp_path / f".{store.MANIFEST}.tmp-newer"
    newer.write_text("")
    os.utime(newer, (time.time() + 3600,) * 2)
    os.utime(partial, (time.time() - 3600,) * 2)
    s = afdjax.sweep(tiny_grid(), tmp_path, progress=False)
    assert s.points_computed == 2 and s.points_skipped == 2 and s.complete
    assert [p.name for p in tmp_path.glob(".*")] == [newer.name]


def test_directory_preparation_under_concurrency(tmp_path, monkeypatch):
    """Another process's manifest being written (issue 11, item 7) is not foreign content;
    under overwrite only process 0 discards another sweep, the others wait for it."""
    manifest = {"grid_hash": "new", "identity": {"grid": 1}}
    (tmp_path / f".{store.MANIFEST}.tmp-abc123").write_text('{"grid_ha')
    store._prepare_dir(tmp_path, manifest, overwrite=False, leader=False)
    assert json.loads((tmp_path / store.MANIFEST).read_text())["grid_hash"] == "new"
    store._prepare_dir(tmp_path, manifest, overwrite=False, leader=False)  # an identical one is accepted
    (tmp_path / store.MANIFEST).write_text(json.dumps({"grid_hash": "old", "identity": {"grid": 0}}))
    (tmp_path / "chunk-old.parquet").write_bytes(b"")
    monkeypatch.setattr(store, "OVERWRITE_WAIT_S", 0.3)
    with pytest.raises(ValueError, match=r"process 0 of this sweep discards under overwrite; it did not within 0 s"):
        store._prepare_dir(tmp_path, manifest, overwrite=True, leader=False)
    assert (tmp_path / "chunk-old.parquet").exists()
    monkeypatch.setattr(store, "OVERWRITE_WAIT_S", 30.0)
    leader = threading.Timer(0.3, store._prepare_dir, (tmp_path, manifest, True, True))
    leader.start()
    store._prepare_dir(tmp_path, manifest, overwrite=True, leader=False)  # waits for the leader
    leader.join()
    assert not (tmp_path / "chunk-old.parquet").exists()
    assert json.loads((tmp_path / store.MANIFEST).read_text())["grid_hash"] == "new"


def test_read_sweep_refuses_duplicate_rows(tmp_path):
    afdjax.sweep(tiny_grid(), tmp_path, progress=False)
    assert len(afdjax.read_sweep(tmp_path)) == 16
    # What two writers with different chunk sizes used to leave: point 2 in two files.
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "chunk-g0000-000000000-n000004.parquet")
    pq.write_table(table.slice(8, 4), tmp_path / "chunk-g0000-000000002-n000001.parquet")
    with pytest.raises(ValueError) as err:
        afdjax.read_sweep(tmp_path)
    assert str(err.value) == (
        f"{str(tmp_path)!r} holds 8 rows whose (point, ratio) is not unique (points 2; in "
        "chunk-g0000-000000000-n000004.parquet, chunk-g0000-000000002-n000001.parquet): two sweeps wrote into it "
        f"at once; remove the extra chunk files, or read it anyway with pandas.read_parquet({str(tmp_path)!r})"
        ".drop_duplicates(['point', 'ratio'])"
    )


# ------------------------------------------------------- concurrent sweeps (processes)
def test_concurrent_cli_sweep_with_another_chunk_size_is_refused(tmp_path, monkeypatch):
    """Issue 11, item 2: a second `afdjax sweep` on the same --out while one runs (here with
    --max-chunk-points 5) is refused with one line and exit 2; the first finishes alone,
    with no duplicate rows. The first runs here in a thread, held after its chunk is
    written (the lock is held until the call returns)."""
    grid = tmp_path / "grid.toml"
    grid.write_text(toml_text(tiny_grid()))
    out = tmp_path / "out"
    written, go = threading.Event(), threading.Event()
    write = core._write_chunk

    def write_then_wait(*args):
        write(*args)
        written.set()
        go.wait(240)

    monkeypatch.setattr(core, "_write_chunk", write_then_wait)
    result = {}
    first = threading.Thread(target=lambda: result.update(s=afdjax.sweep(grid, out, progress=False)))
    first.start()
    try:
        assert written.wait(240)
        cmd = ["sweep", "--grid", str(grid), "--out", str(out), "--max-chunk-points", "5"]
        second = subprocess.run(
            [sys.executable, "-m", "afdjax._cli", *cmd], env=env(), capture_output=True, text=True, timeout=240
        )
    finally:
        go.set()
        first.join(240)
    assert second.returncode == 2 and second.stdout == "", second.stderr
    assert second.stderr.startswith(
        f"afdjax: error: output folder {str(out)!r} is being written by process {os.getpid()} on host {HOST!r}, "
        "started "
    )
    assert second.stderr.count("\n") == 1
    assert second.stderr.endswith(
        f"(lock file {str(out / '_lock.0')!r}); wait for it to finish (or end it), or use another --out\n"
    )
    assert result["s"].complete and result["s"].points_computed == 4 and locks(out) == []
    df = afdjax.read_sweep(out)  # raises on duplicate rows
    assert len(df) == 16 and sorted(p.name for p in out.iterdir()) == [
        "_manifest.json",
        "chunk-g0000-000000000-n000004.parquet",
    ]


DISTRIBUTED = textwrap.dedent(
    """
    import json, sys
    import jax
    address, count, index, grid, out, chunk = sys.argv[1:]
    jax.distributed.initialize(
        coordinator_address=address, num_processes=int(count), process_id=int(index), initialization_timeout=120
    )
    import afdjax
    assert (jax.process_count(), jax.process_index()) == (int(count), int(index))
    summary = afdjax.sweep(json.loads(grid), out, progress=False, max_chunk_points=int(chunk))
    print(json.dumps(summary.to_dict()))
    jax.distributed.shutdown()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(tmp_path, grid: dict, processes: int, chunk: int):
    out = tmp_path / "shared"
    address = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                DISTRIBUTED,
                address,
                str(processes),
                str(i),
                json.dumps(grid),
                str(out),
                str(chunk),
            ],
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    return out, [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in results]


def check_union(tmp_path, out, summaries, grid: dict, chunk: int):
    n = afdjax.load_grid(grid).num_points
    processes = len(summaries)
    assert [s["points_computed"] for s in summaries] == [len(range(i, n, processes)) for i in range(processes)]
    assert any(s["complete"] for s in summaries)  # the last process to finish sees every point
    assert locks(out) == [] and not list(out.glob(".*"))
    single = tmp_path / "single"
    assert afdjax.sweep(grid, single, progress=False, max_chunk_points=chunk).complete
    union = afdjax.read_sweep(out)  # raises on duplicate rows
    assert afdjax.sweep(grid, out, progress=False).points_computed == 0  # nothing missing
    assert_same(union, afdjax.read_sweep(single))


@pytest.mark.slow  # two real processes; test_sweep.py::test_processes_share_the_points checks the split in-process
def test_jax_distributed_processes_share_one_folder(tmp_path):
    """Issue 11, item 7: two processes of one jax.distributed job (localhost, CPU) run the
    same sweep into the same folder; the union equals a one-process run, no duplicates."""
    out, summaries = run_distributed(tmp_path, tiny_grid(), 2, 4)
    check_union(tmp_path, out, summaries, tiny_grid(), 4)


@pytest.mark.slow
def test_three_distributed_processes_larger_grid(tmp_path):
    grid = tiny_grid()
    grid["grid"]["workload"] = {"mu_p": 50, "mu_d": [20, 40, 80], "prefill": ["constant", "exponential"]}
    grid["grid"]["hardware"]["alpha_a"] = [0.001, 0.0015, 0.002]
    out, summaries = run_distributed(tmp_path, grid, 3, 2)
    check_union(tmp_path, out, summaries, grid, 2)


@pytest.mark.slow
def test_issue_reproduction_second_cli_sweep_three_seconds_later(tmp_path):
    """The issue's reproduction without hooks: a second `afdjax sweep` started 3 s after
    the first, with --max-chunk-points 5, is refused; the folder ends with no duplicates."""
    grid_dict = tiny_grid(steps=2_000_000)  # about 30 s of simulation on a 2-core CPU
    grid_dict["grid"]["batch_size"] = 64
    grid = tmp_path / "grid.toml"
    grid.write_text(toml_text(grid_dict))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "afdjax._cli", "sweep", "--grid", str(grid), "--out", str(out), "--json"]
    first = subprocess.Popen(
        [*cmd, "--max-chunk-points", "1"], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "_lock.0").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(3)
        second = subprocess.run(
            [*cmd, "--max-chunk-points", "5"], env=env(), capture_output=True, text=True, timeout=240
        )
        still_running = first.poll() is None
    finally:
        _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    assert still_running, "the first sweep ended before the second one started: make its grid larger"
    assert second.returncode == 2 and f"is being written by process {first.pid} on host" in second.stderr, second.stderr
    df = afdjax.read_sweep(out)
    assert len(df) == 4 * 4 and not df.duplicated(["point", "ratio"]).any()
