"""``hepattr influence self|matrix|topk`` end to end, in real processes, on a small trained run.

The run: the registry's ``random`` source (so the CLI rebuilds it by name), 400 events of 4 or 5
nodes (285 train in two node-count buckets, 50 test), a small EdgeConv, 2 epochs -> 2
checkpoints; trained once per module with ``hepattr train``. Two buckets keep the number of
kernel compilations (the cost of this file) low while leaving the kill test its window.

References: ``tracin.self_influence``, ``influence_matrix`` and ``top_k`` called directly on
``load_run(RUN_DIR)`` in a separate process, an uninterrupted ``scored_self_influence`` into
another store, and ``tracin.top_k_from_matrix`` (a plain sort).

Every process here compiles its own kernels; they share one JAX persistent compilation cache so
each kernel compiles once in the module (the killed process excepted: see KillAfterFirstChunk),
which keeps this file within its time budget. A cached executable is the one the same HLO would
compile to, so it changes no number.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types

import numpy as np
import pytest

from hepattr_jax import tracin
from hepattr_jax.store import read_result

# Every test here runs the command line in subprocesses: make test runs them, make test-fast not.
pytestmark = pytest.mark.slow

CHUNK_SI, CHUNK_TT, K_TOP = 8, 32, 5

RUN_TOML = """
dataset = "random"
edges = "fully_connected"
epochs = 2
batch_size = 32
lr = 1e-3
seed = 0
[dataset_kwargs]
n_events = 400
n_node_range = [4, 5]
seed = 0
[model_kwargs]
hidden = 16
n_blocks = 1
readout_hidden = 16
"""

REFERENCE_SCRIPT = """
import sys
import numpy as np
from hepattr_jax import tracin
from hepattr_jax.per_example import layout_for
from hepattr_jax.runs import load_run
from hepattr_jax.scoring import scored_self_influence

run_dir, out, uninterrupted, chunk_si, chunk_tt, k = sys.argv[1:]
chunk_si, chunk_tt, k = int(chunk_si), int(chunk_tt), int(k)
run = load_run(run_dir)
train, test = run.data.train, run.data.test
layout = layout_for(run.model, train)
seen = []
si_k = tracin.self_influence(
    layout, run.checkpoints, train, chunk_size=chunk_si, per_checkpoint=True, progress=False,
    on_chunk=lambda i, pos, vals: seen.append(i),
)
scored_self_influence(run, uninterrupted, chunk_size=chunk_si, progress=False)
m = tracin.influence_matrix(layout, run.checkpoints, train, test, chunk_size=chunk_tt,
                            progress=False)
