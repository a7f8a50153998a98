"""Bad data and faults during training and writing: each is a clear error naming the split,
file or setting (or the documented behaviour), and nothing already written is lost.

Hand-checked references: the metrics of a diverged run are those of its last good checkpoint,
recomputed here from that checkpoint's parameters; file modes are ``0666 & ~umask``.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import json
import logging
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from hepattr_jax import metrics
from hepattr_jax.checkpoints import CheckpointStore
from hepattr_jax.errors import CheckpointError, ConfigError, DataError, WriteError
from hepattr_jax.io_utils import atomic_write_json, atomic_write_text, umask
from hepattr_jax.runs import load_run
from hepattr_jax.train import evaluate_events, train
from tests.helpers import TINY, TINY_TOML, is_root, snapshot, tiny_events

train_module = importlib.import_module("hepattr_jax.train")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``TINY`` (two epochs, two checkpoints), shared: tests copy it before changing it."""
    run = tmp_path_factory.mktemp("faults") / "run"
    train(TINY, run, progress=False)
    return run


def _copy(run, tmp_path):
    return Path(shutil.copytree(run, tmp_path / "copy"))


# --------------------------------------------------------------------- item 6: refused up front
def test_events_of_one_class_are_refused_before_anything_is_written(tmp_path):
    ev = tiny_events()
    ev = dataclasses.replace(ev, labels=np.zeros_like(ev.labels))
    with pytest.raises(DataError, match="of the train split are of class 0"):
        train(TINY, tmp_path / "run", events=ev, progress=False)
    assert not (tmp_path / "run").exists()


def test_an_empty_validation_split_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="split must be three fractions > 0"):
        TINY.replace(split=(0.85, 0, 0.15))
    # fractions > 0 that still leave no validation event (20 events, split seed 2): named
    cfg = TINY.replace(
        dataset_kwargs={**TINY.dataset_kwargs, "n_events": 20},
        split=(0.5, 0.01, 0.49),
        split_seed=2,
    )
    with pytest.raises(
        DataError, match=r"random_events\(seed=1\) \(run .*\): the val split is empty"
    ):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_diverged_first_epoch_is_recorded_and_named(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"diverged in epoch 1 before any checkpoint.*lower lr"):
        train(TINY.replace(lr=1e10), run, progress=False)
    (rec,) = json.loads((run / "history.json").read_text())
    assert rec["diverged"] is True and rec["train_loss"] is None and rec["epoch"] == 0


