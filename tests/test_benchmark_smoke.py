"""Smoke test of the benchmarks: their quick presets run and write complete results.

Correctness only (keys, positive finite figures, the engine against the reference loop, no
recompilation in steady calls, the hand FLOP count against XLA's); no timing assertions.
"""

import json
import math

import pytest

from benchmarks.tracin_throughput import GRAPH_MODEL_NAMES, MODEL_NAMES, PRESETS, WORKLOADS, main

TOP_LEVEL_KEYS = {
    "benchmark",
    "preset",
    "command",
    "date_utc",
    "environment",
    "matmul",
    "workloads",
    "influence_matrix",
    "compilation_cache",
    "peak_rss_gb",
    "loadavg_before",
    "loadavg_after",
    "wall_s",
}
# XLA's count over the hand count (useful matmul FLOPs at the bucket's padded shape): XLA adds
# elementwise work (aggregation, ReLU, masks, the loss) and runs the factorised first edge layer
# at 1.5x its minimal cost, so it lies a little above (1.05-1.4 seen on the quick shapes), never
# below.
XLA_OVER_HAND = (0.95, 2.0)


def _positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    res = main(["--preset", "quick", "--out", str(out)])
    return out, res


@pytest.mark.slow  # end-to-end or subprocess: make test runs it, make test-fast not
def test_quick_preset_writes_results(quick):
    out, res = quick
    (json_path,) = out.glob("tracin_throughput_quick_*.json")
    assert json_path.with_suffix(".md").read_text().startswith("# TracIn throughput")
    assert res["files"]["json"] == str(json_path)
    on_disk = json.loads(json_path.read_text())
    assert TOP_LEVEL_KEYS <= set(on_disk)
    assert _positive(on_disk["matmul"]["gflops_per_s"])
    assert set(on_disk["workloads"]) == {"quick-edgeconv", "quick-jets"}
    for name, wres in on_disk["workloads"].items():
        assert set(wres["models"]) == set(WORKLOADS[name].models)
        for m in wres["models"].values():
            _check_model(m)
    assert on_disk["workloads"]["quick-edgeconv"]["models"]["edgeconv"]["n_params"] == 46_081


def _check_model(m: dict) -> None:
    assert m["layout"] == "NeighbourLayout"
    assert 1 <= m["n_compiled_shapes"] <= 8
    assert 0.0 <= m["padding_waste"] < 1.0
    for r in m["self_influence"]:
        for key in ("first_call_s", "median_s", "events_per_s", "useful_gflops_per_s"):
            assert _positive(r[key]), (key, r[key])
        assert _positive(r["fraction_of_matmul"])
        assert 0.0 <= r["compile_share_of_first_pass"] <= 1.0
        assert r["steady_calls_compile_s"] == 0.0  # steady calls reuse their compilation
    tr, ref = m["training_grad"], m["reference_loop"]
    for t in (tr, ref):
        assert _positive(t["median_s"]) and _positive(t["events_per_s"])
        assert t["steady_calls_compile_s"] == 0.0
    assert ref["first_call_compile_s"] == 0.0  # every shape was compiled in the warm-up
    assert _positive(m["overhead_ratio"]) and _positive(m["speedup_vs_reference"])
    # float32 engine vs the float64-accumulated loop over independent single-event gradients.
    assert m["max_rel_diff_vs_reference"] < 1e-4
    assert len(m["xla_crosscheck"]) == m["n_compiled_shapes"]
    for b in m["xla_crosscheck"]:
        lo, hi = XLA_OVER_HAND
        assert lo < b["ratio_xla_over_hand"] < hi, (m["model"], b)


@pytest.mark.slow  # shares the quick preset's end-to-end run with the test above
def test_quick_preset_matrix_and_cache(quick):
    _, res = quick
    m = res["influence_matrix"]["quick-edgeconv"]
    assert m["all_finite"]
    assert m["steady_compile_s"] == 0.0  # the second call reuses the first call's kernels
    for key in ("first_call_s", "steady_s", "pairs_per_s", "fraction_of_matmul", "peak_rss_gb"):
        assert _positive(m[key]), (key, m[key])
    c = res["compilation_cache"]
    assert c["cache_entries"] > 0
    for run in (c["cold"], c["warm"]):
        assert _positive(run["first_call_s"])


