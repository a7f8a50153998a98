"""ScoreStore: round trips, refusal to mix results, damaged chunks, and resuming an interrupted
self-influence run to the bit-identical result.

References: arrays assembled by hand from the chunks that were written (kept in memory); for the
resume test, an uninterrupted run into another directory and a direct
``tracin.self_influence`` call. The run here is a hand-made two-checkpoint ``Run`` of a tiny
EdgeConv on random events with 3 or 4 nodes (two node-count buckets, so chunk indices cross a
bucket boundary); it costs a few small compilations, no training.
"""

import dataclasses
import json
import logging
import os

import jax
import numpy as np
import pytest

from hepattr_jax import tracin
from hepattr_jax.checkpoints import tree_hash
from hepattr_jax.config import TrainConfig
from hepattr_jax.data.synthetic import random_events
from hepattr_jax.errors import StoreError
from hepattr_jax.per_example import layout_for
from hepattr_jax.runs import Run
from hepattr_jax.scoring import run_meta, scored_self_influence
from hepattr_jax.store import ScoreStore, ids_digest, read_result
from hepattr_jax.train import model_from_config, prepare_data

K, N = 3, 23


def base_meta(**over):
    meta = {
        "kind": "self_influence",
        "run_dir": "/runs/a",
        "checkpoint_steps": [10, 20, 30],
        "checkpoint_hashes": ["h10", "h20", "h30"],
        "lrs": [1e-3, 5e-4, 1e-4],
        "data_fingerprint": "data-abc",
        "event_ids_sha": ids_digest(np.arange(N) * 7),
        "n_events": N,
        "chunk_size": 5,
        "layout": "NeighbourLayout(max_buckets=8, bucket_overhead=100000.0)",
        "dtype": "float64",
    }
    return {**meta, **over}


