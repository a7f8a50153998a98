"""Smoke test of benchmarks/tracin_throughput.py: the quick preset runs and writes its results.

Correctness only (keys, positive finite figures, agreement with the reference loop, no
recompilation in steady calls); no timing assertions. The memory-scaling subprocess is skipped
to keep the test fast (``--preset quick`` without the flag runs it).
"""

import json
import math

from benchmarks.tracin_throughput import main

TOP_LEVEL_KEYS = {
    "benchmark",
    "preset",
    "command",
    "date_utc",
    "environment",
    "workload",
    "self_influence",
    "overhead_ratio",
    "flops",
    "influence_matrix",
    "memory_scaling",
    "peak_rss_gb_after",
    "peak_rss_gb",
    "loadavg_before",
    "loadavg_after",
    "wall_s",
}


def _positive(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_quick_preset_writes_results(tmp_path):
    res = main(["--preset", "quick", "--out", str(tmp_path), "--skip-memory-scaling"])

    (json_path,) = tmp_path.glob("tracin_throughput_quick_*.json")
    assert json_path.with_suffix(".md").read_text().startswith("# TracIn throughput")
    on_disk = json.loads(json_path.read_text())
    assert TOP_LEVEL_KEYS <= set(on_disk)
    assert on_disk["workload"]["n_params"] == 46_081
    assert on_disk["memory_scaling"] == {"skipped": True}
    assert res["files"]["json"] == str(json_path)

    si = on_disk["self_influence"]
    timed = [si["reference_loop"], *si["dense"], *si["generic"]]
    for r in timed:
        for key in ("first_call_s", "median_s", "min_s", "max_s", "events_per_s"):
            assert _positive(r[key]), (key, r[key])
        assert r["steady_calls_compile_s"] == 0.0  # the timed calls reuse their compilation
    for r in si["dense"] + si["generic"]:
        # float32 gradients vs the float64-accumulated loop: 1e-4 relative is generous.
        assert r["max_rel_diff_vs_reference"] < 1e-4
        assert _positive(r["speedup_vs_reference"])
        assert _positive(r["executed_flops_per_pass"])

    o = on_disk["overhead_ratio"]
    assert _positive(o["ratio_vs_batch_grad_dense"])
    assert _positive(o["ratio_vs_training_grad_graphstuple"])

    f = on_disk["flops"]
    assert _positive(f["matmul"]["gflops_per_s"])
    for row in f["per_node_count"]:
        # XLA counts elementwise work the hand count leaves out: a little above 1, never far.
        assert 0.9 < row["ratio_xla_over_hand_self_influence"] < 1.5
        assert 0.9 < row["ratio_xla_over_hand_batch_grad"] < 1.5
    for rate in f["achieved_gflops_per_s"].values():
        assert _positive(rate)

    m = on_disk["influence_matrix"]
    assert m["all_finite"]
    for key in ("seconds_total", "pairs_per_s_total", "pairs_per_s_excluding_compile"):
        assert _positive(m[key])
    assert _positive(on_disk["peak_rss_gb"])


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
