import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hepattr_jax.data.synthetic import random_events  # noqa: E402


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