def chunked(seed=0):
    """Chunks (index, positions, values [K, c]) covering a permutation of 0..N-1, and the
    ``[K, N]`` array they assemble to (the reference)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(N)
    ref = rng.normal(size=(K, N))
    chunks = [(i, perm[s : s + 5], ref[:, perm[s : s + 5]]) for i, s in enumerate(range(0, N, 5))]
    return chunks, ref


def chunk_stats(store_dir):
    """``{name: (inode, mtime_ns)}`` of the chunk files: an atomic rewrite changes the inode."""
    d = store_dir / "chunks"
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in d.glob("chunk_*.npz")}


# --------------------------------------------------------------------- store mechanics
def test_round_trip_reopen_assemble_finalize(tmp_path):
    chunks, ref = chunked()
    with ScoreStore.open(tmp_path / "s", base_meta()) as store:
        for i, pos, vals in reversed(chunks):  # order of writing must not matter
            store.write_chunk(i, pos, vals)
        assert store.n_written == len(chunks) and store.n_reused == 0
    with ScoreStore.open(tmp_path / "s", base_meta()) as store:
        assert store.done() == set(range(len(chunks)))
        assert store.has(0) and not store.has(len(chunks))
        assert store.n_reused == len(chunks)
        pos, vals = store.read_chunk(2)
        np.testing.assert_array_equal(pos, chunks[2][1])
        out = store.assemble(N, n_rows=K)
        assert out.dtype == np.float64 and out.tobytes() == ref.tobytes()  # bitwise
        ids = np.arange(N) * 7
        store.finalize({"scores": out.sum(0), "scores_per_checkpoint": out, "event_ids": ids})
    res = read_result(tmp_path / "s")
    assert res.meta["checkpoint_hashes"] == ["h10", "h20", "h30"]
    assert res.arrays["scores_per_checkpoint"].tobytes() == ref.tobytes()
    np.testing.assert_array_equal(res.arrays["event_ids"], ids)
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["store_format"]


def test_one_dimensional_chunks_and_npz_result(tmp_path):
    chunks, ref = chunked(1)
    with ScoreStore.open(tmp_path, base_meta()) as store:
        for i, pos, vals in chunks:
            store.write_chunk(i, pos, vals[0])
        out = store.assemble(N)
        assert out.shape == (N,) and out.tobytes() == ref[0].tobytes()
        store.finalize({"event_ids": np.arange(N) * 7, "best": out[:4]}, npz="top")
    res = read_result(tmp_path)
    assert (tmp_path / "top.npz").exists() and res.arrays["best"].tobytes() == ref[0, :4].tobytes()


def test_finalize_refuses_ids_that_do_not_match_the_meta(tmp_path):
    with ScoreStore.open(tmp_path, base_meta()) as store:
        with pytest.raises(StoreError, match="event_ids do not match"):
            store.finalize({"event_ids": np.arange(N)})


@pytest.mark.parametrize(
    "key, value",
    [
        ("checkpoint_hashes", ["h10", "h20", "OTHER"]),
        ("data_fingerprint", "data-xyz"),
        ("event_ids_sha", ids_digest(np.arange(N) * 7 + 1)),
        ("chunk_size", 6),
        ("lrs", [1e-3, 5e-4, 2e-4]),
    ],
)
def test_reopen_with_other_inputs_is_refused_naming_the_key(tmp_path, key, value):
    with ScoreStore.open(tmp_path, base_meta()) as store:
        store.write_chunk(0, np.arange(3), np.zeros((K, 3)))
    with pytest.raises(StoreError) as e:
        ScoreStore.open(tmp_path, base_meta(**{key: value}))
    msg = str(e.value)
    assert str(tmp_path) in msg and "refusing to mix" in msg
    assert f"{key}: stored " in msg and json.dumps(value)[:20] in msg
    # Exactly the changed key is named, and nothing was touched.
    assert msg.count(": stored ") == 1
    assert json.loads((tmp_path / "meta.json").read_text())[key] == base_meta()[key]
    with ScoreStore.open(tmp_path, base_meta()) as store:  # the lock was released
        assert store.done() == {0}


def test_informational_keys_may_differ(tmp_path, caplog):
    ScoreStore.open(tmp_path, base_meta()).close()
    with caplog.at_level(logging.INFO, "hepattr_jax.store"):
        ScoreStore.open(tmp_path, base_meta(run_dir="/moved/a")).close()
    assert "run_dir" in caplog.text
    assert json.loads((tmp_path / "meta.json").read_text())["run_dir"] == "/runs/a"


def test_one_writer_at_a_time(tmp_path):
    store = ScoreStore.open(tmp_path, base_meta())
    with pytest.raises(StoreError, match="in use"):
        ScoreStore.open(tmp_path, base_meta())
    store.close()
    ScoreStore.open(tmp_path, base_meta()).close()


def test_chunks_without_meta_are_refused(tmp_path):
    (tmp_path / "chunks").mkdir()
    (tmp_path / "chunks" / "chunk_000000.npz").write_bytes(b"x")
    with pytest.raises(StoreError, match="no meta.json"):
        ScoreStore.open(tmp_path, base_meta())


def test_damaged_chunks_are_set_aside_and_recomputed(tmp_path, caplog):
    """Policy: a chunk that cannot be read back in full is logged, renamed *.corrupt and treated
    as not done; the next run recomputes it. Stale temp files of a killed writer are removed."""
    chunks, ref = chunked(2)
    with ScoreStore.open(tmp_path, base_meta()) as store:
        for i, pos, vals in chunks:
            store.write_chunk(i, pos, vals)
    c1, c2 = tmp_path / "chunks" / "chunk_000001.npz", tmp_path / "chunks" / "chunk_000002.npz"
    data = c1.read_bytes()
    c1.write_bytes(data[: len(data) // 2])  # truncated
    raw = bytearray(c2.read_bytes())
    off = raw.find(ref[1, chunks[2][1][2]].tobytes())  # flip one bit of one stored value
    assert off > 0
    raw[off + 3] ^= 0x10
    c2.write_bytes(bytes(raw))
    stale = tmp_path / "chunks" / ".chunk_000003.npz.abc.tmp"
    stale.write_bytes(b"partial")
    with caplog.at_level(logging.WARNING, "hepattr_jax.store"):
        store = ScoreStore.open(tmp_path, base_meta())
    assert store.done() == set(range(len(chunks))) - {1, 2}
    assert str(c1) in caplog.text and str(c2) in caplog.text and "recomputed" in caplog.text
    assert not c1.exists() and (tmp_path / "chunks" / "chunk_000001.npz.corrupt").exists()
    assert not stale.exists()
    with pytest.raises(StoreError) as e:
        store.assemble(N, n_rows=K)
    missing = sorted(np.concatenate([chunks[1][1], chunks[2][1]]).tolist())
    assert f"{len(missing)} of {N} positions" in str(e.value)
    assert str(missing[:20]) in str(e.value)
    for i in (1, 2):
        store.write_chunk(*chunks[i])
    assert store.assemble(N, n_rows=K).tobytes() == ref.tobytes()
    store.close()


def test_chunk_of_another_store_is_refused(tmp_path):
    chunks, _ = chunked()
    with ScoreStore.open(tmp_path / "a", base_meta()) as a:
        a.write_chunk(*chunks[0])
    with ScoreStore.open(tmp_path / "b", base_meta(chunk_size=7)) as b:
        b.write_chunk(*chunks[1])
    os.replace(tmp_path / "b/chunks/chunk_000001.npz", tmp_path / "a/chunks/chunk_000001.npz")
    with pytest.raises(StoreError, match="chunk_000001.npz: was written by a store with"):
        ScoreStore.open(tmp_path / "a", base_meta())


def test_assemble_refuses_overlapping_chunks(tmp_path):
    with ScoreStore.open(tmp_path, base_meta()) as store:
        store.write_chunk(0, np.arange(0, 15), np.zeros((K, 15)))
        store.write_chunk(1, np.arange(10, N), np.zeros((K, N - 10)))
        with pytest.raises(StoreError, match=r"more than one chunk: \[10, 11, 12, 13, 14\]"):
            store.assemble(N, n_rows=K)


def test_read_result_detects_a_changed_array(tmp_path):
    with ScoreStore.open(tmp_path, base_meta()) as store:
        store.finalize({"scores": np.ones(N), "event_ids": np.arange(N) * 7})
    np.save(tmp_path / "scores.npy", np.full(N, 2.0))
    with pytest.raises(StoreError, match="scores.npy: scores changed since it was written"):
        read_result(tmp_path)
    (tmp_path / "result.json").unlink()
    with pytest.raises(StoreError, match="no finished result"):
        read_result(tmp_path)


# --------------------------------------------------------------------- scoring a Run
def toy_events():
    n_nodes = np.random.default_rng(5).integers(3, 5, size=48)  # buckets of 3 and 4 nodes
    return random_events(48, n_nodes=n_nodes, seed=4)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A two-checkpoint Run without training: two random initialisations of a tiny EdgeConv."""
    events = toy_events()
    config = TrainConfig(
        dataset="random",
        model_kwargs={"hidden": 4, "n_blocks": 1, "readout_hidden": 4},
        split=(0.8, 0.1, 0.1),
        batch_size=8,
    )
    data = prepare_data(config, events)
    model = model_from_config(config)
    example = data.train.training_batch(np.arange(4), data.train.batch_budget(4))
    # Parameters drawn in NumPy into the model's tree (eval_shape: no compilation), stacked in
    # NumPy: the only compilations in this file are the self-influence kernels.
    shapes = jax.eval_shape(model.init, jax.random.key(0), example.graphs)

    def draw(seed):
        rng = np.random.default_rng(seed)
        return jax.tree_util.tree_map(
            lambda s: (0.5 * rng.normal(size=s.shape)).astype(s.dtype), shapes
        )

    params = [draw(0), draw(1)]
    ckpts = tracin.Checkpoints(
        jax.tree_util.tree_map(lambda *x: np.stack(x), *params),
        np.array([1e-3, 4e-4]),
        steps=(5, 10),
        hashes=tuple(tree_hash(p) for p in params),
    )
    return Run(tmp_path_factory.mktemp("toy_run"), config, model, data, ckpts)


