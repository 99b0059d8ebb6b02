"""Shared fixtures for the afdjax test-suite.

* The suite runs in two processes (``-n 2 --dist worksteal`` in pyproject's addopts;
  ``loadfile``, which keeps a module in one process, measured no faster: 462 s against 461 s).
* float64 is enabled for the whole session (the exactness tests need it; the float32
  comparison runs in a subprocess with ``JAX_ENABLE_X64=0``).
* The bundled traces are parsed here with ``csv``/``json`` directly, independently of
  afdjax's own trace loader.
* Compiled XLA programs are shared through JAX's persistent compilation cache in one folder
  made for this run (both xdist workers), so a program that several
  test modules, the notebooks' kernels and the CLI subprocesses compile is compiled once.
  Compilation is most of the suite's time; the cache changes no number (it stores the
  very executable that would be compiled).
"""

from __future__ import annotations

import atexit
import csv
import gc
import json
import os
import pathlib
import shutil
import tempfile


def _share_compiled_programs() -> None:
    """Point JAX's persistent compilation cache at a folder made for this run.

    Set through the environment before JAX is imported, so the notebook kernels and CLI
    subprocesses a worker starts (which inherit it) use the same folder. The process
    that made the folder removes it at exit. Every program is cached (no minimum compile time
    or size): the suite's programs are many and small."""
    base = os.environ.get("AFDJAX_TESTS_XLA_CACHE")
    if not base:
        base = tempfile.mkdtemp(prefix="afdjax-tests-xla-")
        atexit.register(shutil.rmtree, base, ignore_errors=True)
        os.environ["AFDJAX_TESTS_XLA_CACHE"] = base
    # One folder for every process of the run: the folder's path is part of JAX's cache
    # key, so per-worker folders never share a program. No size limit: a limit turns on
    # JAX's file lock, and with it a scan of every entry at each write (quadratic in the
    # suite's thousands of programs). Without the lock, an entry read while the other
    # worker writes it fails to decompress; JAX then warns and compiles (pyproject's
    # filterwarnings), so the race costs one compilation and changes no number.
    os.environ["JAX_COMPILATION_CACHE_DIR"] = base
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


_share_compiled_programs()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    The suite compiles thousands of XLA programs in one process; each CPU executable
    keeps memory mappings for its code, and their number grows towards the kernel's
    ``vm.max_map_count`` (65,530 here). Late in the suite an XLA compilation then
    segfaulted (seen on fresh clones, at different tests). The caches are cleared after
    a module once the process holds more than a third of that limit (read from
    ``/proc/self/maps``; after every module where it cannot be read), so later modules
    reuse the programs in memory until then instead of reloading them from the disk cache."""
    yield
    if _memory_maps() > _MAX_MAPS // 3:
        jax.clear_caches()
        gc.collect()


_MAX_MAPS = 65_530


def _memory_maps() -> int:
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return _MAX_MAPS


REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "afdjax" / "data"
AZURE_CONV_PATH = DATA_DIR / "AzureLLMInferenceTrace_conv.csv"
MOONCAKE_CONV_PATH = DATA_DIR / "mooncake_conversation_trace.jsonl"


def _load_azure(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """(prefill = ContextTokens, decode = GeneratedTokens) of an Azure LLM trace CSV."""
    prefill, decode = [], []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            prefill.append(float(row["ContextTokens"]))
            decode.append(int(row["GeneratedTokens"]))
    return np.asarray(prefill, dtype=np.float64), np.asarray(decode, dtype=np.int64)


def _load_mooncake(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """(prefill = input_length, decode = output_length) of a Mooncake JSONL trace."""
    prefill, decode = [], []
    with open(path) as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                prefill.append(float(rec["input_length"]))
                decode.append(int(rec["output_length"]))
    return np.asarray(prefill, dtype=np.float64), np.asarray(decode, dtype=np.int64)


@pytest.fixture(scope="session")
def paper_latency():
    """The ``paper-910c`` LatencyModel (DeepSeek-V3 on Ascend 910C, arXiv 2601.21351)."""
    import afdjax

    return afdjax.LatencyModel.from_preset("paper-910c")


@pytest.fixture(scope="session")
def azure_conv_path() -> pathlib.Path:
    assert AZURE_CONV_PATH.is_file(), AZURE_CONV_PATH
    return AZURE_CONV_PATH


@pytest.fixture(scope="session")
def mooncake_conv_path() -> pathlib.Path:
    assert MOONCAKE_CONV_PATH.is_file(), MOONCAKE_CONV_PATH
    return MOONCAKE_CONV_PATH


@pytest.fixture(scope="session")
def azure_conv_trace(azure_conv_path):
    """``(prefill, decode)`` NumPy arrays of the Azure conversation trace (19,366 rows)."""
    return _load_azure(azure_conv_path)


@pytest.fixture(scope="session")
def mooncake_conv_trace(mooncake_conv_path):
    """``(prefill, decode)`` NumPy arrays of the Mooncake conversation trace (12,031 rows)."""
    return _load_mooncake(mooncake_conv_path)