@pytest.mark.slow  # end-to-end or subprocess: make test runs it, make test-fast not
def test_projection_benchmark_quick_preset_writes_results(tmp_path):
    from benchmarks.projection_throughput import main as projection_main

    res = projection_main(["--preset", "quick", "--out", str(tmp_path)])
    (json_path,) = tmp_path.glob("projection_throughput_quick_*.json")
    on_disk = json.loads(json_path.read_text())
    assert json_path.with_suffix(".md").read_text().startswith("# Projected-gradient throughput")
    assert res["files"]["json"] == str(json_path)
    methods = on_disk["methods"]
    assert {"exact_self_influence", "tracin_features_d16", "trak_features_d16_chunk32"} <= set(
        methods
    )
    for r in methods.values():
        assert _positive(r["events_per_s"]) and _positive(r["gflops_per_s"])
        assert r["steady_calls_compile_s"] == 0.0  # steady calls reuse the compilation
    assert on_disk["device_scaling"][0]["devices"] == 1
    assert _positive(on_disk["projected_matrix"]["pairs_per_s"])


@pytest.mark.slow  # end-to-end: make test runs it, make test-fast not
def test_layer_capture_benchmark_quick_preset_writes_results(tmp_path):
    from benchmarks.layer_capture import main as capture_main

    res = capture_main(["--preset", "quick", "--out", str(tmp_path)])
    (json_path,) = tmp_path.glob("layer_capture_quick_*.json")
    on_disk = json.loads(json_path.read_text())
    assert json_path.with_suffix(".md").read_text().startswith("# Per-layer capture")
    assert res["files"]["json"] == str(json_path)
    (w,) = on_disk["workloads"]
    assert set(w["methods"]) == {
        "exact_self_influence",
        "capture_self_influence",
        "trak_dense_d16",
        "trak_kronecker_d16",
    }
    for r in w["methods"].values():
        assert _positive(r["events_per_s"]) and r["steady_calls_compile_s"] == 0.0
    for proj in ("dense", "kronecker"):
        q = w["quality"][proj]
        assert 0 <= q["top3_proponent_overlap"] <= 1 and q["self_influence_rel_err_median"] >= 0
    assert sum(b["dim"] for b in w["kronecker_blocks"]) == 16
    assert len(w["ghost_layers"]) == 2
    for g in w["ghost_layers"]:
        assert _positive(g["ghost_s"]) and _positive(g["product_s"])


def test_every_builtin_model_runs_on_ref_jets():
    """ref-jets runs all six built-in models, ref-edgeconv the three general GNNs."""
    assert set(PRESETS["ref"].workloads) == {"ref-edgeconv", "ref-jets"}
    assert set(WORKLOADS["ref-jets"].models) == set(MODEL_NAMES)
    assert set(WORKLOADS["ref-edgeconv"].models) == set(GRAPH_MODEL_NAMES)


@pytest.mark.parametrize("edges", ["knn:4", "fully_connected"])
def test_every_models_hand_count_against_xla(edges):
    """Every built-in model's hand count of one event's gradient (the quick-jets shape, on kNN
    and complete graphs) against XLA's cost analysis of the lowered gradient (shapes only:
    nothing is initialised or compiled). The quick preset runs fewer models end to end."""
    import dataclasses

    import jax

    from benchmarks.tracin_throughput import _cost, grad_flops, make_graphs
    from hepattr_jax.models import make_model
    from hepattr_jax.per_example import layout_for

    spec = dataclasses.replace(WORKLOADS["quick-jets"], n_train=2, n_test=1, edges=edges)
    train, _ = make_graphs(spec)
    for name in MODEL_NAMES:
        model = make_model(name)
        chunk = next(iter(layout_for(model).chunks(train, 1)))
        graph = jax.tree_util.tree_map(lambda x: x[0], chunk.data.graph)
        params = jax.eval_shape(model.init, jax.random.key(0), graph)
        grad = jax.jit(jax.grad(lambda p, g: model.apply(p, g).sum()))  # noqa: B023
        xla = _cost(grad.lower(params, graph))["flops"]
        n, _ = graph.edge_mask.shape
        hand = float(grad_flops(model, n, int(train.n_edge[0]), spec.n_features))
        lo, hi = XLA_OVER_HAND
        assert lo < xla / hand < hi, (name, edges, xla / hand)


