"""TracIn over saved checkpoints (Pruthi et al. 2020, arXiv 2002.08484, "TracInCP").

With checkpoints ``theta_k`` and the learning rates ``eta_k`` the schedule used there, and the
per-event loss ``l(z; theta)``:

* self-influence ``SI(z) = sum_k eta_k ||grad l(z; theta_k)||^2``;
* influence of train event ``z`` on test event ``z'``:
  ``I(z, z') = sum_k eta_k <grad l(z; theta_k), grad l(z'; theta_k)>``;
* top-k proponents (largest ``I``) and opponents (smallest ``I``) of each test event.

Gradients are exact and over the full parameter vector. The fast functions take a *layout* from
:mod:`hepattr_jax.per_example` and stream events in chunks (memory bounded by ``chunk_size`` and,
for train x test, by ``test_block`` test events' gradients kept for all K checkpoints); top-k is
merged chunk by chunk and never forms the N x M matrix. The ``*_reference`` functions are the
obviously-correct loop the tests and benchmarks compare with: one event at a time, a jitted
single-event gradient of the flax model, accumulated in Python.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from tqdm.auto import tqdm

from hepattr_jax.engine import stream
from hepattr_jax.errors import ConfigError
from hepattr_jax.graphs import Budget, GraphSet
from hepattr_jax.losses import example_loss
from hepattr_jax.per_example import (
    GradientMap,
    capture_self_influence_kernel,
    check_layerwise,
    checkpoints_event_major,
    event_major_scratch,
    flat_grad_one,
    kernel_cache,
    layer_energy_kernel,
    map_parts,
    optional_state,
    projected_grad_kernel,
    self_influence_kernel,
    stack_params,
    stacked_grad_kernel,
)
from hepattr_jax.sharding import check_chunk_size, replicate, shard_events

Params = Any


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """K checkpoints as one stacked parameter tree, with their learning rates and identities.

    Attributes:
      params: parameter tree with a leading axis ``K`` on every leaf.
      lrs: float ``[K]``, the learning rate the schedule used at each checkpoint (``eta_k``).
      steps: the K optimiser steps.
      hashes: content hash of each checkpoint's parameters (for score-store metadata).
      second_moments: Adam's bias-corrected second-moment estimate ``v_k / (1 - b2^t_k)`` at
        each checkpoint (the parameters' tree, leading axis ``K``), what Adam-aware TracIn's
        preconditioner is made of (:mod:`hepattr_jax.adam`); None when the optimiser state is
        not known.
    """

    params: Params
    lrs: np.ndarray
    steps: tuple[int, ...] = ()
    hashes: tuple[str, ...] = ()
    second_moments: Params | None = None

    @classmethod
    def from_list(
        cls,
        params_list: Sequence[Params],
        lrs: Sequence[float],
        steps=(),
        hashes=(),
        second_moments: Sequence[Params] | None = None,
    ):
        return cls(
            stack_params(list(params_list)),
            np.asarray(lrs, np.float64),
            tuple(steps),
            tuple(hashes),
            None if second_moments is None else stack_params(list(second_moments)),
        )

    def __len__(self) -> int:
        return len(self.lrs)

    def at(self, k: int) -> Params:
        if not -len(self) <= k < len(self):  # a traced index would be clamped, not refused
            raise IndexError(f"checkpoint {k} of {len(self)}")
        return _index_tree(self.params, k)

    def select(self, indices: Sequence[int]) -> Checkpoints:
        """The checkpoints at ``indices`` (in that order), e.g. ``[len(ck) - 1]``: the last."""
        idx = np.asarray(indices, np.int64)

        def pick(seq):
            return tuple(seq[i] for i in idx) if len(seq) else ()

        def take(tree):
            return None if tree is None else jax.tree_util.tree_map(lambda x: x[idx], tree)

        return Checkpoints(
            take(self.params),
            self.lrs[idx],
            pick(self.steps),
            pick(self.hashes),
            take(self.second_moments),
        )

    def lr_array(self):
        dtype = jax.tree_util.tree_leaves(self.params)[0].dtype
        return jnp.asarray(self.lrs, dtype)


@jax.jit
def _index_tree(tree, k):
    """Entry ``k`` of every leaf's leading axis (one compiled program for every ``k``; eagerly,
    each leaf shape and index compiles its own)."""
    return jax.tree_util.tree_map(lambda x: x[k], tree)


# --------------------------------------------------------------------- reference loop
@functools.lru_cache(maxsize=16)
def single_event_grad_fn(apply_fn: Callable) -> Callable:
    """Jitted flat ``grad l(z; theta)`` of one event padded alone (cached per ``apply_fn``)."""
    return jax.jit(functools.partial(flat_grad_one, functools.partial(example_loss, apply_fn)))


def _one_event(gs: GraphSet, i: int, own_size: bool):
    """Event ``i`` padded alone (a two-graph Batch without the stack axis): to its *own* size
    (one padding node), or to the set's largest event."""
    if own_size:
        n, e = int(gs.events.n_node[i]), int(gs.n_edge[i])
        budget = Budget(n_node=n + 1, n_edge=max(e, 1), n_graph=2)
    else:
        budget = gs.single_budget()
    return jax.tree_util.tree_map(lambda x: x[0], gs.example_stack(np.array([i]), budget))