tk = tracin.top_k(layout, run.checkpoints, train, test, k, chunk_size=chunk_tt, progress=False)
np.savez(
    out, si_per_checkpoint=si_k, n_chunks=len(seen), matrix=m, pro=tk.proponents,
    pro_scores=tk.proponent_scores, opp=tk.opponents, opp_scores=tk.opponent_scores,
    train_ids=train.events.ids, test_ids=test.events.ids, train_labels=train.events.labels,
)
"""


def cli_env(cache):
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )
    return env


def run_py(args, cache, timeout=300, check=True):
    r = subprocess.run(
        [sys.executable, *map(str, args)],
        env=cli_env(cache),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0 or not check, (
        f"{args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr[-4000:]}"
    )
    return r


def hepattr(*args, cache):
    return run_py(["-m", "hepattr_jax", *args], cache)


def chunk_stats(store_dir):
    """``{name: (inode, mtime_ns)}`` of the chunk files: an atomic rewrite changes the inode."""
    d = store_dir / "chunks"
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in d.glob("chunk_*.npz")}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("influence_cli")
    cache = root / "jax_cache"
    (root / "run.toml").write_text(RUN_TOML)
    hepattr("train", root / "run.toml", "--run-dir", root / "run", "--quiet", cache=cache)
    # The cache as training left it: loading the run is cached, no influence kernel is.
    shutil.copytree(cache, root / "jax_cache_cold_kernels")
    return types.SimpleNamespace(
        root=root, run_dir=root / "run", cache=cache, cold_cache=root / "jax_cache_cold_kernels"
    )


def self_cmd(ws, out):
    return ["influence", "self", ws.run_dir, "--chunk-size", CHUNK_SI, "--out", out, "--quiet"]


class KillAfterFirstChunk:
    """Runs ``hepattr influence self`` and SIGKILLs it as soon as a chunk file is on disk.

    It gets a cache without the influence kernels, so it compiles one per node-count bucket
    (seconds each): chunk files appear in bursts with compilations between, a wide window in
    which to kill it after the first file and well before the last. A thread polls every 2 ms.
    """

    def __init__(self, ws, out):
        self.out, self.log_path = out, ws.root / "killed.log"
        cmd = [sys.executable, "-m", "hepattr_jax", *map(str, self_cmd(ws, out))]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, env=cli_env(ws.cold_cache), stdout=log, stderr=subprocess.STDOUT
            )
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self):
        deadline = time.monotonic() + 300
        while self.proc.poll() is None and time.monotonic() < deadline:
            if any((self.out / "chunks").glob("chunk_*.npz")):
                self.proc.send_signal(signal.SIGKILL)
                return
            time.sleep(0.002)

    def wait(self) -> int:
        self.thread.join()
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()


@pytest.fixture(scope="module")
def killed(ws):
    k = KillAfterFirstChunk(ws, ws.root / "si_killed")
    yield k
    k.wait()


@pytest.fixture(scope="module")
def ref(ws, killed):
    """Reference arrays computed directly in another process (it asks for ``killed`` only so that
    the run to be killed proceeds meanwhile, on the second core)."""
    script = ws.root / "reference.py"
    script.write_text(textwrap.dedent(REFERENCE_SCRIPT))
    out = ws.root / "reference.npz"
    run_py(
        [script, ws.run_dir, out, ws.root / "si_uninterrupted", CHUNK_SI, CHUNK_TT, K_TOP],
        ws.cache,
    )
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def test_killed_self_influence_resumes_to_the_uninterrupted_result(ws, killed, ref):
    """SIGKILL a real ``hepattr influence self`` once a chunk is on disk, rerun it, and compare
    with an uninterrupted run into another directory (bitwise), checking the rerun did not
    recompute (or rewrite) any chunk the killed run had finished."""
    rc = killed.wait()
    assert rc == -signal.SIGKILL, f"not killed part way (rc {rc}); see {killed.log_path}"
    out = killed.out
    n_total = int(ref["n_chunks"])
    before = chunk_stats(out)
    assert 1 <= len(before) < n_total and not (out / "result.json").exists()
    print(f"killed after {len(before)} of {n_total} chunks")

    r = hepattr(*self_cmd(ws, out), cache=ws.cache)
    after = chunk_stats(out)
    assert len(after) == n_total
    assert all(after[name] == st for name, st in before.items()), "a finished chunk was rewritten"
    reused = f"{len(before)} chunk(s) reused from disk, {n_total - len(before)} computed"
    assert reused in r.stderr

    resumed = read_result(out).arrays
    uninterrupted = read_result(ws.root / "si_uninterrupted").arrays
    for key in ("scores", "scores_per_checkpoint", "event_ids"):
        assert resumed[key].tobytes() == uninterrupted[key].tobytes(), key
    # The direct call runs the same kernel on the same chunks: bitwise as well.
    assert resumed["scores_per_checkpoint"].tobytes() == ref["si_per_checkpoint"].tobytes()
    np.testing.assert_array_equal(resumed["event_ids"], ref["train_ids"])

    # The printed summary: the 5 highest self-influence event ids with their labels.
    total = ref["si_per_checkpoint"].sum(0)
    top = np.argsort(-total, kind="stable")[:5]
    printed = re.findall(r"^\s+(\d+)\s+([01])\s+\S+$", r.stdout, re.M)
    assert [(int(i), int(lab)) for i, lab in printed] == [
        (int(ref["train_ids"][i]), int(ref["train_labels"][i])) for i in top
    ]
    assert str(out.resolve()) in r.stdout


def test_matrix_cli_equals_direct_influence_matrix(ws, ref):
    out = ws.root / "matrix"
    r = hepattr(
        *("influence", "matrix", ws.run_dir, "--chunk-size", CHUNK_TT, "--out", out, "--quiet"),
        cache=ws.cache,
    )
    res = read_result(out)
    m = res.arrays["influence"]
    assert m.shape == (len(ref["train_ids"]), len(ref["test_ids"]))
    # Same float32 kernels and chunking as the direct call: agreement to float32 rounding of the
    # largest entry (in practice bitwise).
    tol = dict(rtol=1e-6, atol=1e-6 * np.abs(ref["matrix"]).max())
    np.testing.assert_allclose(m, ref["matrix"], **tol)
    np.testing.assert_array_equal(res.arrays["event_ids"], ref["train_ids"])
    np.testing.assert_array_equal(res.arrays["test_event_ids"], ref["test_ids"])
    assert res.meta["kind"] == "influence_matrix" and res.meta["test_split"] == "test"
    assert str(out.resolve() / "influence.npy") in r.stdout


def test_topk_cli_equals_direct_top_k_and_the_sorted_matrix(ws, ref):
    out = ws.root / "topk"
    r = hepattr(
        *("influence", "topk", ws.run_dir, "-k", K_TOP, "--chunk-size", CHUNK_TT, "--out", out),
        "--quiet",
        cache=ws.cache,
    )
    res = read_result(out).arrays
    train_ids = ref["train_ids"]
    np.testing.assert_array_equal(res["test_event_ids"], ref["test_ids"])
    np.testing.assert_array_equal(res["proponent_ids"], train_ids[ref["pro"]])
    np.testing.assert_array_equal(res["opponent_ids"], train_ids[ref["opp"]])
    tol = dict(rtol=1e-6, atol=1e-6 * np.abs(ref["matrix"]).max())  # float32 rounding, as above
    np.testing.assert_allclose(res["proponent_scores"], ref["pro_scores"], **tol)
    np.testing.assert_allclose(res["opponent_scores"], ref["opp_scores"], **tol)
    # ... and the plain sort of the full matrix (ties broken by smaller train position).
    sorted_ref = tracin.top_k_from_matrix(ref["matrix"], K_TOP)
    np.testing.assert_array_equal(res["proponent_ids"], train_ids[sorted_ref.proponents])
    np.testing.assert_array_equal(res["opponent_ids"], train_ids[sorted_ref.opponents])
    np.testing.assert_allclose(res["proponent_scores"], sorted_ref.proponent_scores, **tol)
    np.testing.assert_allclose(res["opponent_scores"], sorted_ref.opponent_scores, **tol)
    summary = (out / "topk_summary.md").read_text()
    first = f"| {int(ref['test_ids'][0])} ("
    assert first in summary and first in r.stdout
    assert f"{int(res['proponent_ids'][0, 0])} (" in summary.splitlines()[2]
    assert str(out.resolve() / "topk.npz") in r.stdout


def test_trak_cli_equals_direct_trak_and_keeps_its_stores(ws, capsys):
    """``hepattr influence trak`` (in process, like the tests below: the direct call then reuses
    the command's compiled kernels) against ``trak`` called directly on the loaded run."""
    from hepattr_jax import trak
    from hepattr_jax.cli import main
    from hepattr_jax.per_example import layout_for
    from hepattr_jax.projection import Projector
    from hepattr_jax.runs import load_run

    out = ws.root / "trak"
    args = ("influence", "trak", ws.run_dir, "--proj-dim", "32", "--checkpoints", "all")
    args += ("--chunk-size", CHUNK_TT)
    assert main([*map(str, args), "--out", str(out), "--quiet"]) == 0
    res = read_result(out)
    assert res.meta["kind"] == "trak_scores" and res.meta["projection"]["proj_dim"] == 32
    assert str(out.resolve() / "scores.npy") in capsys.readouterr().out
    feats = read_result(out / "features" / "run0_train")
    assert feats.meta["output"] == "margin" and feats.arrays["features"].shape[2] == 32

    run = load_run(ws.run_dir)
    layout = layout_for(run.model, run.data.train)
    proj = Projector(32)
    ftr, mtr = trak.featurize(
        layout, run.checkpoints, run.data.train, proj, chunk_size=int(CHUNK_TT), progress=False
    )
    fte, _ = trak.featurize(
        layout, run.checkpoints, run.data.test, proj, chunk_size=int(CHUNK_TT), progress=False
    )
    np.testing.assert_allclose(feats.arrays["features"], ftr, rtol=1e-6, atol=1e-7)
    want = trak.trak_scores(ftr, mtr, fte)
    tol = dict(rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(res.arrays["scores"], want, **tol)
    np.testing.assert_allclose(
        res.arrays["self_influence"], trak.trak_self_influence(ftr, mtr), rtol=1e-4
    )
    # Other settings into the same directory are refused, naming the differing key.
    bad = main([*map(str, args), "--damping", "0.5", "--out", str(out), "--quiet"])
    assert bad == 2 and "damping" in capsys.readouterr().err


def test_layer_stats_cli_equals_the_direct_call(ws, capsys):
    """``hepattr influence layer-stats`` (in process: the command's parsing, store and report)
    against ``kfac.layer_statistics`` on the loaded run, bitwise (same kernels and chunks)."""
    from hepattr_jax import kfac
    from hepattr_jax.cli import main
    from hepattr_jax.per_example import layout_for
    from hepattr_jax.runs import load_run

    out = ws.root / "layer_stats"
    argv = ["influence", "layer-stats", str(ws.run_dir), "--chunk-size", "32", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert str(out.resolve()) in printed and "params/" in printed
    got = kfac.LayerStatistics.from_arrays(read_result(out).arrays)
    run = load_run(ws.run_dir)
    gs = run.data.train
    want = kfac.layer_statistics(
        layout_for(run.model, gs), run.checkpoints, gs, chunk_size=32, progress=False
    )
    assert got.kernels == want.kernels and got.n_events == len(gs) == want.n_events
    for field in (*kfac.MOMENTS, "rest_diag"):
        for a, b in zip(getattr(got, field), getattr(want, field), strict=True):
            assert a.tobytes() == b.tobytes(), field
    assert read_result(out).meta["fisher"] == "true"


def test_adam_cosine_and_ekfac_methods_from_the_cli_equal_direct_calls(ws, capsys):
    """``hepattr influence self|matrix --method adam|cosine|ekfac`` (in process) against the
    library called directly on the loaded run, bitwise; each result is read back from its store
    on a second call, a store of one method refuses another's meta, and the EK-FAC factors are
    fitted once per run (``ekfac-fit``) and shared by every EK-FAC store."""
    from hepattr_jax import ekfac
    from hepattr_jax.adam import adam_gradient_map
    from hepattr_jax.cli import main
    from hepattr_jax.cosine import cosine_gradient_map
    from hepattr_jax.errors import StoreError
    from hepattr_jax.per_example import layout_for
    from hepattr_jax.runs import load_run
    from hepattr_jax.scoring import scored_self_influence

    run = load_run(ws.run_dir)
    train, test = run.data.train, run.data.test
    layout = layout_for(run.model, train)
    ck = run.checkpoints
    chunk = ["--chunk-size", str(CHUNK_TT), "--quiet"]

    assert main(["influence", "ekfac-fit", str(ws.run_dir), *chunk]) == 0
    factor_dir = ws.run_dir / "influence" / "ekfac_factors"
    fac = ekfac.EKFACFactors.from_arrays(read_result(factor_dir).arrays)
    last = ekfac.ekfac_checkpoints(ck.select([len(ck) - 1]))
    direct = ekfac.fit(layout, ck.select([len(ck) - 1]), train, chunk_size=CHUNK_TT, progress=False)
    for a, b in zip(fac.eigenvalues + fac.q_a, direct.eigenvalues + direct.q_a, strict=True):
        assert a.tobytes() == b.tobytes()

    maps = {
        "adam": (ck, adam_gradient_map(ck)),
        "cosine": (ck, cosine_gradient_map()),
        "ekfac": (last, ekfac.ekfac_gradient_map(fac, damping=0.1)),
    }
    for method, (ckpts, gm) in maps.items():
        out = ws.root / f"si_{method}"
        argv = ["influence", "self", str(ws.run_dir), "--method", method, "--out", str(out)]
        assert main([*argv, *chunk]) == 0
        got = read_result(out)
        assert got.meta["method"] == method
        want = tracin.self_influence(
            layout,
            ckpts,
            train,
            chunk_size=CHUNK_TT,
            per_checkpoint=True,
            progress=False,
            gradient_map=gm,
        )
        assert got.arrays["scores_per_checkpoint"].tobytes() == want.tobytes(), method
        assert main([*argv, *chunk]) == 0  # read back from the finished store
        capsys.readouterr()
    # a store of Adam-aware TracIn is not plain TracIn's
    with pytest.raises(StoreError):
        scored_self_influence(run, ws.root / "si_adam", chunk_size=CHUNK_TT, progress=False)

    out = ws.root / "matrix_ekfac"
    argv = ["influence", "matrix", str(ws.run_dir), "--method", "ekfac", "--out", str(out)]
    assert main([*argv, *chunk]) == 0
    m = tracin.influence_matrix(
        layout,
        last,
        train,
        test,
        chunk_size=CHUNK_TT,
        progress=False,
        gradient_map=maps["ekfac"][1],
    )
    assert read_result(out).arrays["influence"].tobytes() == m.tobytes()
    from hepattr_jax.checkpoints import tree_hash

    assert read_result(out).meta["factors_sha"] == tree_hash(fac.to_arrays())
