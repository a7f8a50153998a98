"""Several processes, one result (:mod:`hepattr_jax.shards`, ``--processes``, ``merge``).

In process: shares scored one after the other (``shard=``) merge into the bytes one process
writes, for self-influence, top-k and TRAK; ``hepattr influence merge`` refuses a missing share, a
missing chunk and a share of another result, naming them, and merging twice gives the same bytes.

In real processes (slow): two ``hepattr influence`` processes on localhost, each with two forced
CPU devices, joined by ``jax.distributed``; the merged self-influence (one process killed part way,
both restarted) and top-k equal a single process's with the same two devices, bit for bit.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from hepattr_jax import cli
from hepattr_jax.projection import Projector
from hepattr_jax.runs import load_run
from hepattr_jax.scoring import scored_self_influence, scored_top_k, scored_trak
from hepattr_jax.shards import Shard, ShareComplete
from hepattr_jax.store import read_result
from hepattr_jax.train import train
from tests.helpers import TINY

CHUNK = 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("multiprocess") / "run"
    train(TINY, d, progress=False)
    return load_run(d)


def _files(d, names):
    return {n: (d / n).read_bytes() for n in names}


SELF_FILES = ("scores.npy", "scores_per_checkpoint.npy", "event_ids.npy", "result.json")


def _shared(fn, n, out, **kw):
    """Runs ``fn`` as processes ``0 .. n-1`` in turn; all but the last raise ShareComplete."""
    for i in range(n):
        if i < n - 1:
            with pytest.raises(ShareComplete, match=f"process {i} of {n} is complete"):
                fn(out, shard=Shard(i, n), **kw)
        else:
            return fn(out, shard=Shard(i, n), **kw)


@pytest.mark.slow  # make test runs it; make test-fast keeps the merge checks and TRAK's shares
def test_shares_merge_to_the_bytes_of_one_process(run, tmp_path):
    one = tmp_path / "one"
    ref = scored_self_influence(run, one, chunk_size=CHUNK, progress=False)
    got = _shared(
        lambda out, **kw: scored_self_influence(run, out, progress=False, **kw),
        3,
        tmp_path / "three",
        chunk_size=CHUNK,
    )
    np.testing.assert_array_equal(got.per_checkpoint, ref.per_checkpoint)
    assert _files(tmp_path / "three", SELF_FILES) == _files(one, SELF_FILES)
    assert (tmp_path / "three" / "meta.json").read_bytes() == (one / "meta.json").read_bytes()
    # Each share holds only its own chunks: i, i + 3, ...
    for i in range(3):
        names = sorted(p.name for p in (tmp_path / "three" / "shards").glob(f"*{i}_of_3/chunks/*"))
        idx = [int(n[6:12]) for n in names]
        assert idx and all(j % 3 == i for j in idx)

    top_one = scored_top_k(run, tmp_path / "top_one", 3, chunk_size=CHUNK, progress=False)
    top_two = _shared(
        lambda out, **kw: scored_top_k(run, out, 3, progress=False, **kw),
        2,
        tmp_path / "top_two",
        chunk_size=CHUNK,
        test_block=16,  # several test blocks, so chunks of both kinds of index
    )
    top_ref = scored_top_k(
        run, tmp_path / "top_ref", 3, chunk_size=CHUNK, test_block=16, progress=False
    )
    for key in top_ref:
        np.testing.assert_array_equal(top_two[key], top_ref[key])
        np.testing.assert_array_equal(top_two[key], top_one[key])
    assert (tmp_path / "top_two" / "topk.npz").read_bytes() == (
        tmp_path / "top_ref" / "topk.npz"
    ).read_bytes()


@pytest.mark.parametrize("structure", ["dense", pytest.param("kronecker", marks=pytest.mark.slow)])
def test_trak_shares_merge_to_one_process_result(run, tmp_path, structure):
    """Also: a per-layer projection is calibrated once per member on its training events
    (deterministically, so every share agrees) and featurises its test events with the same
    weights, recorded in both feature stores' meta; the scores are TRAK's on those features."""
    from hepattr_jax import trak
    from hepattr_jax.per_example import layout_for
    from hepattr_jax.projection import KroneckerProjector
    from hepattr_jax.tracin import calibrate_projector

    proj = Projector(8, seed=0) if structure == "dense" else KroneckerProjector(16, seed=0)
    ref = scored_trak([run], tmp_path / "one", proj, chunk_size=CHUNK, progress=False)
    got = _shared(
        lambda out, **kw: scored_trak([run], out, proj, progress=False, **kw),
        2,
        tmp_path / "two",
        chunk_size=CHUNK,
    )
    for key in ref:
        assert got[key].tobytes() == ref[key].tobytes(), key
    if structure == "kronecker":
        metas = [
            read_result(tmp_path / "one" / "features" / f"run0_{s}").meta for s in ("train", "test")
        ]
        weights = metas[0]["projection"]["weights"]
        assert weights and metas[1]["projection"]["weights"] == weights
        layout = layout_for(run.model, run.data.train)
        ck = run.checkpoints.select([len(run.checkpoints) - 1])
        cal = calibrate_projector(layout, ck, run.data.train, proj, output="margin")
        assert list(cal.weights) == weights
        ftr, mtr = trak.featurize(layout, ck, run.data.train, cal, chunk_size=CHUNK, progress=False)
        fte, _ = trak.featurize(layout, ck, run.data.test, cal, chunk_size=CHUNK, progress=False)
        want = trak.trak_scores(ftr, mtr, fte)
        np.testing.assert_allclose(ref["scores"], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _merge(capsys, *argv):
    rc = cli.main(["influence", "merge", *map(str, argv), "--quiet"])
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


def _share(run, out, i, n, **kw):
    try:
        scored_self_influence(run, out, chunk_size=CHUNK, progress=False, shard=Shard(i, n), **kw)
    except ShareComplete:
        pass


def test_merge_names_what_is_missing_or_foreign_and_is_idempotent(run, tmp_path, capsys):
    out = tmp_path / "si"
    _share(run, out, 0, 3)
    _share(run, out, 2, 3)
    rc, text = _merge(capsys, out)
    assert rc == 2 and "process(es) [1] of 3 is missing" in text and "process_1_of_3" in text

    # Process 1's share with a chunk lost after it finished: named, with what to do.
    _share(run, out, 1, 3)  # the last share: merges on its own
    assert (out / "result.json").is_file()
    want = _files(out, SELF_FILES)
    for f in (*SELF_FILES, "meta.json"):
        (out / f).unlink()
    shutil.rmtree(out / "chunks")
    lost = sorted((out / "shards" / "process_1_of_3" / "chunks").glob("chunk_*.npz"))[0]
    lost.unlink()
    rc, text = _merge(capsys, out)
    assert rc == 2 and f"chunk {int(lost.name[6:12])}" in text and "process_1_of_3" in text
    assert "rerun process 1" in text
    _share(run, out, 1, 3)  # the lost chunk is recomputed (and the shares merged)

    # A share of another result (the validation split) in place of process 2's.
    other = tmp_path / "val"
    _share(run, other, 2, 3, split="val")
    shutil.rmtree(out / "shards" / "process_2_of_3")
    shutil.copytree(other / "shards" / "process_2_of_3", out / "shards" / "process_2_of_3")
    rc, text = _merge(capsys, out)
    assert rc == 2 and "process_2_of_3: a shard of another result" in text and "split" in text
    # ... and a share of another run (other initial parameters: other checkpoints).
    train(dataclasses.replace(TINY, seed=7), tmp_path / "run7", progress=False)
    _share(load_run(tmp_path / "run7"), tmp_path / "si7", 2, 3)
    two = out / "shards" / "process_2_of_3"
    shutil.rmtree(two)
    shutil.copytree(tmp_path / "si7" / "shards" / "process_2_of_3", two)
    rc, text = _merge(capsys, out)
    assert rc == 2 and "process_2_of_3: a shard of another result" in text
    assert "checkpoint_hashes" in text
    shutil.rmtree(out / "shards" / "process_2_of_3")
    for f in SELF_FILES:  # (a finished result is read back, so no share would be scored)
        (out / f).unlink()
    _share(run, out, 2, 3)  # the last one again: merges

    assert _files(out, SELF_FILES) == want
    rc, text = _merge(capsys, out)  # merging a merged store: the same bytes
    assert rc == 0, text
    assert _files(out, SELF_FILES) == want
    for f in SELF_FILES:
        (out / f).unlink()
    rc, text = _merge(capsys, out)  # and from the shards again
    assert rc == 0, text
    assert _files(out, SELF_FILES) == want


def test_a_single_process_takes_the_finished_shares_and_computes_the_rest(run, tmp_path, caplog):
    out = tmp_path / "si"
    _share(run, out, 0, 2)  # process 1 never ran
    caplog.set_level("INFO")
    got = scored_self_influence(run, out, chunk_size=CHUNK, progress=False)
    ref = scored_self_influence(run, tmp_path / "one", chunk_size=CHUNK, progress=False)
    assert got.per_checkpoint.tobytes() == ref.per_checkpoint.tobytes()
    assert "from finished shards" in caplog.text


def test_bad_process_flags_are_named(run, capsys):
    for argv, what in (
        (["--processes", "2"], "--processes and --process-id go together"),
        (["--processes", "2", "--process-id", "2"], "outside [0, --processes 2)"),
        (["--coordinator", "localhost:1"], "--coordinator needs --processes"),
        (["--distributed"], "jax.distributed could not start from the cluster's variables"),
    ):
        rc = cli.main(["influence", "self", str(run.run_dir), "--quiet", *argv])
        assert rc == 2 and what in capsys.readouterr().err


# --------------------------------------------------------------------- real processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(cache):
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _start(argv, cache, log):
    return subprocess.Popen(
        [sys.executable, "-m", "hepattr_jax", "influence", *map(str, argv)],
        env=_env(cache),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def _launch(argv, cache, logs, tag=""):
    """Processes 0 and 1 of 2, joined by jax.distributed on a free localhost port."""
    port = _free_port()
    return [
        _start(
            [*argv, "--processes", 2, "--process-id", i, "--coordinator", f"localhost:{port}"],
            cache,
            logs / f"{tag}process_{i}.log",
        )
        for i in range(2)
    ]


def _wait(procs, timeout=300):
    deadline = time.monotonic() + timeout
    rcs = []
    for p in procs:
        try:
            rcs.append(p.wait(timeout=max(1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            p.kill()
            rcs.append(p.wait())
    return rcs


def _kill_when(procs, share, timeout=300):
    """SIGKILLs every process once ``share`` has a chunk on disk (a job torn down part way)."""
    deadline = time.monotonic() + timeout
    while procs[1].poll() is None and time.monotonic() < deadline:
        if any(share.glob("chunk_*.npz")):
            for p in procs:
                p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    return _wait(procs)


@pytest.mark.slow  # real processes: make test runs it, make test-fast not
def test_two_processes_with_jax_distributed_equal_one_bit_for_bit(run, tmp_path):
    cache = tmp_path / "jax_cache"
    logs = tmp_path / "logs"
    logs.mkdir()
    rd = run.run_dir
    t0 = time.monotonic()
    # One process, the same two devices per chunk: the reference (both commands in one process).
    ref_argv = [
        ["influence", "self", rd, "--out", tmp_path / "ref", "--chunk-size", CHUNK, "--quiet"],
        ["influence", "topk", rd, "-k", 3, "--out", tmp_path / "ref_top"]
        + ["--chunk-size", CHUNK, "--quiet"],
    ]
    script = "import sys; from hepattr_jax import cli; sys.exit(max(cli.main(a) for a in %r))"
    ref = subprocess.run(
        [sys.executable, "-c", script % [[str(x) for x in a] for a in ref_argv]],
        env=_env(cache),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    t_ref = time.monotonic() - t0

    # Self-influence: the job killed once process 1 has a chunk, then restarted: both resume.
    out = tmp_path / "mp"
    argv = ["self", rd, "--out", out, "--chunk-size", CHUNK, "--quiet"]
    share1 = out / "shards" / "process_1_of_2" / "chunks"
    rcs = _kill_when(_launch(argv, cache, logs), share1)
    assert rcs[1] == -signal.SIGKILL, (logs / "process_1.log").read_text()[-3000:]
    kept = sorted(p.name for p in share1.glob("chunk_*.npz"))
    assert kept and not (out / "result.json").exists()
    # The restart, and beside it an uninterrupted top-k pair (four processes at once).
    top = tmp_path / "mp_top"
    top_argv = ["topk", rd, "-k", 3, "--out", top, "--chunk-size", CHUNK, "--quiet"]
    procs = _launch(argv, cache, logs) + _launch(top_argv, cache, logs, tag="topk_")
    rcs = _wait(procs)
    text = [(logs / f"process_{i}.log").read_text() for i in range(2)]
    text_top = [(logs / f"topk_process_{i}.log").read_text()[-2000:] for i in range(2)]
    assert rcs == [0, 0, 0, 0], (text, text_top)
    assert any("complete; waiting for" in t for t in text) or all(
        "self-influence of" in t for t in text
    )
    assert f"{len(kept)} chunk(s) of" in text[1] and "reused from disk" in text[1]
    for f in ("scores.npy", "scores_per_checkpoint.npy", "event_ids.npy"):
        assert (out / f).read_bytes() == (tmp_path / "ref" / f).read_bytes(), f
    assert (top / "topk.npz").read_bytes() == (tmp_path / "ref_top" / "topk.npz").read_bytes()
    assert read_result(top).arrays["proponent_ids"].shape[1] == 3
    print(f"multi-process test: {time.monotonic() - t0:.1f} s (reference {t_ref:.1f} s)")
