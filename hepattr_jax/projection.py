"""Keyed random projections of per-event gradients (Johnson-Lindenstrauss; TRAK, arXiv 2303.14186).

A projection ``R`` of shape ``[P, d]`` maps a flat gradient ``g [P]`` to ``g R [d]`` with
``E ||g R||^2 = ||g||^2``. ``R`` is never stored and never materialised whole: it is defined by a
key and regenerated, block by block, wherever it is needed. The rows of ``R`` that multiply
parameter leaf ``l`` (in ``jax.tree_util`` order) and row block ``b`` of that leaf are

    R[l, b] = scale * draw(fold_in(fold_in(key, l), b), [rows_b, d])

with ``draw`` standard normal (``kind="gaussian"``) or +-1 (``kind="rademacher"``: fair signs
unpacked 32 to a random 32-bit word) and
``scale = 1 / sqrt(d)``. So the same key gives the same matrix on any device, for any chunk, in
any process, and at most one ``[block_rows, d]`` block exists at a time.

:func:`project_tree` projects one event's gradient pytree (write it for one event, batch it with
``jax.vmap``); :func:`dense_projection_matrix` builds the same ``R`` whole, for tests only.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

KINDS = ("gaussian", "rademacher")


@dataclasses.dataclass(frozen=True)
class Projector:
    """A keyed ``[P, d]`` projection: ``proj_dim`` = d, ``kind``, ``seed`` and ``block_rows``.

    Hashable and comparable by value, so kernels built from it can be cached and stores can
    record it in their metadata (``to_meta``).
    """

    proj_dim: int
    kind: str = "rademacher"
    seed: int = 0
    block_rows: int = 4096

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"projection kind {self.kind!r}: use one of {KINDS}")
        if self.proj_dim < 1 or self.block_rows < 1:
            raise ValueError(f"proj_dim and block_rows must be >= 1: {self}")

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.proj_dim)

    def block(self, leaf: int, block: int, rows: int, dtype) -> jax.Array:
        """Rows ``[rows, d]`` of ``R`` for row block ``block`` of parameter leaf ``leaf``."""
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), leaf), block)
        d = self.proj_dim
        if self.kind == "gaussian":
            draw = jax.random.normal(key, (rows, d), dtype)
        else:
            # 32 signs from each random 32-bit word: bit j of word w is column 32 w + j. A
            # counter-based generator pays per word, so this is ~5x cheaper than one draw per
            # entry (measured: 0.15 s vs 0.72 s for a [46081, 512] block on a 2-core CPU).
            words = jax.random.bits(key, (rows, -(-d // 32)), jnp.uint32)
            bit = (words[:, :, None] >> jnp.arange(32, dtype=jnp.uint32)) & jnp.uint32(1)
            draw = 2 * bit.reshape(rows, -1)[:, :d].astype(dtype) - 1
        return draw * jnp.asarray(self.scale, dtype)

    def to_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _leaf_blocks(n: int, block_rows: int):
    for b, start in enumerate(range(0, n, block_rows)):
        yield b, start, min(start + block_rows, n)


def project_tree(projector: Projector, tree) -> jax.Array:
    """``[d]`` projection of one event's gradient pytree: ``sum_l sum_b g[l, b] R[l, b]``."""
    out = None
    for leaf_index, leaf in enumerate(jax.tree_util.tree_leaves(tree)):
        flat = leaf.reshape(-1)
        for b, start, stop in _leaf_blocks(flat.shape[0], projector.block_rows):
            r = projector.block(leaf_index, b, stop - start, flat.dtype)
            part = flat[start:stop] @ r
            out = part if out is None else out + part
    if out is None:
        raise ValueError("cannot project an empty parameter tree")
    return out


def project_batch(projector: Projector, trees) -> jax.Array:
    """``[C, d]`` projections of a stack of gradient pytrees (leading axis ``C`` on every leaf).

    Each block of ``R`` is generated once per call and applied to all ``C`` rows, so the cost
    of generating ``R`` is shared by the whole chunk (what the fused kernels use).
    """
    out = None
    for leaf_index, leaf in enumerate(jax.tree_util.tree_leaves(trees)):
        flat = leaf.reshape(leaf.shape[0], -1)
        for b, start, stop in _leaf_blocks(flat.shape[1], projector.block_rows):
            r = projector.block(leaf_index, b, stop - start, flat.dtype)
            part = flat[:, start:stop] @ r
            out = part if out is None else out + part
    if out is None:
        raise ValueError("cannot project an empty parameter tree")
    return out


def dense_projection_matrix(projector: Projector, params) -> jax.Array:
    """The whole ``[P, d]`` matrix, rows in ``ravel_pytree(params)`` order. Tests only."""
    blocks = []
    for leaf_index, leaf in enumerate(jax.tree_util.tree_leaves(params)):
        n = leaf.size
        for b, start, stop in _leaf_blocks(n, projector.block_rows):
            blocks.append(projector.block(leaf_index, b, stop - start, leaf.dtype))
    return jnp.concatenate(blocks, axis=0)
