"""Random events of given sizes: test fixtures and the ref-edgeconv benchmark workload.

Not physics (see :mod:`hepattr_jax.data.susy_sim` for that): features are Gaussian, and the
label is a noisy function of the features and the node count, so a model can learn something.
The timing of the influence kernels depends only on the shapes, which follow
shared/spec/benchmark-workload.md by default (4 to 12 nodes, 7 features).
"""

from __future__ import annotations

import numpy as np

from hepattr_jax.data.events import EventSet


def random_events(
    n_events: int,
    *,
    n_node_range: tuple[int, int] = (4, 12),
    n_features: int = 7,
    n_globals: int = 0,
    seed: int = 0,
    n_nodes: np.ndarray | None = None,
) -> EventSet:
    """``n_events`` events with a uniform integer node count in ``n_node_range`` (inclusive).

    ``n_nodes`` fixes the node counts instead (e.g. to include single-node events).
    """
    rng = np.random.default_rng(seed)
    if n_nodes is None:
        lo, hi = n_node_range
        n_nodes = rng.integers(lo, hi + 1, size=n_events)
    n_nodes = np.asarray(n_nodes, np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_nodes)])
    nodes = rng.normal(size=(int(offsets[-1]), n_features)).astype(np.float32)
    # Label: sign of a per-event mean of the first feature plus size and noise terms.
    sums = np.add.reduceat(nodes[:, 0], offsets[:-1]) / n_nodes if n_events else np.zeros(0)
    score = sums + 0.1 * (n_nodes - n_nodes.mean()) + 0.3 * rng.normal(size=n_events)
    labels = (score > 0).astype(np.int32)
    globals_ = rng.normal(size=(n_events, n_globals)).astype(np.float32)
    return EventSet(
        ids=np.arange(n_events, dtype=np.int64),
        labels=labels,
        offsets=offsets.astype(np.int64),
        nodes=nodes,
        node_names=tuple(f"x{i}" for i in range(n_features)),
        globals=globals_,
        global_names=tuple(f"g{i}" for i in range(n_globals)),
        physics={"n_node": n_nodes.astype(np.float64)},
        source=f"random_events(seed={seed})",
        eta_phi=(0, 1) if n_features >= 2 else None,
    ).validate()
