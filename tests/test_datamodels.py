"""Subset models trained side by side with vmap equal the same models trained one at a time."""

import dataclasses
from functools import partial

import jax
import numpy as np
import optax
import pytest

from hepattr_jax.config import TrainConfig
from hepattr_jax.datamodels import subset_masks, train_subset_models, weighted_mean_loss
from hepattr_jax.errors import ConfigError
from hepattr_jax.train import (
    batches,
    make_optimizer,
    make_schedule,
    model_from_config,
    prepare_data,
)

CFG = TrainConfig(
    dataset="random",
    dataset_kwargs={"n_events": 90, "seed": 2, "n_globals": 2},
    model="edgeconv",
    model_kwargs={"hidden": 8, "readout_hidden": 8},
    use_globals=True,
    batch_size=32,
    epochs=2,
    lr=3e-3,
    warmup_epochs=1,
    patience=0,
)


def _one_model(config, data, mask, s):
    """Model ``s`` alone: the plain loop the vmapped trainer must reproduce."""
    model = model_from_config(config)
    n = len(data.train)
    budget = data.train.batch_budget(config.batch_size)
    tx = make_optimizer(config, make_schedule(config, -(-n // config.batch_size)))
    example = data.train.training_batch(np.arange(config.batch_size), budget)
    key = jax.random.fold_in(jax.random.key(config.seed), s)
    params = jax.jit(model.init)(key, example.graphs)
    opt = tx.init(params)

    @jax.jit  # one step jitted whole (eager optax compiles each operation per leaf shape)
    def step(params, opt, batch, w):
        grads = jax.grad(partial(weighted_mean_loss, model.apply))(params, batch, w)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    for epoch in range(config.epochs):
        order = np.random.default_rng([config.seed, epoch]).permutation(n)
        todo = batches(data.train, config.batch_size, budget, order)
        for start, batch in zip(range(0, n, config.batch_size), todo, strict=True):
            pos = order[start : start + config.batch_size]
            w = np.zeros(budget.n_graph, np.float32)
            w[: len(pos)] = mask[pos]
            params, opt = step(params, opt, batch, w)
    apply = jax.jit(model.apply)
    logits = np.concatenate(
        [
            np.asarray(apply(params, b.graphs))[np.asarray(b.graph_mask)]
            for b in batches(data.test, 64, data.test.batch_budget(64))
        ]
    )
    return (2.0 * data.test.events.labels - 1.0) * logits


@pytest.mark.slow  # long (compiles a lot): make test runs it, make test-fast not
def test_vmapped_subset_models_equal_one_at_a_time():
    data = prepare_data(CFG)
    masks = subset_masks(len(data.train), 4, 0.5, seed=1)
    out = train_subset_models(CFG, data, masks, {"test": data.test}, group=2, progress=False)
    assert out["test"].shape == (4, len(data.test))
    for s in (0, 3):  # groups of 2: the first of the first group, the last of the second
        want = _one_model(CFG, data, masks[s].astype(np.float32), s)
        np.testing.assert_allclose(out["test"][s], want, rtol=2e-4, atol=2e-5)
    assert not np.allclose(out["test"][0], out["test"][1])  # other subset, other model


def test_bad_masks_are_refused():
    data = prepare_data(dataclasses.replace(CFG, epochs=1))
    with pytest.raises(ConfigError, match="want"):
        train_subset_models(CFG, data, np.ones((2, 5), bool), {}, progress=False)
    empty = np.zeros((1, len(data.train)), bool)
    with pytest.raises(ConfigError, match="keeps no event"):
        train_subset_models(CFG, data, empty, {}, progress=False)
    with pytest.raises(ConfigError, match="alpha"):
        subset_masks(10, 2, 0.0, seed=0)
