"""The shared report figures: written atomically, robust to degenerate inputs."""

import numpy as np

from hepattr_jax.plotting import removed_vs_kept


def test_removed_vs_kept_writes_a_figure(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    si = rng.lognormal(size=n)
    labels = rng.integers(0, 2, n)
    quantities = {"mass": rng.normal(100, 20, n), "multiplicity": rng.integers(5, 40, n)}
    path = removed_vs_kept(si, labels, quantities, 0.1, tmp_path / "a.png", title="t")
    assert path.stat().st_size > 0
    # no events removed (q = 0), all-zero scores and a class absent from the removed set
    path = removed_vs_kept(np.zeros(n), labels, quantities, 0.0, tmp_path / "b.png")
    assert path.stat().st_size > 0
