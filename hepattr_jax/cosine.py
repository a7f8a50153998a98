"""Gradient-cosine influence (normalised TracIn): ``sum_k eta_k cos(g_k(z'), g_k(z))``.

Each event's gradient is scaled to unit length before the inner product, so an event counts by
the *direction* of its gradient, not its size (a mislabelled or atypical event with a large
gradient no longer dominates every test event's proponents; Barshan et al. 2020, RelatIF, arXiv
2003.11630, and the "gradient cosine" baseline of Hammoudeh & Lowd's survey). Self-influence is
``sum_k eta_k`` for every event with a non-zero gradient, so this is a train x test method
(matrix, top-k, LDS), not a self-influence ranking.

This module is the extension point's check: a method is one
:class:`~hepattr_jax.per_example.GradientMap` (here ``g -> g / ||g||``), and every TracIn kernel
runs it unchanged; no kernel or driver was touched to add it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hepattr_jax.per_example import GradientMap, tree_sq_norm


def unit_gradient(state, grads):
    """``g / ||g||`` over the whole parameter tree (0 for a zero gradient); ``state`` unused."""
    del state
    norm = jnp.sqrt(tree_sq_norm(grads))
    inv = jnp.where(norm > 0, 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0)
    return jax.tree_util.tree_map(lambda g: g * inv.astype(g.dtype), grads)


def cosine_gradient_map() -> GradientMap:
    """The :class:`~hepattr_jax.per_example.GradientMap` of gradient-cosine influence."""
    return GradientMap(unit_gradient, None, "cosine")