def test_run_meta_describes_the_inputs(toy_run):
    gs = toy_run.data.train
    meta = run_meta(
        toy_run,
        "self_influence",
        gs,
        split="train",
        chunk_size=4,
        layout=layout_for(toy_run.model, gs),
    )
    assert meta["checkpoint_hashes"] == list(toy_run.checkpoints.hashes)
    assert meta["checkpoint_steps"] == [5, 10] and meta["lrs"] == [1e-3, 4e-4]
    assert meta["event_ids_sha"] == ids_digest(gs.events.ids) and meta["n_events"] == len(gs)
    assert meta["layout"] == "NeighbourLayout(max_buckets=8, bucket_overhead=100000.0)"
    assert meta["environment"] == {
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "jaxlib": __import__("jaxlib").__version__,
    }


def test_store_refuses_other_checkpoints_or_data(toy_run, tmp_path):
    """scored_self_influence checks the store before computing anything."""
    gs = toy_run.data.train
    meta = run_meta(
        toy_run,
        "self_influence",
        gs,
        split="train",
        chunk_size=4,
        layout=layout_for(toy_run.model, gs),
    )
    ScoreStore.open(tmp_path, meta).close()
    ck = toy_run.checkpoints
    bumped = jax.tree_util.tree_map(lambda x: x, ck.at(1))
    bumped["params"]["readout_1"]["bias"] = bumped["params"]["readout_1"]["bias"] + 1e-3
    other_ckpts = tracin.Checkpoints.from_list(
        [ck.at(0), bumped], ck.lrs, ck.steps, (ck.hashes[0], tree_hash(bumped))
    )
    with pytest.raises(StoreError, match=r"Differing: checkpoint_hashes: stored \[") as e:
        scored_self_influence(
            dataclasses.replace(toy_run, checkpoints=other_ckpts), tmp_path, chunk_size=4
        )
    assert "data_fingerprint" not in str(e.value)
    raw = toy_events()
    for changed, events in [
        ("features", dataclasses.replace(raw, nodes=raw.nodes + 1.0)),  # same ids
        ("ids", dataclasses.replace(raw, ids=raw.ids + 1000)),  # same features
    ]:
        other = dataclasses.replace(toy_run, data=prepare_data(toy_run.config, events))
        with pytest.raises(StoreError) as e:
            scored_self_influence(other, tmp_path, chunk_size=4)
        assert "data_fingerprint: stored" in str(e.value)
        assert ("event_ids_sha: stored" in str(e.value)) == (changed == "ids")
    with pytest.raises(StoreError, match="chunk_size: stored 4 vs now 5"):
        scored_self_influence(toy_run, tmp_path, chunk_size=5)