def _reference_grads(params, gs: GraphSet, grad_fn, own_size: bool) -> np.ndarray:
    """``[N, P]`` float64 gradients, one jitted single-event call per event."""
    out = [
        np.asarray(grad_fn(params, _one_event(gs, i, own_size)), np.float64) for i in range(len(gs))
    ]
    return np.stack(out) if out else np.zeros((0, 0))


def self_influence_reference(
    apply_fn: Callable,
    ckpts: Checkpoints,
    gs: GraphSet,
    progress: bool = False,
    own_size: bool = False,
) -> np.ndarray:
    """``[N]`` self-influence by the plain loop: one jitted single-event gradient per event.

    ``own_size=True`` pads each event to its own size, as the workload spec's timing loop does
    (one compiled shape per event size, no padding to the set's largest event); the default pads
    every event to the largest one (one compilation: what the exactness tests use, since padding
    contributes exactly zero either way).
    """
    grad_fn = single_event_grad_fn(apply_fn)
    out = np.zeros(len(gs))
    for k in range(len(ckpts)):
        params = ckpts.at(k)
        for i in tqdm(range(len(gs)), disable=not progress, desc=f"reference k={k}"):
            g = np.asarray(grad_fn(params, _one_event(gs, i, own_size)), np.float64)
            out[i] += ckpts.lrs[k] * float(g @ g)
    return out


def influence_matrix_reference(
    apply_fn: Callable,
    ckpts: Checkpoints,
    train: GraphSet,
    test: GraphSet,
    own_size: bool = False,
) -> np.ndarray:
    """``[N_train, N_test]`` influence by the plain loop (float64 accumulation)."""
    grad_fn = single_event_grad_fn(apply_fn)
    out = np.zeros((len(train), len(test)))
    for k in range(len(ckpts)):
        params = ckpts.at(k)
        g_tr = _reference_grads(params, train, grad_fn, own_size)
        g_te = _reference_grads(params, test, grad_fn, own_size)
        out += ckpts.lrs[k] * (g_tr @ g_te.T)
    return out


