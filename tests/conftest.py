import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hepattr_jax.data.synthetic import random_events  # noqa: E402


@pytest.fixture
def small_events():
    """Named corner cases: a single-node event (no edges), a two-node event, and typical sizes."""
    return random_events(10, n_nodes=np.array([1, 2, 4, 7, 12, 5, 3, 1, 9, 6]), seed=3, n_globals=2)
