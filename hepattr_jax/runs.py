"""Reopening a finished training run: its config, model, data splits and checkpoints.

A run directory (see :mod:`hepattr_jax.train`) is self-describing; everything downstream of
training (influence, studies, explanations) starts from :func:`load_run`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import jax
import numpy as np

from hepattr_jax.checkpoints import CheckpointStore, params_subtree
from hepattr_jax.config import TrainConfig, load_run_config
from hepattr_jax.data.events import EventSet
from hepattr_jax.errors import CheckpointError
from hepattr_jax.tracin import Checkpoints
from hepattr_jax.train import (
    PreparedData,
    adam_second_moment,
    init_state,
    make_optimizer,
    make_schedule,
    model_from_config,
    prepare_data,
)

log = logging.getLogger(__name__)


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


def check_checkpoint_record(
    run_dir: str | Path, available: list[int], *, allow_missing: bool = False
) -> None:
    """Checks the checkpoints on disk against the run's own record, ``metrics.json``
    ``checkpoint_steps`` (written when training finishes): TracIn over a subset of a run's
    checkpoints (one deleted, or a run still training) is a different estimate, not the run's.

    Raises:
      CheckpointError: a recorded checkpoint is missing, one on disk is not recorded, or the
        run has not finished (no ``metrics.json``), unless ``allow_missing`` (then a warning).
    """
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    problems = []
    if path.exists():
        try:
            recorded = [int(s) for s in json.loads(path.read_text())["checkpoint_steps"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{path}: cannot read the run's checkpoint_steps ({type(e).__name__}: {e})"
            ) from None
        missing = sorted(set(recorded) - set(available))
        unrecorded = sorted(set(available) - set(recorded))
        if missing:
            problems.append(
                f"checkpoint(s) at step(s) {missing} listed in {path} are missing from "
                f"{run_dir / 'checkpoints'}"
            )
        if unrecorded:
            problems.append(
                f"checkpoint(s) at step(s) {unrecorded} in {run_dir / 'checkpoints'} are not "
                f"listed in {path}"
            )
    else:
        problems.append(
            f"{run_dir}: the run has not finished (no metrics.json), so its {len(available)} "
            "checkpoint(s) on disk may not be all of its checkpoints"
        )
    if not problems:
        return
    msg = "; ".join(problems) + "; TracIn over these checkpoints is not the run's TracIn"
    if not allow_missing:
        raise CheckpointError(
            msg + ". Pass --allow-missing-checkpoints (allow_missing_checkpoints=True) to use "
            "the checkpoints on disk anyway"
        )
    log.warning(
        "%s. USING THE %d CHECKPOINT(S) ON DISK ANYWAY (allow_missing_checkpoints)",
        msg,
        len(available),
    )


def load_run(
    run_dir: str | Path,
    *,
    events: EventSet | None = None,
    data: PreparedData | None = None,
    steps: list[int] | None = None,
    allow_missing_checkpoints: bool = False,
) -> Run:
    """Reopens ``run_dir``: rebuilds the data (checked against the checkpoints' data
    fingerprint) and loads the checkpoints ``steps`` (default: all, which must be every
    checkpoint the run recorded; see :func:`check_checkpoint_record`)."""
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
    if steps is None:
        check_checkpoint_record(run_dir, available, allow_missing=allow_missing_checkpoints)
        steps = available
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
    params, lrs, hashes, moments = [], [], [], []
    for step in steps:
        state, meta = store.restore_with_meta(step, target)
        params.append(params_subtree(state))
        lrs.append(meta["lr"])
        hashes.append(meta["params_hash"])
        where = f"{run_dir / 'checkpoints'} step {step}"
        v = adam_second_moment(state["opt_state"], where)
        moments.append(jax.tree_util.tree_map(lambda x, p: x.astype(p.dtype), v, params[-1]))
    ckpts = Checkpoints.from_list(params, lrs, steps, hashes, moments)
    return Run(run_dir, config, model, data, ckpts)