# --------------------------------------------------------------------- fast kernels
def self_influence(
    layout,
    ckpts: Checkpoints,
    gs: GraphSet,
    *,
    chunk_size: int = 64,
    per_checkpoint: bool = False,
    positions: np.ndarray | None = None,
    progress: bool = True,
    on_chunk: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    skip_chunk: Callable[[int], bool] | None = None,
    mesh=None,
    method: str = "autodiff",
    gradient_map: GradientMap | None = None,
) -> np.ndarray:
    """Self-influence of the events of ``gs`` (in stored order): ``[N]``, or ``[K, N]``.

    ``method``: ``"autodiff"`` (``||jax.grad||^2`` per event, the default) or ``"capture"``
    (per dense layer from its captured inputs and output gradients, by ghost norms where they
    are cheaper: :func:`hepattr_jax.per_example.capture_self_influence_kernel`); both exact.
    ``gradient_map``: :class:`~hepattr_jax.per_example.GradientMap` ``psi_k``, giving
    ``sum_k lr_k ||psi_k(g)||^2`` (Adam-aware TracIn, EK-FAC, cosine; ``"autodiff"`` only).

    ``on_chunk(index, positions, values [K, c])`` and ``skip_chunk(index)`` let a score store
    persist chunks and skip those already on disk (see :mod:`hepattr_jax.store`); chunk indices
    are deterministic for a given ``gs``, layout and ``chunk_size``. With a ``mesh``
    (:func:`hepattr_jax.sharding.event_mesh`) each chunk's events are split over its devices.
    """
    map_fn, map_state = map_parts(gradient_map)
    if method == "autodiff":
        kernel = self_influence_kernel(layout, map_fn)
    elif method == "capture":
        if gradient_map is not None:
            raise ConfigError(
                f"self-influence method 'capture' computes plain gradient norms; the gradient "
                f"map {gradient_map.name!r} needs method='autodiff'"
            )
        check_layerwise(layout, ckpts.params, gs, "loss")
        kernel = capture_self_influence_kernel(layout)
    else:
        raise ConfigError(f"self-influence method {method!r}: use 'autodiff' or 'capture'")
    out = np.zeros((len(ckpts), len(gs)))
    params, lrs, state = replicate((ckpts.params, ckpts.lr_array(), map_state), mesh)
    extra = () if state is None else (state,)  # the capture kernel takes no map state
    for _, pos, vals in stream(
        layout,
        gs,
        lambda data: kernel(params, lrs, data, *extra),
        chunk_size=chunk_size,
        positions=positions,
        desc="self-influence",
        progress=progress,
        on_chunk=lambda i, p, v: on_chunk(i, p, v.astype(np.float64)) if on_chunk else None,
        skip_chunk=skip_chunk,
        mesh=mesh,
    ):
        out[:, pos] = vals
    return out if per_checkpoint else out.sum(0)


@functools.lru_cache(maxsize=32)
def _scatter_rows_kernel() -> Callable:
    """Jitted, buffer-donating ``buf.at[rows].set(g)``; rows past the end are dropped."""

    def f(buf, g, rows):
        return buf.at[rows].set(g.astype(buf.dtype), mode="drop")

    return jax.jit(f, donate_argnums=0)


def _test_grads(
    layout,
    ckpts: Checkpoints,
    test: GraphSet,
    positions: np.ndarray,
    chunk_size: int,
    mesh,
    gradient_map: GradientMap | None = None,
) -> jax.Array:
    """``[M, K, P]`` flat (mapped) gradients of the test events at ``positions`` (in that
    order), built in one device buffer (each chunk written in place), so they are held once.
    Event-major, so that one event's ``K`` gradients are one contiguous ``K * P`` row: the
    train x test kernel contracts them in one matmul, with no per-checkpoint slice copied."""
    kernel = stacked_grad_kernel(layout, map_parts(gradient_map)[0])
    state = replicate(map_parts(gradient_map)[1], mesh)
    where = np.full(len(test), -1, np.int64)
    where[positions] = np.arange(len(positions))
    params = replicate(ckpts.params, mesh)
    scratch = shard_events(event_major_scratch(params, chunk_size), mesh)
    buf = replicate(jnp.zeros((len(positions), *scratch.shape[1:]), scratch.dtype), mesh)
    write = _scatter_rows_kernel()
    for chunk in layout.chunks(test, chunk_size, positions):
        rows = np.full(chunk_size, len(positions), np.int64)  # filler rows: out of range, dropped
        rows[: len(chunk.positions)] = where[chunk.positions]
        scratch = kernel(params, shard_events(chunk.data, mesh), scratch, state)
        buf = write(buf, scratch, rows)
    return buf


