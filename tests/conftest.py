import importlib
import os
import re
import tomllib
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole run, shared by pytest-xdist workers and the
# subprocesses tests start (they inherit the environment): many tests compile the same small
# models at the same shapes, and on a 2-core CPU compiling is most of the suite's time. The
# cache only skips XLA's backend compile of an identical program (tracing and every result are
# unchanged). HEPATTR_TEST_COMPILE_CACHE=0 turns it off; a path sets where it lives.
_cache = os.environ.get("HEPATTR_TEST_COMPILE_CACHE", "")
if _cache != "0":
    _cache_dir = Path(_cache or Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_cache_dir))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hepattr_jax.data.synthetic import random_events  # noqa: E402

#: Import name of every dependency in pyproject.toml (``dependencies`` and the ``test`` extra).
#: A missing one fails the whole run (tests/conftest.py), instead of silently skipping the tests
#: that need it.
REQUIRED_MODULES = {
    "jax": "jax",
    "flax": "flax",
    "optax": "optax",
    "jraph": "jraph",
    "orbax-checkpoint": "orbax.checkpoint",
    "chex": "chex",
    "numpy": "numpy",
    "scipy": "scipy",
    "uproot": "uproot",
    "awkward": "awkward",
    "scikit-hep-testdata": "skhep_testdata",
    "pyarrow": "pyarrow",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "pytest": "pytest",
    "pytest-xdist": "xdist",
    "mypy": "mypy",
    "scikit-learn": "sklearn",
    "umap-learn": "umap",
    "pythia8mc": "pythia8mc",  # the generate extra, part of the test extra: CI runs a generation
    "fastjet": "fastjet",
}
_SKIP_ENV = "HEPATTR_ALLOW_MISSING_DEPS"  # set to 1 to run what can run without them


def _declared_dependencies() -> set[str] | None:
    path = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not path.exists():
        return None
    project = tomllib.loads(path.read_text())["project"]
    specs = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    return {re.split(r"[<>=!~\[; ]", s, maxsplit=1)[0].lower() for s in specs} - {"ruff"}


def pytest_sessionstart(session):
    """Fails the run at once when a required dependency is missing or not importable (CI must
    not pass by skipping), and when pyproject.toml declares one this list does not know."""
    declared = _declared_dependencies()
    if declared is not None and declared != set(REQUIRED_MODULES):
        raise pytest.UsageError(
            "tests/conftest.py REQUIRED_MODULES is out of date with pyproject.toml: "
            f"missing {sorted(declared - set(REQUIRED_MODULES))}, "
            f"extra {sorted(set(REQUIRED_MODULES) - declared)}"
        )
    missing = []
    for dist, module in REQUIRED_MODULES.items():
        try:
            importlib.import_module(module)
        except Exception as e:  # ImportError, or a broken install failing at import
            missing.append(f"{dist} (import {module}: {type(e).__name__}: {e})")
    if missing and os.environ.get(_SKIP_ENV) != "1":
        raise pytest.UsageError(
            "required dependencies missing or broken: "
            + "; ".join(missing)
            + f". Install them (pip install -e '.[test]'), or set {_SKIP_ENV}=1 to run anyway."
        )


@pytest.fixture
def small_events():
    """Named corner cases: a single-node event (no edges), a two-node event, and typical sizes."""
    return random_events(10, n_nodes=np.array([1, 2, 4, 7, 12, 5, 3, 1, 9, 6]), seed=3, n_globals=2)


@pytest.fixture
def count_traces():
    """A context manager counting jit traces by function name while it is open, from JAX's
    public monitoring events (``/jax/core/compile/jaxpr_trace_duration``).

    It plays the part of ``chex.assert_max_traces`` where the jitted function is built inside
    the library (chex must wrap the Python function before ``jax.jit``); unlike the private
    ``_cache_size()`` it counts traces in the block only, so it also shows a second call
    compiling nothing. Usage: ``with count_traces() as n: ...; assert n["f"] <= 1``.
    """
    import collections
    import contextlib

    import jax

    @contextlib.contextmanager
    def counting():
        counts = collections.Counter()

        def listener(event, duration, **kwargs):
            if event == "/jax/core/compile/jaxpr_trace_duration":
                counts[kwargs.get("fun_name", "?")] += 1

        jax.monitoring.register_event_duration_secs_listener(listener)
        try:
            yield counts
        finally:
            jax.monitoring.unregister_event_duration_listener(listener)

    return counting


#: Test files from the longest to the shortest (seconds of a clean-clone make test run on the
#: 2-core CPU, 2026-12-06, after the compile cuts). Collected in this order, pytest-xdist's
#: per-file scheduling (--dist loadfile) starts the long files first, so that no worker is left
#: running one long file at the end while the other idles. Files not listed follow in their
#: usual order.
LONGEST_FIRST = (
    "test_tracin",
    "test_benchmark_smoke",
    "test_kfac",
    "test_models",
    "test_ekfac",
    "test_explain",
    "test_projection",
    "test_jet_models",
    "test_gnn_irst",
    "test_capture",
    "test_multiprocess",
    "test_influence_cli",
    "test_explain_lrp",
    "test_adam",
    "test_clusters",
    "test_generate_events",
    "test_trak",
    "test_train",
    "test_generate",
    "test_sharding",
    "test_datamodels",
    "test_faults",
    "test_cosine",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item):
        return rank.get(Path(str(item.fspath)).stem, len(rank))

    items.sort(key=key)  # stable: a file's tests keep their order