def test_interrupted_self_influence_resumes_to_the_uninterrupted_result(
    toy_run, tmp_path, monkeypatch
):
    """In-process interruption: the store's write_chunk raises after 3 chunks (as a crash
    would); the rerun writes only the remaining chunks, leaves the first 3 files untouched, and
    ends bit-identical to an uninterrupted direct ``tracin.self_influence`` call. (The CLI tests
    kill a real process and compare with an uninterrupted run into another store.)"""
    gs, chunk = toy_run.data.train, 4
    real_write = ScoreStore.write_chunk
    writes = []

    def counting(self, index, positions, values):
        if crash_after is not None and len(writes) == crash_after:
            raise RuntimeError("simulated crash")
        writes.append(index)
        real_write(self, index, positions, values)

    monkeypatch.setattr(ScoreStore, "write_chunk", counting)
    crash_after = 3
    with pytest.raises(RuntimeError, match="simulated crash"):
        scored_self_influence(toy_run, tmp_path, chunk_size=chunk, progress=False)
    first = chunk_stats(tmp_path)
    assert len(first) == 3 and not (tmp_path / "result.json").exists()

    writes.clear()
    crash_after = None
    ids, total, per_k = scored_self_influence(toy_run, tmp_path, chunk_size=chunk, progress=False)
    n_chunks = len(chunk_stats(tmp_path))
    n_per_bucket = np.unique(gs.events.n_node, return_counts=True)[1]
    assert n_chunks == sum(-(-n // chunk) for n in n_per_bucket) and len(n_per_bucket) == 2
    assert len(writes) == n_chunks - 3 and not set(writes) & {0, 1, 2}
    after = chunk_stats(tmp_path)
    assert all(after[name] == st for name, st in first.items())  # not rewritten

    direct = tracin.self_influence(
        layout_for(toy_run.model, gs),
        toy_run.checkpoints,
        gs,
        chunk_size=chunk,
        per_checkpoint=True,
        progress=False,
    )
    # Bitwise: same kernel, same chunks, float64 sums in the same order.
    assert per_k.tobytes() == direct.tobytes()
    assert total.tobytes() == direct.sum(0).tobytes()
    np.testing.assert_array_equal(ids, gs.events.ids)
    stored = read_result(tmp_path).arrays
    assert stored["scores_per_checkpoint"].tobytes() == direct.tobytes()
    assert stored["scores"].tobytes() == total.tobytes()
    np.testing.assert_array_equal(stored["event_ids"], gs.events.ids)


def test_atomic_write_fsyncs_the_file_then_its_directory(tmp_path, monkeypatch):
    """A finished chunk must survive a power loss: the data is fsynced before the rename and the
    directory (holding the new name) after it."""
    import stat

    from hepattr_jax import io_utils

    synced = []
    real_fsync = os.fsync

    def recording(fd):
        st = os.fstat(fd)
        synced.append(("dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(io_utils.os, "fsync", recording)
    target = tmp_path / "sub" / "x.bin"
    io_utils.atomic_write_bytes(target, b"payload")
    assert target.read_bytes() == b"payload"
    assert [kind for kind, _ in synced] == ["file", "dir"]
    assert synced[0][1] == target.stat().st_ino and synced[1][1] == target.parent.stat().st_ino


# --------------------------------------------------------------------- TRAK ensembles
def test_trak_ensemble_refuses_members_of_other_data_and_records_each_fingerprint(
    toy_run, tmp_path
):
    """Same event ids, other labels (a noisy-label run): refused, naming both run directories,
    before any feature is computed. Members of the same data: each member's fingerprint is in
    the result's meta."""
    from hepattr_jax.errors import ConfigError
    from hepattr_jax.projection import Projector
    from hepattr_jax.scoring import scored_trak

    raw = toy_events()
    flipped = dataclasses.replace(raw, labels=1 - raw.labels)
    noisy = dataclasses.replace(
        toy_run,
        run_dir=tmp_path / "noisy_run",
        data=prepare_data(toy_run.config, flipped),
    )
    np.testing.assert_array_equal(noisy.data.train.events.ids, toy_run.data.train.events.ids)
    proj = Projector(4, seed=0)
    with pytest.raises(ConfigError) as e:
        scored_trak([toy_run, noisy], tmp_path / "trak_bad", proj, chunk_size=4, progress=False)
    msg = str(e.value)
    assert str(toy_run.run_dir) in msg and str(noisy.run_dir) in msg and "fingerprint" in msg
    assert not (tmp_path / "trak_bad" / "features").exists()

    twin = dataclasses.replace(toy_run, run_dir=tmp_path / "twin_run")
    scored_trak([toy_run, twin], tmp_path / "trak", proj, chunk_size=4, progress=False)
    members = read_result(tmp_path / "trak").meta["members"]
    assert [m["data_fingerprint"] for m in members] == [toy_run.data.fingerprint] * 2


# --------------------------------------------------------------------- environment
ENV = {"backend": "cpu", "device_kind": "cpu", "jax": "0.10.2", "jaxlib": "0.10.2"}


def test_another_environment_is_refused_unless_allowed_and_then_recorded(tmp_path, caplog):
    chunks, ref = chunked(3)
    with ScoreStore.open(tmp_path, base_meta(environment=ENV)) as store:
        for c in chunks[:2]:
            store.write_chunk(*c)
        sha = store.meta_sha
    gpu = {**ENV, "backend": "gpu", "device_kind": "NVIDIA H200", "jaxlib": "0.10.3"}
    with pytest.raises(StoreError) as e:
        ScoreStore.open(tmp_path, base_meta(environment=gpu))
    msg = str(e.value)
    assert str(tmp_path) in msg and "another environment" in msg
    assert "--allow-environment-change" in msg and "allow_environment_change=True" in msg
    for key in ("backend", "device_kind", "jaxlib"):
        assert f"environment.{key}: stored " in msg
    assert "environment.jax:" not in msg and msg.count(": stored ") == 3
    # Other inputs are refused even when the environment change is allowed.
    with pytest.raises(StoreError, match="chunk_size: stored 5 vs now 6"):
        ScoreStore.open(tmp_path, base_meta(environment=gpu, chunk_size=6), **ALLOW)

    with caplog.at_level(logging.WARNING, "hepattr_jax.store"):
        store = ScoreStore.open(tmp_path, base_meta(environment=gpu), **ALLOW)
    assert "another environment" in caplog.text and "environment.backend" in caplog.text
    # The chunks of the first environment are kept (meta_sha does not cover the record).
    assert store.done() == {0, 1} and store.meta_sha == sha
    for c in chunks[2:]:
        store.write_chunk(*c)
    out = store.assemble(N, n_rows=K)
    assert out.tobytes() == ref.tobytes()
    store.finalize({"scores_per_checkpoint": out, "event_ids": np.arange(N) * 7})
    store.close()
    meta = read_result(tmp_path).meta
    assert meta["environment"] == ENV and meta["environment_changes"] == [gpu]
    # Reopening in the recorded environment again is still a change from the first one.
    ScoreStore.open(tmp_path, base_meta(environment=gpu), **ALLOW).close()
    assert json.loads((tmp_path / "meta.json").read_text())["environment_changes"] == [gpu]
    ScoreStore.open(tmp_path, base_meta(environment=ENV)).close()  # the original: no flag needed


ALLOW = {"allow_environment_change": True}


# --------------------------------------------------------------------- matrix and top-k resume
@pytest.mark.parametrize("kind", ["matrix", "topk"])
def test_interrupted_matrix_and_top_k_resume_to_the_uninterrupted_result(
    toy_run, tmp_path, monkeypatch, kind
):
    """As for self-influence: write_chunk raises after 4 (test block, train chunk) chunks; the
    rerun computes only the rest, leaves the first 4 files untouched, and its result files are
    byte-identical to an uninterrupted run into another store and equal, bitwise, to the direct
    ``tracin.influence_matrix`` / ``tracin.top_k`` call. Three test blocks (test_block=2) and two
    node-count buckets of train chunks."""
    from hepattr_jax.scoring import scored_influence_matrix, scored_top_k

    train, test, chunk, block, k = toy_run.data.train, toy_run.data.test, 4, 2, 3
    assert len(test) == 5  # blocks of 2, 2, 1

    def score(out):
        kw = dict(chunk_size=chunk, test_block=block, progress=False)
        if kind == "matrix":
            return scored_influence_matrix(toy_run, out, **kw)
        return scored_top_k(toy_run, out, k, **kw)

    real_write = ScoreStore.write_chunk
    writes = []
    crash_after = 4

    def counting(self, index, positions, values):
        if crash_after is not None and len(writes) == crash_after:
            raise RuntimeError("simulated crash")
        writes.append(index)
        real_write(self, index, positions, values)

    monkeypatch.setattr(ScoreStore, "write_chunk", counting)
    with pytest.raises(RuntimeError, match="simulated crash"):
        score(tmp_path / "killed")
    first = chunk_stats(tmp_path / "killed")
    assert len(first) == 4 and not (tmp_path / "killed" / "result.json").exists()

    writes.clear()
    crash_after = None
    resumed = score(tmp_path / "killed")
    n_chunks = len(chunk_stats(tmp_path / "killed"))
    n_per_bucket = np.unique(train.events.n_node, return_counts=True)[1]
    assert len(n_per_bucket) == 2
    assert n_chunks == 3 * sum(-(-n // chunk) for n in n_per_bucket)
    assert len(writes) == n_chunks - 4
    after = chunk_stats(tmp_path / "killed")
    assert all(after[name] == st for name, st in first.items())  # not rewritten

    writes.clear()
    score(tmp_path / "whole")
    assert len(writes) == n_chunks
    files = sorted(p.name for p in (tmp_path / "whole").iterdir() if p.suffix in (".npy", ".npz"))
    assert files == (
        ["topk.npz"]
        if kind == "topk"
        else sorted(["influence.npy", "event_ids.npy", "test_event_ids.npy"])
    )
    for name in files:
        a, b = (tmp_path / "killed" / name).read_bytes(), (tmp_path / "whole" / name).read_bytes()
        assert a == b, name

    layout = layout_for(toy_run.model, train)
    kw = dict(chunk_size=chunk, test_block=block, progress=False)
    if kind == "matrix":
        direct = tracin.influence_matrix(layout, toy_run.checkpoints, train, test, **kw)
        assert resumed[2].tobytes() == direct.tobytes()
        assert read_result(tmp_path / "killed").arrays["influence"].tobytes() == direct.tobytes()
    else:
        direct = tracin.top_k(layout, toy_run.checkpoints, train, test, k, **kw)
        ids = train.events.ids
        assert resumed["proponent_ids"].tobytes() == ids[direct.proponents].tobytes()
        assert resumed["opponent_ids"].tobytes() == ids[direct.opponents].tobytes()
        assert resumed["proponent_scores"].tobytes() == direct.proponent_scores.tobytes()
        assert resumed["opponent_scores"].tobytes() == direct.opponent_scores.tobytes()
        # ... and the plain sort of the full matrix.
        m = tracin.influence_matrix(layout, toy_run.checkpoints, train, test, **kw)
        want = tracin.top_k_from_matrix(m, k)
        np.testing.assert_array_equal(direct.proponents, want.proponents)
        np.testing.assert_array_equal(direct.opponents, want.opponents)
        assert direct.proponent_scores.tobytes() == want.proponent_scores.tobytes()


# --------------------------------------------------------------------- layer statistics
def test_interrupted_layer_statistics_resume_to_the_uninterrupted_result(
    toy_run, tmp_path, monkeypatch
):
    """Layer statistics are their own store entry of chunk totals: write_chunk raises after 3
    chunks; the rerun writes only the rest, leaves the first 3 untouched, and its
    layer_statistics.npz is byte-identical to an uninterrupted run's; the numbers equal the
    direct ``kfac.layer_statistics`` call bitwise, and a finished store is read back."""
    from hepattr_jax import kfac
    from hepattr_jax.scoring import scored_layer_statistics

    gs, chunk = toy_run.data.train, 4
    real_write = ScoreStore.write_chunk
    writes = []
    crash_after = 3

    def counting(self, index, positions, values, *, total=False):
        if crash_after is not None and len(writes) == crash_after:
            raise RuntimeError("simulated crash")
        writes.append(index)
        real_write(self, index, positions, values, total=total)

    monkeypatch.setattr(ScoreStore, "write_chunk", counting)
    with pytest.raises(RuntimeError, match="simulated crash"):
        scored_layer_statistics(toy_run, tmp_path / "killed", chunk_size=chunk, progress=False)
    first = chunk_stats(tmp_path / "killed")
    assert len(first) == 3 and not (tmp_path / "killed" / "result.json").exists()

    writes.clear()
    crash_after = None
    resumed = scored_layer_statistics(
        toy_run, tmp_path / "killed", chunk_size=chunk, progress=False
    )
    n_chunks = len(chunk_stats(tmp_path / "killed"))
    assert len(writes) == n_chunks - 3 and not set(writes) & {0, 1, 2}
    after = chunk_stats(tmp_path / "killed")
    assert all(after[name] == st for name, st in first.items())  # not rewritten
    writes.clear()
    scored_layer_statistics(toy_run, tmp_path / "whole", chunk_size=chunk, progress=False)
    assert len(writes) == n_chunks
    name = "layer_statistics.npz"
    assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()

    direct = kfac.layer_statistics(
        layout_for(toy_run.model, gs), toy_run.checkpoints, gs, chunk_size=chunk, progress=False
    )
    assert resumed.n_events == len(gs) and resumed.kernels == direct.kernels
    for field in kfac.MOMENTS:
        for a, b in zip(getattr(resumed, field), getattr(direct, field), strict=True):
            assert a.shape[0] == len(toy_run.checkpoints)
            assert a.tobytes() == b.tobytes(), field
    back = scored_layer_statistics(toy_run, tmp_path / "whole", chunk_size=chunk, progress=False)
    assert back.a_expand[0].tobytes() == direct.a_expand[0].tobytes()
    arrays = read_result(tmp_path / "whole").arrays
    np.testing.assert_array_equal(arrays["event_ids"], gs.events.ids)
    # A store of per-event scores is not read as totals, nor the other way round.
    with pytest.raises(StoreError, match="holds a chunk total, expected per-event values"):
        ScoreStore.reader(tmp_path / "whole").read_chunk(0)