@kernel_cache
def _train_test_kernel(layout, map_fn: Callable | None = None) -> Callable:
    """Jitted ``f(params_k, lr_k, train_chunk, test_grads [M, K, P], scratch [C, K, P],
    state_k=None) -> (scores [M, C], scratch)`` (train gradients mapped by ``map_fn`` at
    ``state_k``, as the test gradients were; cached).

    The chunk's train gradients are taken one checkpoint at a time (``scan``: one checkpoint's
    activations live at once), scaled by ``eta_k`` and written in place into the donated
    ``scratch`` (of the test gradients' dtype; pass the returned one to the next call), laid
    out ``[C, K * P]``; the sum over checkpoints and parameters is then one matmul with the
    test gradients viewed ``[M, K * P]`` (a free reshape), which reads them once per chunk and
    copies nothing of them."""

    def one(params, ex, state):
        return flat_grad_one(layout.loss_one, params, ex, map_fn, state)

    per_event = jax.vmap(one, in_axes=(None, 0, None))

    @functools.partial(jax.jit, donate_argnums=4)
    def f(params_k, lr_k, chunk, test_grads, scratch, state_k):
        def scaled(x):
            params, lr, state = x
            return lr * per_event(params, chunk, state)

        g_tr = checkpoints_event_major(scaled, (params_k, lr_k, state_k), scratch)
        m, c = test_grads.shape[0], g_tr.shape[0]
        return test_grads.reshape(m, -1).astype(g_tr.dtype) @ g_tr.reshape(c, -1).T, g_tr

    return optional_state(f)


def train_test_chunks(
    layout,
    ckpts: Checkpoints,
    train: GraphSet,
    test: GraphSet,
    consume: Callable[[int, np.ndarray, np.ndarray, np.ndarray], None],
    *,
    chunk_size: int = 64,
    test_block: int | None = None,
    progress: bool = True,
    skip_chunk: Callable[[int], bool] | None = None,
    mesh=None,
    gradient_map: GradientMap | None = None,
) -> None:
    """Streams train x test influence: ``consume(index, block [M_b], train_positions [c],
    scores float64 [c, M_b])`` for every (test block, train chunk) not skipped.

    Test events are taken in blocks of ``test_block`` (``block``: their positions into
    ``test``); for each block every train chunk is streamed. ``index = b * len(train) + i`` for
    block ``b`` and train chunk ``i`` (:func:`train_test_index`): deterministic for given sets,
    layout, ``chunk_size`` and ``test_block``, which is what lets a store resume
    (``skip_chunk(index)``). A block whose chunks are all skipped computes no test gradients.
    """
    check_chunk_size(chunk_size, mesh)
    test_block = test_block or default_test_block(ckpts)
    map_fn, map_state = map_parts(gradient_map)
    kernel = _train_test_kernel(layout, map_fn)
    params, lrs, state = replicate((ckpts.params, ckpts.lr_array(), map_state), mesh)
    n = len(train)
    blocks = [np.arange(s, min(s + test_block, len(test))) for s in range(0, len(test), test_block)]
    for b, block in enumerate(blocks):
        # the block's test gradients, computed on the first chunk not skipped
        held: dict[str, jax.Array] = {}

        def chunk_fn(data, block=block, held=held):
            if "g_te" not in held:
                g_te = _test_grads(layout, ckpts, test, block, chunk_size, mesh, gradient_map)
                held["g_te"] = g_te
                dtype = jnp.result_type(g_te.dtype, lrs.dtype)
                held["scratch"] = shard_events(event_major_scratch(params, chunk_size, dtype), mesh)
            scores, held["scratch"] = kernel(
                params, lrs, data, held["g_te"], held["scratch"], state
            )
            return scores

        skip = None
        if skip_chunk is not None:
            skip = lambda i, b=b: skip_chunk(train_test_index(b, i, n))  # noqa: E731
        desc = "train x test" + (f" (block {b + 1}/{len(blocks)})" if len(blocks) > 1 else "")
        for i, pos, scores in stream(
            layout,
            train,
            chunk_fn,
            chunk_size=chunk_size,
            desc=desc,
            progress=progress,
            skip_chunk=skip,
            mesh=mesh,
        ):
            consume(train_test_index(b, i, n), block, pos, np.asarray(scores, np.float64).T)
        held.clear()


