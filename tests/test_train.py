"""Training: steps compile once, exact resume after a kill, checkpoints carry step and lr."""

import json

import jax
import numpy as np
import pytest

from hepattr_jax.checkpoints import CheckpointStore
from hepattr_jax.config import TrainConfig, load_config
from hepattr_jax.errors import CheckpointError, ConfigError
from hepattr_jax.train import (
    make_optimizer,
    make_schedule,
    make_steps,
    model_from_config,
    prepare_data,
    train,
)

CFG = TrainConfig(
    dataset="random",
    dataset_kwargs={"n_events": 240, "seed": 5, "n_globals": 2},
    model="edgeconv",
    model_kwargs={"hidden": 16, "readout_hidden": 16},
    use_globals=True,
    batch_size=32,
    epochs=4,
    lr=3e-3,
    warmup_epochs=1,
    patience=0,
)


class Interrupted(Exception):
    pass


def _final_params(run_dir):
    store = CheckpointStore(
        run_dir / "checkpoints", config_fingerprint=None, data_fingerprint=None, create=False
    )
    step = store.latest_step()
    # Raw restore against the checkpoint's own structure: compare leaf bytes via the hash.
    return step, store.meta(step)["params_hash"], store.meta(step)


def test_train_steps_compile_once(count_traces):
    data = prepare_data(CFG)
    budget = data.train.batch_budget(CFG.batch_size)
    model = model_from_config(CFG)
    tx = make_optimizer(CFG, make_schedule(CFG, 10))
    train_step, eval_step = make_steps(model.apply, tx)
    from hepattr_jax.train import batches, init_state

    state = init_state(CFG, model, tx, data.train.training_batch(np.arange(4), budget))
    n = 0
    with count_traces() as traces:
        for batch in batches(data.train, CFG.batch_size, budget):  # the last batch is partial
            state, loss = train_step(state, batch)
            eval_step(state["params"], batch)
            n += 1
    assert n > 2 and np.isfinite(float(loss))
    assert traces[train_step.__name__] == 1, traces
    assert traces[eval_step.__name__] == 1, traces


@pytest.mark.slow  # long (compiles a lot): make test runs it, make test-fast not
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    full = train(CFG, tmp_path / "full", progress=False)

    def kill_after_epoch_1(epoch, record):
        if epoch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(CFG, tmp_path / "resumed", progress=False, on_epoch_end=kill_after_epoch_1)
    store = CheckpointStore(
        tmp_path / "resumed" / "checkpoints",
        config_fingerprint=None,
        data_fingerprint=None,
        create=False,
    )
    assert len(store.steps()) == 2  # epochs 0 and 1 survived the kill
    resumed = train(CFG, tmp_path / "resumed", progress=False)

    a, b = _final_params(tmp_path / "full"), _final_params(tmp_path / "resumed")
    assert a[0] == b[0]
    assert a[1] == b[1], "parameters after resume differ from the uninterrupted run"
    assert resumed["test"] == full["test"]
    assert resumed["checkpoint_steps"] == full["checkpoint_steps"]
    hist = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]


@pytest.mark.slow  # a training run of its own: make test runs it, make test-fast not
def test_checkpoints_carry_step_and_the_lr_used(tmp_path):
    result = train(CFG, tmp_path / "run", progress=False)
    data = prepare_data(CFG)
    steps_per_epoch = -(-len(data.train) // CFG.batch_size)
    schedule = make_schedule(CFG, steps_per_epoch)
    store = CheckpointStore(
        tmp_path / "run" / "checkpoints",
        config_fingerprint=None,
        data_fingerprint=None,
        create=False,
    )
    assert store.steps() == [steps_per_epoch * (e + 1) for e in range(CFG.epochs)]
    for step in store.steps():
        meta = store.meta(step)
        assert meta["step"] == step
        # The lr of the last update before the checkpoint (optax counts updates from 0).
        assert meta["lr"] == pytest.approx(float(schedule(step - 1)), rel=1e-6)
    assert result["n_params"] == sum(
        x.size
        for x in jax.tree_util.tree_leaves(
            model_from_config(CFG).init(
                jax.random.key(0),
                data.train.training_batch(np.arange(2), data.train.batch_budget(2)).graphs,
            )
        )
    )


def test_a_run_directory_refuses_another_config(tmp_path):
    train(CFG.replace(epochs=1), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="different config"):
        train(CFG.replace(epochs=1, lr=1e-2), tmp_path / "run", progress=False)


def test_resume_from_a_corrupt_checkpoint_is_a_clear_error(tmp_path):
    train(CFG.replace(epochs=1), tmp_path / "run", progress=False)
    step_dir = next(p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    meta = next(step_dir.glob("meta/*"))
    meta.write_text("{not json")
    with pytest.raises(CheckpointError, match=step_dir.name):
        train(CFG.replace(epochs=1), tmp_path / "run", progress=False)


def test_unknown_setting_and_bad_toml_are_named(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('model = "edgeconv"\nlearning_rate = 0.1\n')
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(p)
    p.write_text("model = \n")
    with pytest.raises(ConfigError, match="c.toml"):
        load_config(p)
    with pytest.raises(ConfigError, match="missing.toml"):
        load_config(tmp_path / "missing.toml")
