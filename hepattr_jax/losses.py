"""Per-event losses with padding masks.

``bce_with_logits(z, y) = max(z, 0) - z y + log(1 + exp(-|z|))``, the numerically stable sigmoid
binary cross-entropy. Losses of padding graphs are removed with ``jnp.where`` (not multiplied by
the mask): since every model keeps padding logits finite, their gradient is then exactly zero.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from hepattr_jax.graphs import Batch

ApplyFn = Callable[..., jax.Array]


def bce_with_logits(logits: jax.Array, labels: ArrayLike) -> jax.Array:
    return jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


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