@pytest.mark.slow  # end-to-end: make test runs it, make test-fast not
def test_layer_statistics_benchmark_quick_preset_writes_results(tmp_path):
    from benchmarks.layer_statistics import main as stats_main

    res = stats_main(["--preset", "quick", "--out", str(tmp_path)])
    (json_path,) = tmp_path.glob("layer_statistics_quick_*.json")
    on_disk = json.loads(json_path.read_text())
    assert json_path.with_suffix(".md").read_text().startswith("# Layer statistics")
    assert res["files"]["json"] == str(json_path)
    (w,) = on_disk["workloads"]
    assert set(w["methods"]) == {
        "exact_self_influence",
        "capture_self_influence",
        "layer_statistics",
    }
    for r in w["methods"].values():
        assert _positive(r["events_per_s"]) and r["steady_calls_compile_s"] == 0.0
    assert [x["rows_per_event"] for x in w["layers"]][-2:] == [1.0, 1.0]  # the readout


@pytest.mark.slow  # make test runs it, make test-fast not
def test_attribution_methods_benchmark_quick_preset_writes_results(tmp_path):
    from benchmarks.attribution_methods import main as methods_main

    res = methods_main(["--preset", "quick", "--out", str(tmp_path)])
    (json_path,) = tmp_path.glob("attribution_methods_quick_*.json")
    on_disk = json.loads(json_path.read_text())
    assert json_path.with_suffix(".md").read_text().startswith("# Attribution methods")
    assert res["files"]["json"] == str(json_path)
    (w,) = on_disk["workloads"]
    assert set(w["methods"]) == {
        "exact_self_influence",
        "adam_self_influence",
        "cosine_map",
        "ekfac_self_influence",
        "ekfac_fit",
    }
    for r in w["methods"].values():  # steady calls compile nothing
        assert _positive(r["events_per_s"]) and r["steady_calls_compile_s"] == 0.0


def test_kernel_profile_splits_a_known_kernel():
    """The op profile of ``sum(relu(x @ w) ** 2)``'s gradient: its two matmuls are found in
    the optimised HLO (fused or not) with their FLOPs from the shapes, every thunk the trace
    records maps to an instruction, and the shares add up."""
    import jax
    import jax.numpy as jnp

    from benchmarks.kernel_profile import categorise, parse_hlo, profile

    def f(x, w):
        return jnp.sum(jax.nn.relu(x @ w) ** 2)

    fn = jax.jit(jax.grad(f, argnums=1))
    x, w = jnp.ones((256, 32)), jnp.ones((32, 16))
    ops = parse_hlo(fn.lower(x, w).compile().as_text())
    thunks = [op for op in ops.values() if not op.in_fusion]
    flops = sorted(op.flops for op in thunks if op.category == "matmul")
    assert flops == [2.0 * 256 * 32 * 16] * 2  # forward x @ w, and x^T @ delta
    r = profile(
        fn, lambda: (x, w), useful_flops=2 * 2.0 * 256 * 32 * 16, matmul_rate=1.0, repeats=2
    )
    assert r["ops"] and all(o["category"] != "unknown" for o in r["ops"])
    assert r["xla_matmul_flops"] == pytest.approx(2 * 2.0 * 256 * 32 * 16)
    assert sum(c["share"] for c in r["categories"].values()) == pytest.approx(1.0)
    assert r["bound_matmul_at_peak"] == pytest.approx(1.0)
    assert categorise("fusion", frozenset({"fusion", "parameter", "concatenate"})) == "copy/layout"
    assert categorise("fusion", frozenset({"fusion", "dot", "add"})) == "matmul"
    assert categorise("while", frozenset({"while"})) == "control"


@pytest.mark.slow  # end-to-end: make test runs it, make test-fast not
def test_kernel_profile_quick_preset_writes_results(tmp_path):
    from benchmarks.kernel_profile import main as profile_main

    res = profile_main(["--preset", "quick", "--out", str(tmp_path)])
    (json_path,) = tmp_path.glob("kernel_profile_quick_*.json")
    assert json_path.with_suffix(".md").read_text().startswith("# Kernel profile")
    on_disk = json.loads(json_path.read_text())
    assert res["files"]["json"] == str(json_path)
    kinds = [k["kernel"] for k in on_disk["kernels"]]
    assert kinds == ["self_influence", "train_x_test"]
    for k in on_disk["kernels"]:
        assert _positive(k["wall_s"]) and _positive(k["fraction_of_matmul"])
        assert "matmul" in k["categories"] and _positive(k["matmul_ops_gflops_per_s"])
