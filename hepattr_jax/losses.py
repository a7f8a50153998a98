"""Per-event losses with padding masks.

``bce_with_logits(z, y) = softplus(z) - z y``, the numerically stable sigmoid binary
cross-entropy, with the exact derivative ``sigmoid(z) - y`` everywhere. Losses of padding
graphs are removed with ``jnp.where`` (not multiplied by the mask): since every model keeps
padding logits finite, their gradient is then exactly zero.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from hepattr_jax.graphs import Batch

ApplyFn = Callable[..., jax.Array]


def bce_with_logits(logits: jax.Array, labels: ArrayLike) -> jax.Array:
    """``softplus(z) - z y``. ``jax.nn.softplus`` (``logaddexp(z, 0)``: the same stable value as
    ``max(z, 0) + log(1 + exp(-|z|))``) carries its own derivative ``sigmoid(z)``, which is right
    at ``z = 0`` too; differentiating ``max`` and ``|z|`` there gives a subgradient instead
    (``-1`` or ``0`` in place of ``-+1/2``), which a zero-initialised readout hits on every
    event."""
    return jax.nn.softplus(logits) - logits * labels


def per_graph_loss(apply_fn: ApplyFn, params, batch: Batch) -> jax.Array:
    """``[n_graph]`` loss of each graph; exactly 0 on padding graphs."""
    logits = apply_fn(params, batch.graphs)
    return jnp.where(batch.graph_mask, bce_with_logits(logits, batch.labels), 0.0)


def mean_loss(apply_fn: ApplyFn, params, batch: Batch) -> jax.Array:
    """Mean loss over the real graphs of a training batch."""
    n = jnp.maximum(batch.graph_mask.sum(), 1)
    return per_graph_loss(apply_fn, params, batch).sum() / n


def example_loss(apply_fn: ApplyFn, params, example: Batch) -> jax.Array:
    """Loss of one event of a per-example stack (its padding graph and empty slots give 0).

    Written for a single example (no leading axis); batch it with ``jax.vmap``.
    """
    return per_graph_loss(apply_fn, params, example).sum()