@pytest.mark.slow  # a second training run (the first-epoch case stays in make test-fast)
def test_a_diverged_later_epoch_stops_and_reports_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Fault injection: from epoch 2 on the training step reports a NaN loss."""
    real = train_module.make_steps
    calls = {"n": 0}

    def make_steps(apply_fn, tx):
        train_step, eval_step = real(apply_fn, tx)

        def nan_after_first_epoch(state, batch):
            calls["n"] += 1
            state, loss = train_step(state, batch)
            return state, loss if calls["n"] <= steps_per_epoch else loss * np.nan

        return nan_after_first_epoch, eval_step

    n_train = len(train_module.prepare_data(TINY).train)
    steps_per_epoch = -(-n_train // TINY.batch_size)
    monkeypatch.setattr(train_module, "make_steps", make_steps)
    result = train(TINY, tmp_path / "run", progress=False)
    assert result["diverged_epoch"] == 1
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h.get("diverged", False) for h in hist] == [False, True]
    store = CheckpointStore(
        tmp_path / "run" / "checkpoints",
        config_fingerprint=None,
        data_fingerprint=None,
        create=False,
    )
    assert store.steps() == [steps_per_epoch]  # the diverged state was not saved
    # reference: the test metrics of the epoch-1 checkpoint, recomputed from its parameters
    monkeypatch.undo()
    run = load_run(tmp_path / "run")
    logits, _ = evaluate_events(run.model.apply, run.checkpoints.at(0), run.data.test)
    want = metrics.binary_metrics(run.data.test.events.labels, logits)
    assert result["test"]["auroc"] == pytest.approx(want["auroc"], abs=1e-6)
    assert result["test"]["accuracy"] == pytest.approx(want["accuracy"], abs=1e-6)


# --------------------------------------------------------------------- item 10: nothing written
def test_a_refused_resume_writes_nothing(tiny_run):
    run = tiny_run
    before = snapshot(run)
    changed = tiny_events(seed=2)  # same config, other data: the checkpoints refuse it
    with pytest.raises(CheckpointError, match="data_fingerprint differs"):
        train(TINY, run, events=changed, progress=False)
    assert snapshot(run) == before  # normalization.json, config.json, ... untouched


# --------------------------------------------------------------------- item 8: checkpoint set
def test_a_deleted_checkpoint_is_refused_unless_allowed(tiny_run, tmp_path, caplog):
    run = _copy(tiny_run, tmp_path)
    steps = json.loads((run / "metrics.json").read_text())["checkpoint_steps"]
    assert len(steps) == 2
    shutil.rmtree(run / "checkpoints" / str(steps[0]))
    with pytest.raises(
        CheckpointError, match=rf"step\(s\) \[{steps[0]}\] listed in .*metrics.json"
    ):
        load_run(run)
    with caplog.at_level(logging.WARNING, logger="hepattr_jax.runs"):
        r = load_run(run, allow_missing_checkpoints=True)
    assert list(r.checkpoints.steps) == [steps[1]]
    assert "USING THE 1 CHECKPOINT(S) ON DISK ANYWAY" in caplog.text


def test_an_unfinished_run_is_refused_unless_allowed(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    (run / "metrics.json").unlink()
    with pytest.raises(CheckpointError, match="has not finished"):
        load_run(run)
    assert len(load_run(run, allow_missing_checkpoints=True).checkpoints) == 2


def test_an_edited_learning_rate_is_refused(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    step = json.loads((run / "metrics.json").read_text())["checkpoint_steps"][1]
    meta_file = run / "checkpoints" / str(step) / "meta" / "metadata"  # orbax JsonSave
    meta = json.loads(meta_file.read_text())
    meta["lr"] = meta["lr"] * 10  # the TracIn weight of this checkpoint
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=rf"step {step}: lr_hash mismatch"):
        load_run(run)


def test_the_cli_has_the_override_flag():
    from hepattr_jax.cli import build_parser

    p = build_parser()
    for argv in (["influence", "self", "r"], ["influence", "trak", "r"], ["explain", "r"]):
        assert p.parse_args(argv).allow_missing_checkpoints is False
        assert p.parse_args([*argv, "--allow-missing-checkpoints"]).allow_missing_checkpoints


# --------------------------------------------------------------------- item 11: write faults
def test_a_full_disk_is_a_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"old": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match=rf"cannot write {path}: .*disk is full"):
        atomic_write_json(path, {"new": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left


def test_a_read_only_run_directory_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """Simulated (tests may run as root, whom permissions do not stop): creating any file
    fails with EACCES, as in a directory without write permission."""
    import tempfile

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    from hepattr_jax import cli

    (tmp_path / "c.toml").write_text(TINY_TOML)
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(WriteError, match=r"cannot write .*config.json: Permission denied"):
        train(TINY.replace(epochs=1), tmp_path / "run", progress=False)
    argv = ["train", str(tmp_path / "c.toml"), "--run-dir", str(tmp_path / "run2"), "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: cannot write {tmp_path / 'run2' / 'config.json'}: Permission denied" in err


def _deny_writes(monkeypatch):
    """From here on, opening any file for writing or creating one fails with EACCES."""
    import tempfile

    real_open = os.open
    write = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def ro_open(path, flags, *a, **k):
        if flags & write:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(tempfile, "mkstemp", denied)


def test_a_finished_store_is_read_without_write_access(tiny_run, tmp_path, monkeypatch):
    from hepattr_jax.errors import StoreError
    from hepattr_jax.scoring import scored_self_influence

    run = load_run(tiny_run)
    first = scored_self_influence(run, tmp_path / "si", chunk_size=64, progress=False)
    before = snapshot(tmp_path / "si")
    _deny_writes(monkeypatch)
    again = scored_self_influence(run, tmp_path / "si", chunk_size=64, progress=False)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(StoreError, match=r"si2: cannot take the store's lock .*Permission denied"):
        (tmp_path / "si2").mkdir()
        scored_self_influence(run, tmp_path / "si2", chunk_size=64, progress=False)
    monkeypatch.undo()
    assert snapshot(tmp_path / "si") == before


@pytest.mark.skipif(is_root(), reason="root ignores directory permissions")
def test_a_truly_read_only_directory_is_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(WriteError, match=str(ro)):
            atomic_write_text(ro / "x.txt", "x")
    finally:
        ro.chmod(0o755)


# --------------------------------------------------------------------- item 12: modes
def test_run_files_are_readable_by_others_like_plots(tiny_run, tmp_path):
    run = tiny_run
    want = 0o666 & ~umask()
    for name in (
        "config.json",
        "normalization.json",
        "history.json",
        "metrics.json",
        "predictions_test.npz",
        "roc.png",
        "loss_curve.png",
    ):
        assert stat.S_IMODE((run / name).stat().st_mode) == want, name
    old = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
