"""Wall-clock seconds of the explain report's sections 7-9 (LRP and method comparison,
correlation-aware importance, constituent-level coverage) at a fixed event count: the run's
test jets tiled to ``--n-events``, as the report's ``--timing-events`` does for sections 1-2.

    python -m experiments.explain.time_later_sections runs/explain_qg --n-events 10000

Prints one JSON object. The plain permutation importance that section 8 sits beside is part of
section 1 and timed there; it is computed here first (and reported) because section 8 reads it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--n-events", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from hepattr_jax.explain.activations import pca
    from hepattr_jax.explain.coverage import information_coverage
    from hepattr_jax.explain.features import feature_means, make_groups
    from hepattr_jax.explain.importance import permutation_importance
    from hepattr_jax.explain.predict import LATENT, BatchedPredictor
    from hepattr_jax.explain.report import best_checkpoint, physics_quantities
    from hepattr_jax.explain.sections import run_sections
    from hepattr_jax.runs import load_run

    run = load_run(args.run_dir)
    k, _ = best_checkpoint(run)
    params = run.checkpoints.at(k)
    test = run.data.test
    gs = test.select(np.resize(np.arange(len(test)), args.n_events))
    use_globals = bool(run.config.use_globals) and test.events.n_globals > 0
    groups = make_groups(gs.events, include_globals=use_globals)
    t0 = time.perf_counter()
    pr = BatchedPredictor(run.model, params, gs)
    pr()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    perm = permutation_importance(pr, gs.events, groups, repeats=args.repeats, seed=args.seed)
    perm_s = time.perf_counter() - t0
    phys = physics_quantities(gs.events)
    sub = np.sort(np.random.default_rng(0).permutation(len(gs))[:2000])
    lat = pca(pr.activations()[LATENT][sub], 3)["scores"]
    jet_cov = {q: information_coverage(lat, v[sub])["coverage"] for q, v in phys.items()}
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res, _ = run_sections(
            run.model,
            params,
            gs,
            pr,
            groups,
            feature_means(run.data.train.events),
            perm,
            phys,
            jet_cov,
            out,
            normalizer=run.data.normalizer,
            repeats=args.repeats,
            seed=args.seed,
        )
        total = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "n_events": args.n_events,
                "compile_and_first_call": compile_s,
                "plain_permutation_section1": perm_s,
                "sections_7_9": res["seconds"],
                "sections_7_9_total": total,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