def train_test_index(block: int, chunk: int, n_train: int) -> int:
    """The chunk index of train chunk ``chunk`` in test block ``block``: ``block * n_train +
    chunk`` (a set of ``n_train`` events has at most ``n_train`` chunks, so indices are unique)."""
    return int(block) * int(n_train) + int(chunk)


def default_test_block(ckpts: Checkpoints, memory_bytes: float = 1.5e9) -> int:
    """How many test events' gradients (for all K checkpoints, float32) fit in ``memory_bytes``."""
    p_dim = ravel_pytree(ckpts.at(0))[0].shape[0]
    return max(1, int(memory_bytes // (4 * p_dim * len(ckpts))))


def influence_matrix(
    layout,
    ckpts: Checkpoints,
    train: GraphSet,
    test: GraphSet,
    *,
    chunk_size: int = 64,
    test_block: int | None = None,
    progress: bool = True,
    mesh=None,
    on_chunk: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    skip_chunk: Callable[[int], bool] | None = None,
    gradient_map: GradientMap | None = None,
) -> np.ndarray:
    """``[N_train, N_test]`` TracIn influence, exact (``mesh``, ``gradient_map``: see
    :func:`self_influence`).

    ``on_chunk(index, train_positions [c], values [M_b, c])`` (the rows of test block ``b``,
    see :func:`train_test_chunks` for ``index``) and ``skip_chunk(index)`` let a store persist
    and resume; skipped entries are left 0, for the caller to fill from its store.
    """
    out = np.zeros((len(train), len(test)))

    def consume(index, block, pos, scores):
        out[np.ix_(pos, block)] = scores
        if on_chunk is not None:
            on_chunk(index, pos, np.ascontiguousarray(scores.T))

    train_test_chunks(
        layout,
        ckpts,
        train,
        test,
        consume,
        chunk_size=chunk_size,
        test_block=test_block,
        progress=progress,
        skip_chunk=skip_chunk,
        mesh=mesh,
        gradient_map=gradient_map,
    )
    return out


@dataclasses.dataclass(frozen=True)
class TopK:
    """Per test event: the ``k`` train events of largest and of smallest influence.

    ``proponents``/``opponents``: int64 ``[M, k]`` positions into the train GraphSet, ordered
    from the strongest; ``*_scores``: float64 ``[M, k]``.
    """

    proponents: np.ndarray
    proponent_scores: np.ndarray
    opponents: np.ndarray
    opponent_scores: np.ndarray


def chunk_top_k(pos: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """One chunk's own top-k: ``(pro_scores, pro_positions, opp_scores, opp_positions)``, each
    ``[M_b, min(k, c)]``, from ``scores [c, M_b]`` of the train events at ``pos [c]``."""
    m = scores.shape[1]
    empty = (np.zeros((m, 0)), np.zeros((m, 0), np.int64))
    idx = np.broadcast_to(np.asarray(pos, np.int64)[None, :], (m, len(pos)))
    pro = _merge_top(*empty, scores.T, idx, k)
    opp = _merge_top(*empty, -scores.T, idx, k)
    return pro[0], pro[1], -opp[0], opp[1]


def merge_top_k(parts, k: int) -> tuple[np.ndarray, ...]:
    """Merges ``(pro_scores, pro_positions, opp_scores, opp_positions)`` parts (each ``[M, *]``)
    into the top ``k``. Ranking is by score, ties by smaller train position: a strict total
    order, so the result depends only on the union of the parts, never on how they were split
    or in which order they are merged (what makes a resumed top-k byte-identical)."""
    parts = list(parts)
    m = parts[0][0].shape[0]
    pro = (np.zeros((m, 0)), np.zeros((m, 0), np.int64))
    opp = pro
    for ps, pi, os_, oi in parts:
        pro = _merge_top(*pro, ps, pi, k)
        opp = _merge_top(*opp, -os_, oi, k)
    return pro[0], pro[1], -opp[0], opp[1]


def _merge_top(best_s, best_i, new_s, new_i, k):
    """Keeps the k largest of (best, new) along axis 1; ties broken by smaller train position."""
    s = np.concatenate([best_s, new_s], axis=1)
    i = np.concatenate([best_i, new_i], axis=1)
    order = _lexsort_rows(-s, i)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


def _lexsort_rows(primary, secondary):
    """Per row, the order sorting by ``primary`` then ``secondary`` (both ``[R, L]``)."""
    return np.lexsort((secondary, primary), axis=1)


def top_k(
    layout,
    ckpts: Checkpoints,
    train: GraphSet,
    test: GraphSet,
    k: int,
    *,
    chunk_size: int = 64,
    test_block: int | None = None,
    progress: bool = True,
    mesh=None,
    gradient_map: GradientMap | None = None,
) -> TopK:
    """Top-k proponents and opponents of every test event, merged chunk by chunk (streaming:
    each chunk's own top-k, :func:`chunk_top_k`, merged into its block's by
    :func:`merge_top_k`)."""
    k = min(k, len(train))
    parts: dict[int, tuple[np.ndarray, ...]] = {}

    def consume(index, block, pos, scores):
        key = int(block[0])
        new = chunk_top_k(pos, scores, k)
        parts[key] = new if key not in parts else merge_top_k([parts[key], new], k)

    train_test_chunks(
        layout,
        ckpts,
        train,
        test,
        consume,
        chunk_size=chunk_size,
        test_block=test_block,
        progress=progress,
        mesh=mesh,
        gradient_map=gradient_map,
    )
    rows = sorted(parts)
    pro_s, pro_i, opp_s, opp_i = (np.concatenate([parts[r][j] for r in rows]) for j in range(4))
    return TopK(pro_i, pro_s, opp_i, opp_s)


def top_k_from_matrix(matrix: np.ndarray, k: int) -> TopK:
    """Reference top-k from a full ``[N, M]`` matrix (ties broken by smaller train position)."""
    n = matrix.shape[0]
    idx = np.broadcast_to(np.arange(n)[None, :], (matrix.shape[1], n))
    pro = _lexsort_rows(-matrix.T, idx)[:, :k]
    opp = _lexsort_rows(matrix.T, idx)[:, :k]
    return TopK(
        pro, np.take_along_axis(matrix.T, pro, 1), opp, np.take_along_axis(matrix.T, opp, 1)
    )


# --------------------------------------------------------------------- projected (TRAK-style)
def projected_features(
    layout,
    ckpts: Checkpoints,
    gs: GraphSet,
    projector,
    *,
    output: str = "loss",
    chunk_size: int = 64,
    progress: bool = True,
    mesh=None,
    with_values: bool = False,
    on_chunk: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    skip_chunk: Callable[[int], bool] | None = None,
    gradient_map: GradientMap | None = None,
):
    """``[K, N, d]`` projected per-event gradients ``phi_k(z) = grad f(z; theta_k) R`` (float32
    unless the parameters are float64), events in stored order; ``f`` is the ``output``
    function (``"loss"`` for TracIn, ``"margin"`` for TRAK).

    With ``with_values`` also returns ``f(z; theta_k)`` ``[K, N]``. ``on_chunk(index, positions,
    values [K, d + 1, c])`` (features, then ``f`` as the last row) and ``skip_chunk`` persist and
    resume chunks as in :func:`self_influence`; skipped chunks are left 0 in the result, which is
    then the caller's to fill from its store. ``mesh``, ``gradient_map`` (projecting
    ``psi_k(grad f)``; dense projectors only): see :func:`self_influence`.
    """
    if getattr(projector, "structure", "dense") == "kronecker":
        check_layerwise(layout, ckpts.params, gs, output)
    kernel = projected_grad_kernel(layout, projector, output, map_parts(gradient_map)[0])
    dtype = jax.tree_util.tree_leaves(ckpts.params)[0].dtype
    d = projector.proj_dim
    out = np.zeros((len(ckpts), len(gs), d), dtype)
    values = np.zeros((len(ckpts), len(gs)), np.float64)
    params, state = replicate((ckpts.params, map_parts(gradient_map)[1]), mesh)

    def chunk_fn(data):
        feats, vals = kernel(params, data, state)  # [K, C, d], [K, C]
        return jnp.concatenate([feats.transpose(0, 2, 1), vals[:, None, :]], axis=1)

    for _, pos, both in stream(
        layout,
        gs,
        chunk_fn,
        chunk_size=chunk_size,
        desc=f"features d={d}",
        progress=progress,
        on_chunk=on_chunk,
        skip_chunk=skip_chunk,
        mesh=mesh,
    ):
        out[:, pos] = both[:, :d].transpose(0, 2, 1)
        values[:, pos] = both[:, d]
    return (out, values) if with_values else out


def layer_energy(
    layout,
    ckpts: Checkpoints,
    gs: GraphSet,
    *,
    output: str = "loss",
    n_events: int = 256,
    chunk_size: int = 64,
) -> np.ndarray:
    """``[B]`` mean squared gradient norm of each block of a per-layer projection (dense layers,
    then the rest), over the first ``n_events`` events of ``gs`` and all checkpoints."""
    kernel = layer_energy_kernel(layout, output)
    pos = np.arange(min(n_events, len(gs)))
    total = None
    for _, _, vals in stream(
        layout,
        gs,
        lambda data: kernel(ckpts.params, data),
        chunk_size=chunk_size,
        positions=pos,
        progress=False,
    ):
        part = vals.astype(np.float64).sum(axis=(0, 2))
        total = part if total is None else total + part
    if total is None:
        raise ConfigError("layer energy: no events")
    return total / (len(pos) * len(ckpts))


def calibrate_projector(layout, ckpts: Checkpoints, gs: GraphSet, projector, **kwargs):
    """``projector``, or for an uncalibrated per-layer one (:class:`~hepattr_jax.projection.
    KroneckerProjector` without ``weights``) the same with its dimensions split by
    :func:`layer_energy` on ``gs`` (``kwargs``: ``output``, ``n_events``, ``chunk_size``).
    Calibrate once and use the result for every set whose features are compared (train and
    test): it is deterministic, and recorded in the projector's ``to_meta``."""
    if getattr(projector, "structure", "dense") != "kronecker" or projector.weights is not None:
        return projector
    check_layerwise(layout, ckpts.params, gs, kwargs.get("output", "loss"))
    return projector.calibrated(list(layer_energy(layout, ckpts, gs, **kwargs)))


def self_influence_from_features(features: np.ndarray, lrs) -> np.ndarray:
    """``[N]`` ``sum_k lr_k ||phi_k(z)||^2`` from ``[K, N, d]`` features (float64 sums)."""
    f = np.asarray(features, np.float64)
    return np.einsum("k,knd,knd->n", np.asarray(lrs, np.float64), f, f)


def influence_from_features(
    train_features: np.ndarray, test_features: np.ndarray, lrs
) -> np.ndarray:
    """``[N, M]`` ``sum_k lr_k <phi_k(z), phi_k(z')>`` from ``[K, N, d]`` and ``[K, M, d]``."""
    a = np.asarray(train_features, np.float64)
    b = np.asarray(test_features, np.float64)
    return np.einsum("k,knd,kmd->nm", np.asarray(lrs, np.float64), a, b)
