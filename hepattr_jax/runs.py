"""Reopening a finished training run: its config, model, data splits and checkpoints.

A run directory (see :mod:`hepattr_jax.train`) is self-describing; everything downstream of
training (influence, studies, explanations) starts from :func:`load_run`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from hepattr_jax.checkpoints import CheckpointStore, params_subtree
from hepattr_jax.config import TrainConfig, load_run_config
from hepattr_jax.data.events import EventSet
from hepattr_jax.errors import CheckpointError
from hepattr_jax.tracin import Checkpoints
from hepattr_jax.train import (
    PreparedData,
    init_state,
    make_optimizer,
    make_schedule,
    model_from_config,
    prepare_data,
)


@dataclasses.dataclass(frozen=True)
class Run:
    """A training run reopened from disk.

    Attributes:
      run_dir: the directory.
      config: its TrainConfig.
      model: the flax module (``model.apply(params, graphs)`` gives logits).
      data: the normalised train/val/test graphs exactly as training saw them.
      checkpoints: every saved checkpoint, stacked, with its learning rate, step and hash.
    """

    run_dir: Path
    config: TrainConfig
    model: object
    data: PreparedData
    checkpoints: Checkpoints


def load_run(
    run_dir: str | Path,
    *,
    events: EventSet | None = None,
    data: PreparedData | None = None,
    steps: list[int] | None = None,
) -> Run:
    """Reopens ``run_dir``: rebuilds the data (checked against the checkpoints' data
    fingerprint) and loads the checkpoints ``steps`` (default: all)."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    data = prepare_data(config, events) if data is None else data
    store = CheckpointStore(
        run_dir / "checkpoints",
        config_fingerprint=config.fingerprint(),
        data_fingerprint=data.fingerprint,
        create=False,
    )
    available = store.steps()
    if not available:
        raise CheckpointError(f"{run_dir / 'checkpoints'}: no checkpoints")
    steps = available if steps is None else steps
    missing = sorted(set(steps) - set(available))
    if missing:
        raise CheckpointError(
            f"{run_dir / 'checkpoints'}: no checkpoint at step(s) {missing}; available {available}"
        )
    model = model_from_config(config)
    budget = data.train.batch_budget(config.batch_size)
    steps_per_epoch = -(-len(data.train) // config.batch_size)
    tx = make_optimizer(config, make_schedule(config, steps_per_epoch))
    example = data.train.training_batch(np.arange(min(len(data.train), config.batch_size)), budget)
    target = init_state(config, model, tx, example)
    params, lrs, hashes = [], [], []
    for step in steps:
        state, meta = store.restore_with_meta(step, target)
        params.append(params_subtree(state))
        lrs.append(meta["lr"])
        hashes.append(meta["params_hash"])
    ckpts = Checkpoints.from_list(params, lrs, steps, hashes)
    return Run(run_dir, config, model, data, ckpts)
