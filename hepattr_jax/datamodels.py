"""Many small models on random subsets of the training set, trained side by side with ``vmap``:
the ground truth of the linear datamodeling score (LDS; TRAK, arXiv 2303.14186, section 2).

Subset model ``s`` is trained on the events ``S_s`` (a row of a boolean mask ``[S, N]``) exactly as
:func:`hepattr_jax.train.train` would train on them, with one change that makes all ``S`` models
share their input batches: each batch is drawn from the *whole* training set (same order for every
model) and model ``s`` weights event ``i`` by ``mask[s, i]``, so its loss is the mean over the batch
events in ``S_s``. A model thus sees each of its events once per epoch, in batches of about
``alpha * batch_size`` of its events, for the same number of optimiser steps as a full-set run
(``ceil(N / batch_size)`` per epoch) and the same learning-rate schedule. One jitted step,
``vmap``-ed over the models' parameters, optimiser states and weights, trains a group of models at
once (``group`` bounds memory); each model's initial parameters come from
``fold_in(key(seed), s)``.

The output is each subset model's *margin* ``(2y - 1) logit`` on the evaluation events: what the
attribution scores must predict (:func:`hepattr_jax.evaluation.linear_datamodeling_score`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from hepattr_jax.config import TrainConfig
from hepattr_jax.errors import ConfigError
from hepattr_jax.graphs import Batch, GraphSet
from hepattr_jax.losses import per_graph_loss
from hepattr_jax.train import (
    PreparedData,
    batches,
    make_optimizer,
    make_schedule,
    model_from_config,
)


def subset_masks(n: int, n_subsets: int, alpha: float, seed: int) -> np.ndarray:
    """``[n_subsets, n]`` boolean: each row keeps exactly ``round(alpha * n)`` events, drawn
    uniformly without replacement from ``default_rng([seed, row])``."""
    if not 0 < alpha <= 1:
        raise ConfigError(f"alpha = {alpha}: the subset fraction must be in (0, 1]")
    k = int(round(alpha * n))
    masks = np.zeros((n_subsets, n), bool)
    for s in range(n_subsets):
        masks[s, np.random.default_rng([seed, s]).choice(n, k, replace=False)] = True
    return masks


def weighted_mean_loss(apply_fn, params, batch: Batch, weights: jax.Array) -> jax.Array:
    """``sum_i w_i l_i / max(sum_i w_i, 1)`` over the real graphs of a training batch."""
    w = jnp.where(batch.graph_mask, weights, 0.0)
    return (w * per_graph_loss(apply_fn, params, batch)).sum() / jnp.maximum(w.sum(), 1.0)


def _margins(apply_fn, params_s, gs: GraphSet, batch_size: int) -> np.ndarray:
    """``[S, N]`` margins of the events of ``gs`` under each stacked model."""
    budget = gs.batch_budget(batch_size)
    logits_fn = jax.jit(jax.vmap(lambda p, g: apply_fn(p, g), in_axes=(0, None)))
    out = []
    for batch in batches(gs, batch_size, budget):
        z = np.asarray(logits_fn(params_s, batch.graphs), np.float64)
        m = np.asarray(batch.graph_mask)
        out.append((2.0 * np.asarray(batch.labels)[m] - 1.0) * z[:, m])
    return np.concatenate(out, axis=1)


def train_subset_models(
    config: TrainConfig,
    data: PreparedData,
    masks: np.ndarray,
    eval_sets: dict[str, GraphSet],
    *,
    group: int = 16,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Trains one model per row of ``masks`` ``[S, N_train]`` (see module doc) and returns the
    margins ``{name: [S, N_name]}`` of each model on each of ``eval_sets`` (events in stored
    order). Models are trained ``group`` at a time."""
    masks = np.asarray(masks, bool)
    n = len(data.train)
    if masks.ndim != 2 or masks.shape[1] != n:
        raise ConfigError(f"masks {masks.shape}: want [S, {n}] (one row per subset model)")
    if not masks.any(axis=1).all():
        raise ConfigError("a subset mask keeps no event")
    model = model_from_config(config)
    budget = data.train.batch_budget(config.batch_size)
    steps_per_epoch = -(-n // config.batch_size)
    tx = make_optimizer(config, make_schedule(config, steps_per_epoch))
    example = data.train.training_batch(np.arange(min(n, config.batch_size)), budget)

    def init(key):
        params = model.init(key, example.graphs)
        return params, tx.init(params)

    def step(params, opt_state, batch, weights):
        loss_fn = partial(weighted_mean_loss, model.apply)
        grads = jax.grad(loss_fn)(params, batch, weights)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    init_v = jax.jit(jax.vmap(init))
    step_v = jax.jit(jax.vmap(step, in_axes=(0, 0, None, 0)), donate_argnums=(0, 1))
    out: dict[str, list[np.ndarray]] = {name: [] for name in eval_sets}
    total = masks.shape[0] * config.epochs * steps_per_epoch
    with tqdm(total=total, desc="subset models", unit="model-step", disable=not progress) as bar:
        for g0 in range(0, masks.shape[0], group):
            rows = np.arange(g0, min(g0 + group, masks.shape[0]))
            keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(config.seed), s))(
                jnp.asarray(rows)
            )
            params, opt_state = init_v(keys)
            weights_all = masks[rows].astype(np.float32)
            for epoch in range(config.epochs):
                order = np.random.default_rng([config.seed, epoch]).permutation(n)
                for start, batch in zip(
                    range(0, n, config.batch_size),
                    batches(data.train, config.batch_size, budget, order),
                    strict=True,
                ):
                    pos = order[start : start + config.batch_size]
                    w = np.zeros((len(rows), budget.n_graph), np.float32)
                    w[:, : len(pos)] = weights_all[:, pos]
                    params, opt_state = step_v(params, opt_state, batch, w)
                    bar.update(len(rows))
            for name, gs in eval_sets.items():
                out[name].append(_margins(model.apply, params, gs, 256))
    return {name: np.concatenate(parts) for name, parts in out.items()}
